"""FSQ, LFQ and BSQ against values worked out by hand and float64 numpy references written from the spec
(next-wave.md sections 2-3), independently of the code under test (codes enumerated with itertools)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import tiny_config

from titok_jax import losses
from titok_jax.models.scalar_quantizers import (
    BSQ,
    FSQ,
    FSQ_PRESETS,
    LFQ,
    bsq_entropy_terms,
    fsq_bound,
    fsq_codes_to_indices,
    fsq_indices_to_codes,
    lfq_entropy_terms,
)
from titok_jax.models.titok import TiTok, titok_from_config


# ---- FSQ ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", sorted(FSQ_PRESETS))
def test_fsq_ids_to_codes_to_ids_is_the_identity_over_the_whole_codebook(bits):
    levels = FSQ_PRESETS[bits]
    fsq = FSQ(levels)
    assert fsq.codebook_size == int(np.prod(levels)) and 0.9 < fsq.codebook_size / 2**bits < 1.1
    ids = jnp.arange(fsq.codebook_size)
    codes = np.asarray(fsq.codebook_entries(ids))
    assert codes.shape == (fsq.codebook_size, len(levels)) and codes.min() >= -1 and codes.max() <= 1
    assert len(np.unique(codes, axis=0)) == fsq.codebook_size  # every id names its own code
    np.testing.assert_array_equal(fsq.codes_to_indices(codes), ids)
    # ... and the quantizer maps the latent that bounds onto each code exactly (inverting the bound by hand:
    # z = atanh((v + offset) / half_l) - shift for the integer v = code * half_width) to that code's id.
    lv = np.array(levels, np.float64)
    half_l, offset = (lv - 1) * 1.001 / 2, np.where(lv % 2 == 0, 0.5, 0.0)
    latents = np.arctanh((codes * (lv // 2) + offset) / half_l) - np.arctanh(offset / half_l)
    quantized, info = fsq.apply({}, jnp.asarray(latents, jnp.float32))
    np.testing.assert_array_equal(info["indices"], ids)
    np.testing.assert_allclose(quantized, codes, atol=1e-6)


def test_fsq_ids_are_mixed_radix_with_channel_0_least_significant():
    fsq = FSQ((8, 6, 5))
    # id = d0 + 8 * d1 + 48 * d2; codes (d - hw) / hw with hw = 4, 3, 2: id 1 + 8 * 2 + 48 * 4 = 209
    np.testing.assert_allclose(fsq.codebook_entries(jnp.array(209)), [(1 - 4) / 4, (2 - 3) / 3, (4 - 2) / 2])
    np.testing.assert_array_equal(fsq.codebook_entries(jnp.array(0)), [-1.0, -1.0, -1.0])


def test_fsq_bound_equals_hand_values_for_odd_and_even_levels():
    # L = 5: half_l = 4 * 1.001 / 2 = 2.002, no offset: 2.002 * tanh(z).
    np.testing.assert_allclose(
        fsq_bound(jnp.array([[0.5], [-1.0], [2.0]]), (5,))[:, 0], [0.9251585488, -1.5247115002, 1.9299832153], rtol=1e-6
    )
    # L = 8: half_l = 7 * 1.001 / 2 = 3.5035, offset 0.5, shift = atanh(0.5 / 3.5035) = 0.14369535;
    # bound(0) = 0.5 - 0.5 = 0, bound(0.5) = tanh(0.64369535) * 3.5035 - 0.5.
    np.testing.assert_allclose(
        fsq_bound(jnp.array([[0.0], [0.5], [-1.0]]), (8,))[:, 0], [0.0, 1.4879224148, -2.9326511316], atol=1e-6
    )


def test_fsq_runs_in_float32_rejects_wrong_shapes_and_needs_no_init():
    fsq = FSQ((8, 5, 5))
    codes, info = fsq.apply({}, jnp.ones((2, 4, 3), jnp.bfloat16))
    assert codes.dtype == jnp.float32 and info["indices"].dtype == jnp.int32 and info["indices"].shape == (2, 4)
    assert all(info[k].dtype == jnp.float32 and info[k].shape == () for k in ("quantizer_loss", "commitment_loss"))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\).*\(2, 4\)"):
        fsq.apply({}, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="at least 2 levels"):
        FSQ((8, 1)).apply({}, jnp.ones((1, 2)))
    # Module-level functions and the unbound module's methods agree (no init needed for id <-> code).
    ids = jnp.array([[0, 7], [199, 42]])
    np.testing.assert_array_equal(fsq.codebook_entries(ids), fsq_indices_to_codes(ids, (8, 5, 5)))
    np.testing.assert_array_equal(fsq_codes_to_indices(fsq.codebook_entries(ids), (8, 5, 5)), ids)


def test_fsq_levels_and_the_even_grid():
    fsq = FSQ((8, 5))
    codes, _ = fsq.apply({}, jnp.array([[50.0, 50.0], [-50.0, -50.0], [0.0, 0.0]]))
    # L = 8 rounds into {-4..3} / 4 (asymmetric), L = 5 into {-2..2} / 2.
    np.testing.assert_allclose(codes, [[0.75, 1.0], [-1.0, -1.0], [0.0, 0.0]])


def test_fsq_straight_through_rounding_passes_the_bound_gradient():
    levels = (8, 5, 5)
    z = jnp.array([[0.3, -0.7, 1.2], [-0.1, 0.4, -2.0]])
    w = jnp.array([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]])
    grad = jax.grad(lambda x: jnp.sum(w * FSQ(levels).apply({}, x)[0]))(z)
    # Rounding contributes the identity: the gradient is that of bound(z) / half_width.
    expected = jax.grad(lambda x: jnp.sum(w * fsq_bound(x, levels) / jnp.array([4.0, 2.0, 2.0])))(z)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    assert np.all(np.abs(np.asarray(grad)) > 0)


# ---- LFQ ----------------------------------------------------------------------------------------------------
def _np_entropy(p, axis=-1):
    return -np.sum(p * np.log(np.maximum(p, 1e-5)), axis=axis)


def _np_lfq_entropies(z, temperature):
    """magvit's entropy_loss in float64: p = softmax(2 <z, c> / T) over every c in {-1, +1}^K."""
    codes = np.array(list(itertools.product([-1.0, 1.0], repeat=z.shape[-1])))
    logits = 2.0 * z.reshape(-1, z.shape[-1]).astype(np.float64) @ codes.T / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return _np_entropy(p).mean(), _np_entropy(p.mean(axis=0))


