"""Codebook health of a batch of code ids, against a hand-worked histogram."""

import jax.numpy as jnp
import numpy as np

from titok_jax.recipes.tokenizer import TokenizerRecipe, codebook_health


def test_usage_entropy_and_perplexity_of_a_hand_worked_batch():
    # ids 0, 0, 1, 3 of 4 codes: p = [1/2, 1/4, 0, 1/4] -> H = 0.5 * 1 + 2 * 0.25 * 2 = 1.5 bits.
    health = codebook_health(jnp.array([[0, 0], [1, 3]]), 4)
    np.testing.assert_allclose(health["codebook_usage"], 0.75)
    np.testing.assert_allclose(health["codebook_entropy_bits"], 1.5, rtol=1e-6)
    np.testing.assert_allclose(health["codebook_perplexity"], 2**1.5, rtol=1e-6)
    collapsed = codebook_health(jnp.zeros((8, 16), jnp.int32), 256)
    np.testing.assert_allclose([collapsed["codebook_entropy_bits"], collapsed["codebook_perplexity"]], [0.0, 1.0])


def test_code_counts_sum_over_a_window_into_dead_codes_and_a_usage_histogram():
    # Two steps of a 6-code codebook: step 1 uses codes 0, 0, 1, 4; step 2 uses 0, 1, 1, 1. Codes 2, 3, 5 are dead.
    first = codebook_health(jnp.array([[0, 0], [1, 4]]), 6)
    second = codebook_health(jnp.array([[0, 1], [1, 1]]), 6)
    np.testing.assert_array_equal(first["code_counts"], [2, 1, 0, 0, 1, 0])
    window = {"code_counts": np.asarray(first["code_counts"] + second["code_counts"])}
    recipe = object.__new__(TokenizerRecipe)  # window_summaries reads nothing of the built recipe
    scalars, pictures = recipe.window_summaries(window, steps=2)
    assert scalars == {"dead_codes": 3.0, "window_codebook_usage": 0.5}
    (histogram,) = pictures["codebook_usage_histogram"]
    assert histogram.dtype == np.uint8 and histogram.shape == (96, 6 * (512 // 6), 3)
    width = 512 // 6
    bars = [int(np.sum(np.all(histogram[:-2, c * width] == (40, 90, 200), axis=-1))) for c in range(6)]
    # Sorted 4, 3, 1, 0, 0, 0 -> bar heights 94 * (1, 3/4, 1/4, 0, 0, 0); the dead codes' columns are red below.
    assert bars == [94, 70, 24, 0, 0, 0]
    base = histogram[-1, ::width]
    np.testing.assert_array_equal(np.all(base == (220, 40, 40), axis=-1), [False, False, False, True, True, True])


def test_large_codebooks_report_no_per_code_counts():
    assert "code_counts" not in codebook_health(jnp.zeros((2, 4), jnp.int32), 2**17)
    assert object.__new__(TokenizerRecipe).window_summaries({}, steps=5) == ({}, {})
