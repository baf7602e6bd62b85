"""Quantizers against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titok_jax.models.quantizers import DiagonalGaussian, VectorQuantizer


def _vq(codebook, use_l2_norm):
    module = VectorQuantizer(codebook_size=codebook.shape[0], token_size=codebook.shape[1], use_l2_norm=use_l2_norm)
    return module, {"params": {"codebook": jnp.asarray(codebook, jnp.float32)}}


def test_vq_indices_losses_and_straight_through_gradients():
    module, params = _vq(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), use_l2_norm=False)
    latents = jnp.array([[[0.9, 0.1], [0.2, 1.5]]])

    quantized, info = module.apply(params, latents)
    np.testing.assert_array_equal(info["indices"], [[1, 2]])
    np.testing.assert_allclose(quantized, [[[1.0, 0.0], [0.0, 2.0]]], atol=1e-7)
    # squared errors 0.01, 0.01, 0.04, 0.25 -> mean 0.0775
    np.testing.assert_allclose(info["codebook_loss"], 0.0775, rtol=1e-6)
    np.testing.assert_allclose(info["commitment_loss"], 0.25 * 0.0775, rtol=1e-6)
    np.testing.assert_allclose(info["quantizer_loss"], 1.25 * 0.0775, rtol=1e-6)

    # Straight-through: d sum(w * quantized) / d latents = w.
    weights = jnp.array([[[3.0, -1.0], [0.5, 2.0]]])
    grad_latents = jax.grad(lambda z: jnp.sum(weights * module.apply(params, z)[0]))(latents)
    np.testing.assert_allclose(grad_latents, weights, rtol=1e-6)

    # Commitment loss pulls the latents: 0.25 * 2 (z - q) / 4.
    grad_commit = jax.grad(lambda z: module.apply(params, z)[1]["commitment_loss"])(latents)
    np.testing.assert_allclose(grad_commit, [[[-0.0125, 0.0125], [0.025, -0.0625]]], rtol=1e-5)
    # Codebook loss moves only the used codes: 2 (q - z) / 4.
    grad_codebook = jax.grad(lambda p: module.apply(p, latents)[1]["codebook_loss"])(params)["params"]["codebook"]
    np.testing.assert_allclose(grad_codebook, [[0.0, 0.0], [0.05, -0.05], [-0.1, 0.25]], rtol=1e-5, atol=1e-8)


def test_vq_l2_norm_changes_the_choice_and_normalises_outputs():
    codebook = np.array([[3.0, 4.0], [0.0, -2.0], [1.0, 0.0]])
    latents = jnp.array([[[0.5, 0.5], [0.0, -5.0]]])

    _, plain_info = _vq(codebook, use_l2_norm=False)[0].apply(_vq(codebook, False)[1], latents)
    np.testing.assert_array_equal(plain_info["indices"], [[2, 1]])  # Euclidean: [0.5, 0.5] is nearest [1, 0]

    module, params = _vq(codebook, use_l2_norm=True)
    quantized, info = module.apply(params, latents)
    np.testing.assert_array_equal(info["indices"], [[0, 1]])  # cosine: [0.5, 0.5] is nearest [3, 4]
    np.testing.assert_allclose(quantized, [[[0.6, 0.8], [0.0, -1.0]]], atol=1e-6)
    # Losses use the normalised latents: ((0.6 - 1/sqrt2)^2 + (0.8 - 1/sqrt2)^2) / 4
    np.testing.assert_allclose(info["codebook_loss"], 0.00502525, rtol=1e-5)
    np.testing.assert_allclose(info["commitment_loss"], 0.25 * 0.00502525, rtol=1e-5)
    np.testing.assert_allclose(
        module.apply(params, jnp.array([[0, 2]]), method=module.codebook_entries), [[[0.6, 0.8], [1.0, 0.0]]], atol=1e-6
    )


def test_vq_runs_in_float32_for_bf16_inputs():
    module, params = _vq(np.eye(4), use_l2_norm=True)
    quantized, info = module.apply(params, jnp.ones((2, 3, 4), jnp.bfloat16))
    assert quantized.dtype == jnp.float32 and info["quantizer_loss"].dtype == jnp.float32


def test_vq_rejects_wrong_token_size():
    module, params = _vq(np.eye(4), use_l2_norm=False)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        module.apply(params, jnp.ones((1, 2, 3)))


def test_diagonal_gaussian_mean_clamp_and_kl():
    module = DiagonalGaussian(token_size=2)
    moments = jnp.array([[[1.0, -2.0, 0.0, -50.0]]])  # mean [1, -2], logvar [0, -50 -> -30]
    latents, info = module.apply({}, moments, sample=False)
    np.testing.assert_array_equal(latents, [[[1.0, -2.0]]])
    np.testing.assert_array_equal(info["logvar"], [[[0.0, -30.0]]])
    # 0.5 * ((1 + 1 - 1 - 0) + (4 + e^-30 - 1 + 30)) = 17
    np.testing.assert_allclose(info["kl"], [17.0], rtol=1e-6)
    high = module.apply({}, jnp.array([[[0.0, 0.0, 100.0, 0.0]]]), sample=False)[1]["logvar"]
    np.testing.assert_array_equal(high, [[[20.0, 0.0]]])


def test_diagonal_gaussian_samples_with_the_posterior_std():
    module = DiagonalGaussian(token_size=1)
    moments = jnp.concatenate([jnp.full((20000, 1, 1), 3.0), jnp.full((20000, 1, 1), np.log(4.0))], axis=-1)
    samples, _ = module.apply({}, moments, sample=True, rngs={"noise": jax.random.PRNGKey(0)})
    assert abs(float(samples.mean()) - 3.0) < 0.05
    assert abs(float(samples.std()) - 2.0) < 0.05


def test_clustering_revival_replaces_exactly_the_dead_codes():
    """Official clustering VQ on a hand-worked example: codes 1 and 3 unused, 0 and 2 used."""
    from titok_jax.models.quantizers import clustering_update

    codebook = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    usage = jnp.array([0.5, 0.0, 0.25, 0.0])
    frequencies = jnp.array([0.5, 0.0, 0.5, 0.0])
    nearest = jnp.array([[2.0, 2.0], [3.0, -1.0], [5.0, 5.0], [-4.0, 0.5]])
    new_codebook, new_usage = clustering_update(codebook, usage, frequencies, nearest, decay=0.99)
    # usage <- 0.99 u + 0.01 f = [0.5, 0, 0.2525, 0]
    np.testing.assert_allclose(new_usage, [0.5, 0.0, 0.2525, 0.0], rtol=1e-6)
    # mix = exp(-usage * 4 * 10 / 0.01 - 1e-3): used codes exp(-2000) and exp(-1010) = 0 (unchanged);
    # dead codes exp(-1e-3) = 0.9990005: c * 0.0009995 + latent * 0.9990005.
    m = 0.999000499833375
    np.testing.assert_allclose(new_codebook[0], [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(new_codebook[2], [-1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(new_codebook[1], [3.0 * m, (1 - m) - m], rtol=1e-5)
    np.testing.assert_allclose(new_codebook[3], [-4.0 * m, -(1 - m) + 0.5 * m], rtol=1e-5)
    # ... i.e. the dead codes land on their nearest latent to within 1e-3 relative, the used ones stay put.
    new_codebook, nearest, codebook = np.asarray(new_codebook), np.asarray(nearest), np.asarray(codebook)
    np.testing.assert_allclose(new_codebook[[1, 3]], nearest[[1, 3]], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(new_codebook[[0, 2]], codebook[[0, 2]], rtol=1e-6, atol=1e-6)


def test_clustering_statistics_under_grad_accumulation_are_micro_batch_averages():
    """The train step (titok_jax/train/step.py) averages every metric over micro-batches, then the tokenizer
    recipe's before_apply runs one clustering_update per optimizer step. So code frequencies are exactly the
    whole batch's, but a code's 'nearest latent' is the mean of each micro-batch's nearest latent: not a latent
    of the batch. (The official torch code instead updates in every micro-batch's forward, decaying the usage
    once per micro-batch.) This pins the current behaviour."""
    from titok_jax.models.quantizers import clustering_update
    from titok_jax.train.accumulate import accumulate

    codebook = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    module = VectorQuantizer(codebook_size=4, token_size=2, clustering_vq=True)
    params = {"params": {"codebook": codebook}}
    # Micro-batch A uses code 0 twice, micro-batch B code 2 twice; codes 1 and 3 are dead.
    batch = jnp.array([[[2.0, 0.1]], [[1.5, -0.2]], [[-3.0, 0.2]], [[-2.0, -0.5]]])

    def grad_fn(microbatch, key):
        def loss(p):
            _, info = module.apply(p, microbatch)
            return info["quantizer_loss"], info

        grads, info = jax.grad(loss, has_aux=True)(params)
        return grads, {k: info[k] for k in ("code_frequencies", "nearest_latents")}, info["indices"]

    _, stats, indices = accumulate(grad_fn, batch, jax.random.PRNGKey(0), num_microbatches=2)
    np.testing.assert_array_equal(indices.reshape(-1), [0, 0, 2, 2])
    _, whole = grad_fn(batch, None)[:2]
    np.testing.assert_allclose(stats["code_frequencies"], whole["code_frequencies"], rtol=1e-6)
    np.testing.assert_allclose(stats["code_frequencies"], [0.5, 0.0, 0.5, 0.0], rtol=1e-6)
    # Squared distances, micro-batch A to code 1 (0, 1): [2, 0.1] 4 + 0.81 = 4.81, [1.5, -0.2] 2.25 + 1.44 = 3.69;
    # B: [-3, 0.2] 9 + 0.64 = 9.64, [-2, -0.5] 4 + 2.25 = 6.25. Nearest: [1.5, -0.2] in A, [-2, -0.5] in B,
    # averaged [-0.25, -0.35]; over the whole batch it would be [1.5, -0.2]. (Codes 0, 2, 3 pick the same two.)
    np.testing.assert_allclose(stats["nearest_latents"], [[-0.25, -0.35]] * 4, rtol=1e-6)
    np.testing.assert_allclose(whole["nearest_latents"][1], [1.5, -0.2], rtol=1e-6)
    new_codebook, _ = clustering_update(codebook, jnp.zeros(4), stats["code_frequencies"], stats["nearest_latents"])
    np.testing.assert_allclose(new_codebook[1], [-0.25, -0.35], rtol=2e-3, atol=2e-3)  # revived off the batch
    # Used code 0: usage 0.01 * 0.5 -> mix exp(-0.005 * 40 / 0.01) = exp(-20) ~ 2e-9: unchanged.
    np.testing.assert_allclose(new_codebook[0], codebook[0], rtol=1e-6, atol=1e-6)