def test_lfq_ids_are_little_endian_signs():
    lfq = LFQ(num_bits=3)
    codes, info = lfq.apply({}, jnp.array([[0.2, -0.1, 0.7], [-0.3, 0.5, 0.1], [-1.0, -1.0, -1.0]]))
    np.testing.assert_array_equal(info["indices"], [1 + 4, 2 + 4, 0])  # bit i weighs 2**i
    np.testing.assert_array_equal(codes, [[1, -1, 1], [-1, 1, 1], [-1, -1, -1]])
    ids = jnp.arange(2**8)
    lfq8 = LFQ(num_bits=8)
    np.testing.assert_array_equal(lfq8.codes_to_indices(lfq8.codebook_entries(ids)), ids)


@pytest.mark.parametrize("num_bits, temperature", [(3, 0.01), (6, 0.5), (10, 0.01), (10, 1.0)])
def test_lfq_entropy_equals_the_numpy_reference(num_bits, temperature):
    z = np.random.default_rng(num_bits).normal(scale=0.05, size=(4, 6, num_bits)).astype(np.float32)
    sample, codebook = lfq_entropy_terms(jnp.asarray(z), temperature)
    ref_sample, ref_codebook = _np_lfq_entropies(z, temperature)
    np.testing.assert_allclose([sample, codebook], [ref_sample, ref_codebook], rtol=2e-4, atol=2e-5)
    assert 0 <= ref_sample <= num_bits * math.log(2) and ref_codebook > 0


def test_lfq_entropy_gradient_sharpens_tokens_and_spreads_the_batch():
    # 16 tokens, all weakly positive in every bit: each token unsure, the batch leaning to one corner.
    z = 0.05 + 0.02 * jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)), jnp.float32)
    temperature = 0.1

    def loss(x):
        sample, codebook = lfq_entropy_terms(x, temperature)
        return sample - codebook

    before = lfq_entropy_terms(z, temperature)
    after = lfq_entropy_terms(z - 0.1 * jax.grad(loss)(z), temperature)
    print(f"per-token entropy {before[0]:.4f} -> {after[0]:.4f}; batch entropy {before[1]:.4f} -> {after[1]:.4f}")
    # Measured: per-token 1.4637 -> 1.4332, batch 1.5674 -> 1.9775.
    assert after[0] < before[0] - 0.01 and after[1] > before[1] + 0.1


def test_lfq_losses_and_training_only_entropy():
    z = jnp.array([[0.5, -2.0]])
    lfq = LFQ(num_bits=2, commitment_cost=0.25, temperature=2.0)  # warm enough that no token is one-hot
    _, info = lfq.apply({}, z)
    # (0.5 - 1)^2 = 0.25, (-2 + 1)^2 = 1 -> mean 0.625, x 0.25
    np.testing.assert_allclose(info["commitment_loss"], 0.15625, rtol=1e-6)
    np.testing.assert_allclose(info["quantizer_loss"], 0.15625, rtol=1e-6)  # entropy is not in it
    assert info["codebook_loss"] == 0 and info["per_sample_entropy"] > 0
    # Evaluation: the same keys, entropy terms zero (the softmax over all codes is skipped).
    eval_info = lfq.apply({}, z, train=False)[1]
    assert set(eval_info) == set(info)
    assert [float(eval_info[k]) for k in ("entropy_loss", "per_sample_entropy", "codebook_entropy")] == [0, 0, 0]


