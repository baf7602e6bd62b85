"""RAR: KV-cached logits and sampling equal the recomputed ones, the slot position rows, annealing, sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titok_jax import ar_sampling
from titok_jax.ar_sampling import ARSamplingSettings
from titok_jax.inference import generator as generator_lib
from titok_jax.models.rar import NO_ROW, RAR, RAR_SIZES, slot_rows
from titok_jax.recipes.rar import random_order_ratio, sample_orders

SMALL = dict(
    codebook_size=32, num_classes=10, num_tokens=16, hidden_size=64, depth=2, num_heads=4, intermediate_size=128
)


def _randomized(model, seed=0, scale=0.1):
    """Every parameter drawn at random (adaLN-zero would otherwise make each block the identity)."""
    ids = jnp.zeros((1, model.num_tokens), jnp.int32)
    variables = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), ids, jnp.zeros((1,), jnp.int32)))
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])


@pytest.fixture(scope="module")
def small():
    model = RAR(**SMALL, dropout=0.0, attention_dropout=0.0)
    return model, _randomized(model)


def test_cached_decoding_gives_the_recomputed_logits(small):
    model, variables = small
    ids = jax.random.randint(jax.random.PRNGKey(3), (3, 16), 0, 32)
    classes = jnp.array([1, 4, 10])  # 10: the null class
    full = model.apply(variables, ids, classes)
    logits, cache = model.apply(variables, classes, model.init_cache(3), method=RAR.prefill)
    cached = [logits]
    for step in range(1, 16):
        logits, cache = model.apply(
            variables, ids[:, step - 1], jnp.int32(step), classes, cache, method=RAR.decode_step
        )
        cached.append(logits)
    np.testing.assert_allclose(np.stack(cached, axis=1), full, atol=2e-5, rtol=1e-5)
    assert float(jnp.max(jnp.abs(full))) > 1.0  # the logits are not all near zero


def test_a_token_changes_only_the_logits_after_it(small):
    model, variables = small
    ids = jax.random.randint(jax.random.PRNGKey(4), (1, 16), 0, 32)
    classes = jnp.array([2])
    changed = ids.at[0, 5].set((ids[0, 5] + 1) % 32)
    a, b = model.apply(variables, ids, classes), model.apply(variables, changed, classes)
    np.testing.assert_array_equal(a[:, :6], b[:, :6])  # positions 0..5 predict from tokens < 6
    assert float(jnp.max(jnp.abs(a[:, 6:] - b[:, 6:]))) > 1e-3


@pytest.mark.parametrize(
    "settings",
    [
        ARSamplingSettings(),
        ARSamplingSettings(guidance_scale=3.0, guidance_power=1.5, temperature=1.02),
        ARSamplingSettings(guidance_scale=4.0, guidance_power=0.0, top_k=8, top_p=0.9),
    ],
    ids=["plain", "guided", "constant_guidance_topk_topp"],
)
def test_cached_sampling_draws_the_uncached_tokens(small, settings):
    model, variables = small
    classes = jnp.arange(8) % 10
    rng = jax.random.PRNGKey(7)
    cached = generator_lib.sample_tokens(model, settings, variables, classes, rng)
    uncached_settings = ARSamplingSettings(**{**settings.__dict__, "kv_cache": False})
    uncached = generator_lib.sample_tokens(model, uncached_settings, variables, classes, rng)
    assert cached.shape == (8, 16) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(cached, uncached)
    other = generator_lib.sample_tokens(model, settings, variables, classes, jax.random.PRNGKey(8))
    assert not np.array_equal(cached, other)  # the key matters: the test compares draws, not a constant
    # Stopping after k tokens draws the first k tokens of the full sample.
    prefix = generator_lib.sample_tokens(model, settings, variables, classes, rng, num_tokens=4)
    np.testing.assert_array_equal(prefix, cached[:, :4])


def test_guidance_schedule_is_the_official_cosine_power():
    scales = ar_sampling.guidance_scales(4, 16.0, 2.75)
    expected = [1 + 15 * (1 - np.cos(np.pi * (t / 4) ** 2.75)) / 2 for t in range(4)]
    np.testing.assert_allclose(scales, expected, rtol=1e-6)
    assert scales[0] == 1.0
    np.testing.assert_allclose(ar_sampling.guidance_scales(4, 4.0, 0.0), 4.0)  # p = 0: constant (0 ** 0 = 1)


def test_top_k_and_top_p_keep_the_right_codes():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()  # noqa: E731
    assert kept(ar_sampling.filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    assert kept(ar_sampling.filter_logits(logits, top_p=0.6)) == [True, True, False, False, False]  # 0.5 < 0.6
    assert kept(ar_sampling.filter_logits(logits, top_p=0.5)) == [True, False, False, False, False]
    assert kept(ar_sampling.filter_logits(logits, top_p=0.86)) == [True, True, True, True, False]


def test_slot_rows_follow_the_order():
    positions, targets = slot_rows(jnp.array([[2, 0, 1], [0, 1, 2]]))
    # Hand-worked: slot 2 holds token 2 (row 4) and predicts token 0 (row 2); slot 1 (class) predicts token 2.
    np.testing.assert_array_equal(positions, [[0, 1, 4, 2], [0, 1, 2, 3]])
    np.testing.assert_array_equal(targets, [[NO_ROW, 4, 2, 3], [NO_ROW, 2, 3, 4]])


def test_orders_permute_tokens_targets_and_positions_together(small):
    """Feeding the tokens in order o gives, at output i, the raster model's prediction for token o[i] exactly
    when o keeps the prefix before it: a reversal of the last two tokens changes only the last two outputs."""
    model, variables = small
    ids = jax.random.randint(jax.random.PRNGKey(5), (1, 16), 0, 32)
    classes = jnp.array([3])
    order = jnp.arange(16).at[14].set(15).at[15].set(14)[None]
    raster, swapped = model.apply(variables, ids, classes), model.apply(variables, ids, classes, order)
    np.testing.assert_allclose(swapped[:, :14], raster[:, :14], atol=1e-6)
    assert float(jnp.max(jnp.abs(swapped[:, 14:] - raster[:, 14:]))) > 1e-3


def test_random_order_annealing_and_sampling():
    ratio = lambda step: float(random_order_ratio(step, 100, 200))  # noqa: E731
    assert [ratio(s) for s in (0, 99, 100, 150, 175, 200, 201, 10_000)] == [1, 1, 1, 0.5, 0.25, 0, 0, 0]
    orders = np.asarray(sample_orders(jax.random.PRNGKey(0), 256, 16, jnp.float32(1.0)))
    assert all(sorted(row) == list(range(16)) for row in orders)  # permutations
    assert np.mean([np.array_equal(row, np.arange(16)) for row in orders]) == 0.0
    raster = np.asarray(sample_orders(jax.random.PRNGKey(0), 256, 16, jnp.float32(0.0)))
    np.testing.assert_array_equal(raster, np.broadcast_to(np.arange(16), (256, 16)))
    half = np.asarray(sample_orders(jax.random.PRNGKey(1), 4000, 16, jnp.float32(0.5)))
    shuffled = np.mean([not np.array_equal(row, np.arange(16)) for row in half])
    assert 0.47 < shuffled < 0.53  # binomial sd 0.008


def _count(model):
    ids = jax.ShapeDtypeStruct((1, model.num_tokens), jnp.int32)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(lambda i, c: model.init(jax.random.PRNGKey(0), i, c), ids, labels)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))


def _formula(width, depth, mlp, tokens=256, codes=1024, classes=1000, heads=16):
    """The official layout term by term: cls, embeddings, two position tables, timestep table; per block two
    LayerNorms, qkv, q/k norms, proj, fc1, fc2, adaLN (6D); final adaLN (2D), lm_head."""
    head_dim = width // heads
    block = 2 * 2 * width + (3 * width * width + 3 * width) + 2 * 2 * head_dim + (width * width + width)
    block += (mlp * width + mlp) + (width * mlp + width) + (6 * width * width + 6 * width)
    tables = width + (codes + classes + 2) * width + 2 * (tokens + 1024) * width + (tokens + 100) * width
    return tables + depth * block + (2 * width * width + 2 * width) + (codes * width + codes)


def test_published_sizes_have_the_derived_parameter_counts():
    counts = {}
    for name, (width, depth, mlp) in RAR_SIZES.items():
        model = RAR(hidden_size=width, depth=depth, intermediate_size=mlp)
        counts[name] = _count(model)
        assert counts[name] == _formula(width, depth, mlp)
    # The integers; rounded, the spec's 260.9M / 461.7M / 955.4M / 1498.5M (the paper's 261M / 461M / 955M / 1499M).
    assert counts == {"B": 260_923_648, "L": 461_668_352, "XL": 955_425_024, "XXL": 1_498_520_704}
