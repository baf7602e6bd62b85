"""Generator training pieces: masking counts follow the arccos schedule; the loss equals torch's MLMLoss maths."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from titok_jax import sampling
from titok_jax.train import masking


def test_mask_tokens_masks_the_scheduled_count_uniformly():
    tokens = jnp.arange(4096 * 32).reshape(4096, 32) % 100
    inputs, masked = masking.mask_tokens(jax.random.PRNGKey(0), tokens, mask_id=4096)
    ratio_key, _ = jax.random.split(jax.random.PRNGKey(0))
    expected = sampling.num_masked_for_training(jax.random.uniform(ratio_key, (4096,)), 32)
    np.testing.assert_array_equal(masked.sum(axis=1), expected)
    assert int(masked.sum(axis=1).min()) >= 1
    np.testing.assert_array_equal(inputs, np.where(masked, 4096, tokens))
    # Positions are uniform: every position is masked about equally often.
    per_position = np.asarray(masked.mean(axis=0))
    assert per_position.max() - per_position.min() < 0.06
    # arccos schedule: E[ratio] = E[arccos(U)] / (pi/2) = 2/pi = 0.637 of the tokens masked on average.
    assert abs(float(masked.mean()) - 2 / np.pi) < 0.01


def test_masked_token_loss_equals_the_official_formula_in_torch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 10, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 10))
    masked = rng.random((3, 10)) < 0.5
    loss, metrics = masking.masked_token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(masked))

    # The official MLMLoss: CrossEntropyLoss(label_smoothing=0.1, reduction='none') over (b, c, n).
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1, reduction="none")
    per_token = criterion(torch.from_numpy(logits).permute(0, 2, 1), torch.from_numpy(targets))
    weights = torch.from_numpy(masked).float()
    loss_weights = (1.0 - weights) * 0.1 + weights
    expected = (per_token * loss_weights).sum() / (loss_weights.sum() + 1e-8)
    correct = ((torch.from_numpy(logits).argmax(-1) == torch.from_numpy(targets)) * weights).sum(1) / (
        weights.sum(1) + 1e-8
    )
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["masked_token_accuracy"]), float(correct.mean()), rtol=1e-6)