@pytest.mark.parametrize("sample_weight, batch_weight", [(1.0, 1.0), (0.5, 2.0)])
def test_lfq_entropy_loss_weighs_the_numpy_terms(sample_weight, batch_weight):
    z = np.random.default_rng(5).normal(scale=0.1, size=(2, 3, 5)).astype(np.float32)
    lfq = LFQ(num_bits=5, temperature=0.05, sample_weight=sample_weight, batch_weight=batch_weight)
    codes, info = lfq.apply({}, jnp.asarray(z))
    ref_sample, ref_codebook = _np_lfq_entropies(z, 0.05)
    np.testing.assert_allclose(
        [info["per_sample_entropy"], info["codebook_entropy"], info["entropy_loss"]],
        [ref_sample, ref_codebook, sample_weight * ref_sample - batch_weight * ref_codebook],
        rtol=2e-4,
        atol=2e-5,
    )
    assert codes.shape == z.shape and info["indices"].shape == (2, 3) and info["indices"].dtype == jnp.int32


@pytest.mark.parametrize("num_bits, chunk_bits", [(6, 1), (10, 4)])
def test_lfq_chunked_entropy_equals_the_full_softmax_with_its_gradient(num_bits, chunk_bits):
    z = jnp.asarray(np.random.default_rng(1).normal(scale=0.05, size=(3, 4, num_bits)), jnp.float32)

    def loss(x, chunk):
        sample, codebook = lfq_entropy_terms(x, 0.05, chunk)
        return sample - 2.0 * codebook

    np.testing.assert_allclose(lfq_entropy_terms(z, 0.05, chunk_bits), lfq_entropy_terms(z, 0.05), rtol=1e-5)
    full_grad = jax.grad(loss)(z, 0)
    assert float(jnp.max(jnp.abs(full_grad))) > 1e-3
    # float32 round-off of both paths is ~1e-5 absolute on gradients of size ~2 (checked against float64).
    np.testing.assert_allclose(jax.grad(loss)(z, chunk_bits), full_grad, rtol=1e-4, atol=3e-5)


def test_lfq_refuses_the_full_softmax_over_more_than_16_bits_and_chunks_it():
    z = np.random.default_rng(2).normal(scale=0.1, size=(1, 2, 17)).astype(np.float32)
    with pytest.raises(ValueError, match=r"2\*\*17 codes.*entropy_chunk_bits"):
        LFQ(num_bits=17).apply({}, jnp.asarray(z))
    _, info = LFQ(num_bits=17).apply({}, jnp.asarray(z), train=False)  # evaluation needs no softmax
    np.testing.assert_array_equal(info["indices"], (z > 0) @ (2 ** np.arange(17)))
    # Chunked, 2**17 codes match the float64 enumeration.
    _, info = LFQ(num_bits=17, temperature=0.1, entropy_chunk_bits=12).apply({}, jnp.asarray(z))
    np.testing.assert_allclose(
        [info["per_sample_entropy"], info["codebook_entropy"]], _np_lfq_entropies(z, 0.1), rtol=2e-4
    )


def test_the_entropy_weight_anneals_as_maskbit():
    weights = losses.SINGLE_STAGE_LOSS_WEIGHTS
    weights = type(weights)(**{**weights.__dict__, "entropy_weight": 0.02})
    got = [float(losses.entropy_weight_at(step, weights)) for step in (0, 1000, 2000, 5000)]
    np.testing.assert_allclose(got, [0.06, 0.04, 0.02, 0.02], rtol=1e-6)
    fast = type(weights)(
        **{**weights.__dict__, "entropy_weight": 1.0, "entropy_anneal_steps": 100, "entropy_anneal_factor": 4.0}
    )
    traced = jax.jit(lambda step: losses.entropy_weight_at(step, fast))
    np.testing.assert_allclose([traced(jnp.int32(0)), traced(jnp.int32(75))], [5.0, 2.0], rtol=1e-6)


