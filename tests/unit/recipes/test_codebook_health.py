"""Codebook health of a batch of code ids, against a hand-worked histogram."""

import jax.numpy as jnp
import numpy as np

from titok_jax.recipes.tokenizer import codebook_health


def test_usage_entropy_and_perplexity_of_a_hand_worked_batch():
    # ids 0, 0, 1, 3 of 4 codes: p = [1/2, 1/4, 0, 1/4] -> H = 0.5 * 1 + 2 * 0.25 * 2 = 1.5 bits.
    health = codebook_health(jnp.array([[0, 0], [1, 3]]), 4)
    np.testing.assert_allclose(health["codebook_usage"], 0.75)
    np.testing.assert_allclose(health["codebook_entropy_bits"], 1.5, rtol=1e-6)
    np.testing.assert_allclose(health["codebook_perplexity"], 2**1.5, rtol=1e-6)
    collapsed = codebook_health(jnp.zeros((8, 16), jnp.int32), 256)
    np.testing.assert_allclose([collapsed["codebook_entropy_bits"], collapsed["codebook_perplexity"]], [0.0, 1.0])
