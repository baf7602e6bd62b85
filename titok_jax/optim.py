"""Optimisers of the recipes: AdamW with the official weight-decay exclusions,
warmup + cosine schedule, global-norm clipping, frozen subtrees, and EMA."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from titok_jax.trees import BLOCKS, TRANSFORMER, matches, path_name

# Official rule: no decay for params with ndim < 2 or whose name contains one of
# these. 'codebook' is our name for the official `*.embedding.weight` codebooks.
NO_DECAY_NAME_PARTS = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed", "codebook")


def weight_decay_mask(params: Any) -> Any:
    """True where weight decay applies (the official exclusion rule)."""

    def decays(path, leaf) -> bool:
        name = path_name(path)
        # Scanned ViT blocks (scan_layers) carry a leading depth axis: the rule is about one layer's param.
        ndim = leaf.ndim - (f"/{TRANSFORMER}/{BLOCKS}/" in f"/{name}/")
        return ndim >= 2 and not any(part in name for part in NO_DECAY_NAME_PARTS)

    return jax.tree_util.tree_map_with_path(decays, params)


def frozen_mask(params: Any, frozen: Sequence[str] = (), trainable: Sequence[str] = ()) -> Any:
    """True for the params that do not train: those matching a `frozen` pattern, and, when `trainable`
    patterns are given, those matching none of them (patterns: trees.matches, on names below 'params')."""

    def is_frozen(path, _) -> bool:
        name = path_name(path).removeprefix("params/")
        return matches(name, frozen) or (bool(trainable) and not matches(name, trainable))

    return jax.tree_util.tree_map_with_path(is_frozen, params)


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine to `end_learning_rate` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(total_steps, config.warmup_steps + 1),
        end_value=config.end_learning_rate,
    )


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int, frozen: Callable[[Any], Any] | None = None
) -> optax.GradientTransformation:
    """clip(global norm) -> AdamW(schedule, decay mask); frozen params get zero updates and no state.

    `frozen` maps a params tree to a bool tree (True = frozen).
    """
    adamw = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm) if config.grad_clip_norm else optax.identity(),
        optax.adamw(
            learning_rate=learning_rate_schedule(config, total_steps),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        ),
    )
    if frozen is None:
        return adamw
    labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train", frozen(params))  # noqa: E731
    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


def ema_decay(step: jax.Array, decay: float, warmup: bool = True) -> jax.Array:
    """min(decay, (1 + t) / (10 + t)) with warmup, else `decay`."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
    """e + (p - e) * (1 - decay): the usual EMA, written so that a param that does not move (frozen, zero
    updates) keeps its EMA exactly where it started."""
    return jax.tree.map(lambda e, p: e + (p.astype(e.dtype) - e) * (1.0 - decay), ema_params, params)
