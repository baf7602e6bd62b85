"""MaskGIT sampling: schedules against the maskgit package and hand values, determinism, guidance."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from maskgit.libml import mask_schedule as official

from titok_jax import sampling
from titok_jax import sharding as sh

RATIOS = [0.0, 0.05, 0.25, 0.5, 0.75, 0.9, 0.999]


@pytest.mark.parametrize("ratio", RATIOS)
def test_mask_schedules_against_the_maskgit_package(ratio):
    np.testing.assert_allclose(
        sampling.mask_ratio(ratio, "cosine"), official.schedule(ratio, 32, "cosine"), rtol=1e-6, atol=1e-7
    )
    # TiTok's arccos schedule is the inverse of MaskGIT's cosine one.
    if 0.0 < ratio < 0.999:
        np.testing.assert_allclose(sampling.mask_ratio(official.schedule(ratio, 32, "cosine")), ratio, atol=1e-5)


def test_masking_counts_by_hand():
    # Training: round(K * arccos(t) / (pi / 2)), at least 1: t = 0.5 -> 2/3 of K.
    counts = sampling.num_masked_for_training(jnp.array([0.0, 0.5, 0.9, 1.0]), 32)
    np.testing.assert_array_equal(counts, [32, 21, 9, 1])  # 32 * (1, 0.6667, 0.2871, 1e-6) rounded, min 1
    # Sampling, K=32, T=8: floor(32 * arccos((s+1)/8) / (pi/2)), clamped to [1, masked - 1], as
    # maskgit's parallel_decode clamps (there with its cosine ratio).
    expected = [math.floor(32 * math.acos((s + 1) / 8) / (math.pi / 2)) for s in range(8)]
    assert expected == [29, 26, 24, 21, 18, 14, 10, 0]  # e.g. s=2: 32 * acos(0.375) / (pi/2) = 24.17
    got = [int(sampling.num_to_remask(s, 8, 32, jnp.array(32 if s == 0 else expected[s - 1]))) for s in range(8)]
    assert got == [29, 26, 24, 21, 18, 14, 10, 1]
    assert int(sampling.num_to_remask(3, 8, 32, jnp.array(5))) == 4  # never re-masks every masked token


def test_guidance_weights_follow_the_spec_formulas():
    np.testing.assert_allclose(sampling.guidance_weights(4, 4.5, "constant"), [4.5] * 4)
    # linear: no guidance at step 0, then g * s / T (the official updates the scale after each step)
    np.testing.assert_allclose(sampling.guidance_weights(8, 4.5, "linear"), [4.5 * s / 8 for s in range(8)], rtol=1e-6)
    # power-cosine, S-128 settings: official cfg = (g-1)(1-cos(pi (s/T)^3))/2 + 1 applied as uncond + cfg (c - u)
    g, steps = 6.9, 64
    cfg = [(g - 1) * (1 - math.cos(math.pi * (s / steps) ** 3)) / 2 + 1 for s in range(steps)]
    weights = sampling.guidance_weights(steps, g, "power-cosine", 3.0)
    np.testing.assert_allclose(weights + 1, cfg, rtol=1e-6)
    assert weights[0] == 0.0 and abs(weights[32] - 5.9 * (1 - math.cos(math.pi / 8)) / 2) < 1e-6
    cond, uncond = np.random.default_rng(0).normal(size=(2, 5))
    np.testing.assert_allclose(uncond + cfg[40] * (cond - uncond), cond + weights[40] * (cond - uncond), rtol=1e-5)
    with pytest.raises(ValueError, match="power-cosine"):
        sampling.guidance_weights(8, 1.0, "cosine")


CODEBOOK, TOKENS, CLASSES = 16, 12, 4


def _toy_logits_fn():
    """A fixed random 'generator': logits from the token ids, their positions and the class (null = CLASSES)."""
    rng = np.random.default_rng(1)
    token_table = jnp.asarray(rng.normal(size=(CODEBOOK + 1, CODEBOOK)), jnp.float32)
    position_table = jnp.asarray(rng.normal(size=(TOKENS, CODEBOOK)), jnp.float32)
    class_table = jnp.asarray(3 * rng.normal(size=(CLASSES + 1, CODEBOOK)), jnp.float32)

    def logits_fn(ids, class_ids):
        context = jnp.mean(token_table[ids], axis=1, keepdims=True)
        return position_table[None] + context + class_table[class_ids][:, None]

    return logits_fn


def _sample(class_ids, seed=0, **kwargs):
    fn = jax.jit(
        functools.partial(
            sampling.sample_tokens,
            _toy_logits_fn(),
            num_tokens=TOKENS,
            codebook_size=CODEBOOK,
            null_class=CLASSES,
            **kwargs,
        )
    )
    return np.asarray(fn(class_ids, jax.random.PRNGKey(seed)))


def test_sampling_is_deterministic_and_unmasks_everything():
    classes = jnp.arange(8) % CLASSES
    first = _sample(classes, num_steps=8, randomize_temperature=4.5, guidance_scale=3.0, guidance_schedule="linear")
    again = _sample(classes, num_steps=8, randomize_temperature=4.5, guidance_scale=3.0, guidance_schedule="linear")
    other = _sample(
        classes, seed=1, num_steps=8, randomize_temperature=4.5, guidance_scale=3.0, guidance_schedule="linear"
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == (8, TOKENS) and first.min() >= 0 and first.max() < CODEBOOK  # no mask id left


def test_zero_guidance_equals_the_unguided_path_and_guidance_matters():
    classes = jnp.arange(8) % CLASSES
    common = dict(num_steps=6, randomize_temperature=2.0)
    unguided = _sample(classes, **common)
    for schedule, scale in (("constant", 0.0), ("linear", 0.0), ("power-cosine", 1.0)):
        np.testing.assert_array_equal(
            _sample(classes, guidance_scale=scale, guidance_schedule=schedule, **common), unguided
        )
    assert not np.array_equal(_sample(classes, guidance_scale=5.0, **common), unguided)


def test_greedy_sampling_fills_the_most_confident_tokens():
    # Temperature 0: every step takes argmax tokens; the final ids are argmax of the last step's logits
    # given the context, and one step unmasks everything at once.
    classes = jnp.zeros((2,), jnp.int32)
    one_step = _sample(classes, num_steps=1, randomize_temperature=0.0)
    masked = jnp.full((2, TOKENS), CODEBOOK, jnp.int32)
    np.testing.assert_array_equal(one_step, np.argmax(_toy_logits_fn()(masked, classes), axis=-1))


def test_sampling_sharded_over_the_batch_matches_one_device():
    classes = jnp.arange(16) % CLASSES
    expected = _sample(classes, num_steps=4, randomize_temperature=1.0, guidance_scale=2.0)
    mesh = sh.make_mesh(data=8, fsdp=1, tensor=1)
    sharded_classes = jax.device_put(classes, NamedSharding(mesh, P("data")))
    got = _sample(sharded_classes, num_steps=4, randomize_temperature=1.0, guidance_scale=2.0)
    np.testing.assert_array_equal(got, expected)
