"""FSQ, LFQ and BSQ against values worked out by hand and float64 numpy references written from the spec
(next-wave.md sections 2-3), independently of the code under test (codes enumerated with itertools)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titok_jax import losses
from titok_jax.models.scalar_quantizers import (
    BSQ,
    FSQ,
    FSQ_PRESETS,
    LFQ,
    bsq_entropy_terms,
    fsq_bound,
    lfq_entropy_terms,
)


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
    lfq = LFQ(num_bits=2, commitment_cost=0.25)
    _, info = lfq.apply({}, z)
    # (0.5 - 1)^2 = 0.25, (-2 + 1)^2 = 1 -> mean 0.625, x 0.25
    np.testing.assert_allclose(info["commitment_loss"], 0.15625, rtol=1e-6)
    assert "per_sample_entropy" in info and "per_sample_entropy" not in lfq.apply({}, z, train=False)[1]


def test_the_entropy_weight_anneals_as_maskbit():
    weights = losses.SINGLE_STAGE_LOSS_WEIGHTS
    weights = type(weights)(**{**weights.__dict__, "entropy_weight": 0.02})
    got = [float(losses.entropy_weight_at(step, weights)) for step in (0, 1000, 2000, 5000)]
    np.testing.assert_allclose(got, [0.06, 0.04, 0.02, 0.02], rtol=1e-6)


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
