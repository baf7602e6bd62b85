"""Gradient accumulation over micro-batches inside one jitted step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def split_microbatches(batch: Any, num_microbatches: int) -> Any:
    """(B, ...) -> (num_microbatches, B / num_microbatches, ...) for every leaf."""

    def split(x):
        if x.shape[0] % num_microbatches:
            raise ValueError(f"Batch of {x.shape[0]} does not split into {num_microbatches} micro-batches.")
        return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])

    return jax.tree.map(split, batch)


def accumulate(
    grad_fn: Callable[[Any, jax.Array], tuple[Any, Any, Any]], batch: Any, rng: jax.Array, num_microbatches: int
) -> tuple[Any, Any, Any]:
    """Runs `grad_fn(microbatch, rng_i) -> (grads, metrics, per_example)` over micro-batches.

    grads and metrics are averaged, so with equal micro-batch sizes and
    per-example-mean losses the result equals one pass over the whole batch;
    per_example outputs (leading batch axis) are concatenated back.
    """
    if num_microbatches == 1:
        return grad_fn(batch, rng)
    microbatches = split_microbatches(batch, num_microbatches)
    rngs = jax.random.split(rng, num_microbatches)
    grads_shape, metrics_shape, _ = jax.eval_shape(grad_fn, jax.tree.map(lambda x: x[0], microbatches), rngs[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (grads_shape, metrics_shape))

    def body(total, inputs):
        microbatch, key = inputs
        grads, metrics, per_example = grad_fn(microbatch, key)
        total = jax.tree.map(lambda t, o: t + o.astype(jnp.float32), total, (grads, metrics))
        return total, per_example

    total, per_example = jax.lax.scan(body, zeros, (microbatches, rngs))
    grads, metrics = jax.tree.map(
        lambda t, s: (t / num_microbatches).astype(s.dtype), total, (grads_shape, metrics_shape)
    )
    per_example = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), per_example)
    return grads, metrics, per_example
