"""MaskGIT generator training: arccos-schedule token masking and the masked-token loss (official MLMLoss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from titok_jax import sampling


def mask_tokens(
    rng: jax.Array, tokens: jax.Array, mask_id: int, lengths: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """tokens (B, K) -> (inputs with masked positions set to mask_id, bool mask (B, K)).

    Per example t ~ U(0, 1) and round(K * arccos(t) / (pi / 2)) >= 1 positions, chosen
    uniformly (the ranks of a uniform draw), are masked. With `lengths` (B,) each example is its
    first k tokens: round(k * arccos(t) / (pi / 2)) >= 1 of those are masked and none past them.
    """
    ratio_key, order_key = jax.random.split(rng)
    batch, length = tokens.shape
    draws = jax.random.uniform(order_key, (batch, length))
    if lengths is None:
        num_masked = sampling.num_masked_for_training(jax.random.uniform(ratio_key, (batch,)), length)
    else:
        num_masked = sampling.num_masked_for_training(jax.random.uniform(ratio_key, (batch,)), lengths)
        # Positions >= k draw above every uniform, so they rank last and num_masked <= k never reaches them.
        draws = jnp.where(prefix_positions(lengths, length), draws, 2.0)
    ranks = jnp.argsort(jnp.argsort(draws, axis=-1), axis=-1)
    masked = ranks < num_masked[:, None]
    return jnp.where(masked, mask_id, tokens), masked


def prefix_positions(lengths: jax.Array, num_tokens: int) -> jax.Array:
    """lengths (B,) -> bool (B, K): True at the positions < k of each example's prefix."""
    return jnp.arange(num_tokens)[None] < lengths.astype(jnp.int32)[:, None]


def masked_token_loss(
    logits: jax.Array,
    targets: jax.Array,
    masked: jax.Array,
    label_smoothing: float = 0.1,
    unmasked_weight: float = 0.1,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Label-smoothed CE over every position, weight 1 on masked and `unmasked_weight` on the rest,
    normalised by the weight sum; accuracy is over masked positions (per example, then averaged).
    `valid` (B, K) bool (prefix training) gives the positions past each prefix weight 0."""
    num_classes = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(targets, num_classes), label_smoothing)
    per_token = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
    weights = jnp.where(masked, 1.0, unmasked_weight)
    if valid is not None:
        weights = jnp.where(valid, weights, 0.0)
    loss = jnp.sum(per_token * weights) / (jnp.sum(weights) + 1e-8)
    correct = (jnp.argmax(logits, axis=-1) == targets) & masked
    accuracy = jnp.sum(correct, axis=1) / (jnp.sum(masked, axis=1) + 1e-8)
    return loss, {"loss": loss, "masked_token_accuracy": jnp.mean(accuracy)}
