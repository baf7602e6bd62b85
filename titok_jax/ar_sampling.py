"""Autoregressive sampling (RAR): one token per step in raster order, in one jitted lax loop.

The official `RAR.generate` (spec section 1), step t of N:
  g_t = 1 + (g - 1) * (1 - cos(pi * (t / N) ** p)) / 2   (p = 0: a constant g; 0 ** 0 = 1)
  logits = uncond + g_t * (cond - uncond)   when g != 0, cond and null class as one doubled batch
  token_t ~ softmax(logits / temperature)   (the official has no top-k / top-p; ours are off by default)
With a K/V cache (`prefill` the cls and class slots, then `decode_step` one token a step) each step costs one
slot; without it (`logits_fn`) every step recomputes the whole prefix. Both draw the same tokens for the same key:
step t samples with fold_in(rng, t).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# prefill_fn(class_ids (B,), cache) -> (logits of token 0 (B, V), cache)
# step_fn(previous token (B,), step t (scalar), class_ids (B,), cache) -> (logits of token t (B, V), cache)
PrefillFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
StepFn = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
# logits_fn(ids (B, N) raster, class_ids (B,)) -> logits (B, N, V): position t from the tokens before t
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def guidance_scales(num_tokens: int, scale: float, power: float) -> np.ndarray:
    """g_t for t = 0..N-1 (the official cosine-power schedule; only used when scale != 0)."""
    steps = np.arange(num_tokens, dtype=np.float64) / num_tokens
    return ((scale - 1.0) * (1.0 - np.cos(np.pi * steps**power)) / 2.0 + 1.0).astype(np.float32)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits outside the top-k (k > 0) or outside the smallest set of mass >= top_p (< 1) set to -inf."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        mass_before = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1) - jax.nn.softmax(ordered, axis=-1)
        # the smallest logit still inside the nucleus (the top one always is)
        cut = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cut, -jnp.inf, logits)
    return logits


@dataclasses.dataclass(frozen=True)
class ARSamplingSettings:
    """The AR sampler's knobs (config.sampling of a RAR run); hashable, so a jitted sampler can take it static."""

    temperature: float = 1.0
    guidance_scale: float = 0.0  # 0: no guidance (the official runs the null-class batch whenever it is not 0)
    guidance_power: float = 0.0  # the cosine-power schedule's p (official `guidance_scale_pow`)
    top_k: int = 0
    top_p: float = 1.0
    kv_cache: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ARSamplingSettings:
        fields = dict(config)
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(valid))
        if unknown:
            raise ValueError(f"Unknown AR sampling field(s) {unknown}; valid: {', '.join(valid)}.")
        settings = cls(**fields)
        if settings.temperature <= 0:
            raise ValueError(f"sampling.temperature must be > 0, got {settings.temperature}.")
        if settings.top_k < 0 or not 0.0 < settings.top_p <= 1.0:
            raise ValueError(
                f"sampling.top_k must be >= 0 and top_p in (0, 1]; got {settings.top_k}, {settings.top_p}."
            )
        if settings.guidance_power < 0:
            raise ValueError(f"sampling.guidance_power must be >= 0, got {settings.guidance_power}.")
        return settings

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 0


def _draw(settings: ARSamplingSettings, logits: jax.Array, key: jax.Array) -> jax.Array:
    logits = filter_logits(logits.astype(jnp.float32) / settings.temperature, settings.top_k, settings.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _guide(settings: ARSamplingSettings, scales: jax.Array, step: jax.Array, logits: jax.Array, batch: int):
    if not settings.guided:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + scales[step] * (cond - uncond)


def _rows(settings: ARSamplingSettings, class_ids: jax.Array, num_tokens: int, null_class: int):
    """(g_t for every step, the class of every row the model runs: the null class appended when guided)."""
    scales = jnp.asarray(guidance_scales(num_tokens, settings.guidance_scale, settings.guidance_power))
    if not settings.guided:
        return scales, class_ids
    return scales, jnp.concatenate([class_ids, jnp.full_like(class_ids, null_class)])


def _next_token(settings, scales, step, logits, batch, rng) -> jax.Array:
    """Token `step` (B,) from the logits of every row: guided, filtered, drawn with fold_in(rng, step)."""
    return _draw(settings, _guide(settings, scales, step, logits, batch), jax.random.fold_in(rng, step))


def sample_cached(
    settings: ARSamplingSettings,
    prefill_fn: PrefillFn,
    step_fn: StepFn,
    cache: Any,
    class_ids: jax.Array,
    rng: jax.Array,
    *,
    num_tokens: int,
    null_class: int,
    stop_after: int | None = None,
) -> jax.Array:
    """Token ids (B, stop_after or num_tokens) for class_ids (B,) with a K/V cache (for 2B rows when guided)."""
    length = num_tokens if stop_after is None else stop_after
    batch = class_ids.shape[0]
    scales, classes = _rows(settings, class_ids, num_tokens, null_class)
    logits, cache = prefill_fn(classes, cache)
    first = _next_token(settings, scales, 0, logits, batch, rng)
    ids = jnp.zeros((batch, length), jnp.int32).at[:, 0].set(first)

    def body(step, carry):
        ids, cache = carry
        previous = ids[:, step - 1]
        fed = jnp.concatenate([previous, previous]) if settings.guided else previous
        logits, cache = step_fn(fed, step, classes, cache)
        token = _next_token(settings, scales, step, logits, batch, rng)
        return ids.at[:, step].set(token), cache

    ids, _ = jax.lax.fori_loop(1, length, body, (ids, cache))
    return ids


def sample_uncached(
    settings: ARSamplingSettings,
    logits_fn: LogitsFn,
    class_ids: jax.Array,
    rng: jax.Array,
    *,
    num_tokens: int,
    null_class: int,
    stop_after: int | None = None,
) -> jax.Array:
    """The same draws as `sample_cached`, recomputing all N positions every step (the causal mask keeps the
    not-yet-sampled ones out)."""
    length = num_tokens if stop_after is None else stop_after
    batch = class_ids.shape[0]
    scales, classes = _rows(settings, class_ids, num_tokens, null_class)

    def body(step, ids):
        fed = jnp.concatenate([ids, ids]) if settings.guided else ids
        logits = jax.lax.dynamic_index_in_dim(logits_fn(fed, classes), step, axis=1, keepdims=False)
        token = _next_token(settings, scales, step, logits, batch, rng)
        return ids.at[:, step].set(token)

    ids = jax.lax.fori_loop(0, length, body, jnp.zeros((batch, num_tokens), jnp.int32))
    return ids[:, :length]