# ---- BSQ ----------------------------------------------------------------------------------------------------
def _np_bsq_entropies(z, group_size, inv_t):
    u = z.reshape(-1, z.shape[-1]).astype(np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    k = u.shape[-1]
    p = 1.0 / (1.0 + np.exp(4.0 * u / np.sqrt(k) * inv_t))  # sigmoid(-4 u / sqrt(K) / T)
    per_bit = -(p * np.log(np.maximum(p, 1e-5)) + (1 - p) * np.log(np.maximum(1 - p, 1e-5)))
    sample = per_bit.sum(-1).mean()
    sub_codes = np.array(list(itertools.product([-1.0, 1.0], repeat=group_size))) / np.sqrt(k)
    codebook = 0.0
    for g in range(k // group_size):
        logits = 2.0 * u[:, g * group_size : (g + 1) * group_size] @ sub_codes.T * inv_t
        q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        codebook += _np_entropy(q.mean(axis=0))
    return sample, codebook


def test_bsq_codes_lie_on_the_unit_sphere_with_big_endian_ids():
    bsq = BSQ(num_bits=4, group_size=2)
    codes, info = bsq.apply({}, jnp.array([[3.0, -0.1, -2.0, 0.4], [-1.0, -1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(jnp.linalg.norm(codes, axis=-1), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(codes[0], [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_array_equal(info["indices"], [8 + 1, 2 + 1])  # dimension 0 is the most significant bit
    ids = jnp.arange(2**8)
    bsq8 = BSQ(num_bits=8, group_size=4)
    np.testing.assert_array_equal(bsq8.codes_to_indices(bsq8.codebook_entries(ids)), ids)


@pytest.mark.parametrize("num_bits, group_size, inv_t", [(4, 2, 1.0), (6, 3, 1.0), (8, 4, 2.0)])
def test_bsq_grouped_entropy_equals_the_numpy_reference(num_bits, group_size, inv_t):
    z = np.random.default_rng(num_bits).normal(size=(3, 5, num_bits)).astype(np.float32)
    unit = z / np.linalg.norm(z, axis=-1, keepdims=True)
    sample, codebook = bsq_entropy_terms(jnp.asarray(unit), group_size, inv_t)
    np.testing.assert_allclose([sample, codebook], _np_bsq_entropies(z, group_size, inv_t), rtol=1e-4, atol=1e-6)


def test_bsq_entropy_loss_weights_and_temperature_and_checks():
    z = np.random.default_rng(9).normal(size=(2, 3, 6)).astype(np.float32)
    bsq = BSQ(num_bits=6, group_size=3, inv_temperature=2.0, sample_weight=0.5, batch_weight=1.5)
    codes, info = bsq.apply({}, jnp.asarray(z))
    ref_sample, ref_codebook = _np_bsq_entropies(z, 3, 2.0)
    # (0.5 H_sample - 1.5 H_codebook) / inv_T
    np.testing.assert_allclose(info["entropy_loss"], (0.5 * ref_sample - 1.5 * ref_codebook) / 2.0, rtol=1e-4)
    assert codes.dtype == jnp.float32 and info["indices"].dtype == jnp.int32 and info["commitment_loss"] == 0
    eval_info = bsq.apply({}, jnp.asarray(z), train=False)[1]
    assert set(eval_info) == set(info) and float(eval_info["entropy_loss"]) == 0
    with pytest.raises(ValueError, match="group_size must divide num_bits"):
        BSQ(num_bits=6, group_size=4).apply({}, jnp.asarray(z))
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        bsq.apply({}, jnp.ones((2, 5)))


def test_bsq_commitment_and_straight_through_gradient():
    z = jnp.array([[3.0, 4.0]])  # unit (0.6, 0.8), code (1, 1) / sqrt2
    bsq = BSQ(num_bits=2, group_size=1, commitment_cost=0.5)
    _, info = bsq.apply({}, z)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(info["commitment_loss"], 0.5 * ((0.6 - r) ** 2 + (0.8 - r) ** 2), rtol=1e-5)
    # Straight through the sign: the gradient is that of the l2 normalisation, d(z/|z|)^T w = (w - u u.w) / |z|.
    w = jnp.array([[1.0, -1.0]])
    grad = jax.grad(lambda x: jnp.sum(w * bsq.apply({}, x)[0]))(z)
    u = np.array([0.6, 0.8])
    np.testing.assert_allclose(grad[0], (np.array([1.0, -1.0]) - u * (u @ np.array([1.0, -1.0]))) / 5.0, rtol=1e-5)


def test_titok_passes_its_entropy_weights_to_lfq():
    """model.entropy_sample_weight / entropy_codebook_weight (MaskBit's entropy_gamma) reach the LFQ module."""
    config = tiny_config("single_stage:tiny_lfq")
    config.model.update(entropy_sample_weight=0.5, entropy_codebook_weight=2.0)
    model = titok_from_config(config.model)
    images = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), images[:1])
    _, info = model.apply(variables, images, sample_posterior=True, method=TiTok.encode)
    assert info["per_sample_entropy"] > 0.01 and info["codebook_entropy"] > 0.01
    np.testing.assert_allclose(
        info["entropy_loss"], 0.5 * info["per_sample_entropy"] - 2.0 * info["codebook_entropy"], rtol=1e-5
    )
