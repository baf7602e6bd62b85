"""MaskGIT parallel decoding over 1D tokens, with classifier-free guidance, in one jitted lax loop.

The official TiTok generator's `generate` (spec, Generator section), step s of T:
  r = (s + 1) / T;  tau = randomize_temperature * (1 - r)
  logits = guided(cond, uncond, s)  [/ (0.5 + 0.8 (1 - r)) with softmax temperature annealing]
  ids = argmax(logits + tau * gumbel);  confidence = logit(ids) + tau * gumbel' (fresh draw),
  +inf where the token was already fixed;  mask_len = floor(K * arccos(r) / (pi / 2)) clamped to
  [1, #masked - 1];  positions with confidence <= the mask_len-th smallest are re-masked
  (ties included);  the last step keeps every sampled token.

Guidance, written as logits = cond + w_s * (cond - uncond):
  constant      w_s = g
  linear        w_0 = 0, w_s = g * s / T (the official updates the scale after each step)
  power-cosine  w_s = (g - 1) * (1 - cos(pi * (s / T) ** p)) / 2  (official: uncond + (w_s + 1) (cond - uncond))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

GUIDANCE_SCHEDULES = ("constant", "linear", "power-cosine")
MASK_SCHEDULES = ("arccos", "cosine")

# logits_fn(ids (B, K) int32 with mask id = codebook_size, class_ids (B,) int32) -> logits (B, K, codebook_size)
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def mask_ratio(ratio: jax.Array | float, method: str = "arccos") -> jax.Array:
    """Fraction of tokens masked at schedule position `ratio` in [0, 1], clipped to [1e-6, 1].

    "arccos" is TiTok's (training: ratio ~ U(0, 1); sampling: ratio = (s + 1) / T);
    "cosine" is the original MaskGIT's cos(pi / 2 * ratio), its inverse function.
    """
    ratio = jnp.asarray(ratio, jnp.float32)
    if method == "arccos":
        masked = jnp.arccos(ratio) / (math.pi / 2)
    elif method == "cosine":
        masked = jnp.cos(math.pi / 2 * ratio)
    else:
        raise ValueError(f"Unknown mask schedule {method!r}; valid: {', '.join(MASK_SCHEDULES)}.")
    return jnp.clip(masked, 1e-6, 1.0)


def num_masked_for_training(ratio: jax.Array, num_tokens: int | jax.Array) -> jax.Array:
    """Training: round(K * arccos-ratio), at least one token (`num_tokens` per example: a prefix's k)."""
    return jnp.maximum(jnp.round(num_tokens * mask_ratio(ratio)), 1).astype(jnp.int32)


def num_to_remask(step: jax.Array | int, num_steps: int, num_tokens: int, num_masked: jax.Array) -> jax.Array:
    """Sampling: floor(K * arccos((s + 1) / T) / (pi / 2)) clamped to [1, num_masked - 1]."""
    ratio = (jnp.asarray(step, jnp.float32) + 1.0) / num_steps
    length = jnp.floor(num_tokens * mask_ratio(ratio)).astype(jnp.int32)
    return jnp.maximum(1, jnp.minimum(num_masked - 1, length))


def guidance_weights(num_steps: int, scale: float, schedule: str = "constant", power: float = 3.0) -> np.ndarray:
    """w_s for s = 0..T-1 in logits = cond + w_s * (cond - uncond) (see the module docstring)."""
    steps = np.arange(num_steps, dtype=np.float64)
    if schedule == "constant":
        weights = np.full(num_steps, scale)
    elif schedule == "linear":
        weights = scale * steps / num_steps
    elif schedule == "power-cosine":
        weights = (scale - 1.0) * (1.0 - np.cos(np.pi * (steps / num_steps) ** power)) / 2.0
    else:
        raise ValueError(f"Unknown guidance schedule {schedule!r}; valid: {', '.join(GUIDANCE_SCHEDULES)}.")
    return weights.astype(np.float32)


def _gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # -log(-log(u)) with the official clamp of both logs at 1e-20.
    u = jax.random.uniform(key, shape, jnp.float32)
    return -jnp.log(jnp.maximum(-jnp.log(jnp.maximum(u, 1e-20)), 1e-20))


def sample_tokens(
    logits_fn: LogitsFn,
    class_ids: jax.Array,
    rng: jax.Array,
    *,
    num_tokens: int,
    codebook_size: int,
    null_class: int,
    num_steps: int = 8,
    guidance_scale: float = 0.0,
    guidance_schedule: str = "constant",
    guidance_power: float = 3.0,
    randomize_temperature: float = 1.0,
    softmax_temperature_annealing: bool = False,
    prefix_length: int | None = None,
) -> jax.Array:
    """Class-conditional MaskGIT decoding: class_ids (B,) -> token ids (B, num_tokens), all unmasked.

    Traceable (a `lax.fori_loop`, no host round trips): jit it with `logits_fn`
    and the keyword arguments static; with the batch sharded the whole loop is.
    Guided steps run cond and uncond (class `null_class`) as one doubled batch.
    `prefix_length` = k < num_tokens decodes only the first k positions -> (B, k): the rest stay [MASK],
    are never sampled or re-masked, and the mask schedule counts k tokens (`logits_fn` must hide them
    from attention: a generator trained on prefixes, given lengths = k).
    """
    weights = guidance_weights(num_steps, guidance_scale, guidance_schedule, guidance_power)
    guided = bool(np.any(weights != 0))
    weights = jnp.asarray(weights)
    mask_id = codebook_size
    batch = class_ids.shape[0]
    null = jnp.full_like(class_ids, null_class)

    def logits_at(step, ids):
        if not guided:
            return logits_fn(ids, class_ids).astype(jnp.float32)
        both = logits_fn(jnp.concatenate([ids, ids]), jnp.concatenate([class_ids, null])).astype(jnp.float32)
        cond, uncond = both[:batch], both[batch:]
        return cond + weights[step] * (cond - uncond)

    prefix = prefix_length is not None and prefix_length != num_tokens
    decoded = prefix_length if prefix else num_tokens
    in_prefix = jnp.arange(num_tokens)[None] < decoded

    def body(step, carry):
        ids, key = carry
        key, sample_key, confidence_key = jax.random.split(key, 3)
        ratio = (step + 1.0) / num_steps
        temperature = randomize_temperature * (1.0 - ratio)
        is_mask = ids == mask_id
        if prefix:  # the tail stays [MASK] but counts as fixed: never sampled, never a re-mask candidate
            is_mask = is_mask & in_prefix
        logits = logits_at(step, ids)
        if softmax_temperature_annealing:
            logits = logits / (0.5 + 0.8 * (1.0 - ratio))
        sampled = jnp.argmax(logits + temperature * _gumbel(sample_key, logits.shape), axis=-1).astype(ids.dtype)
        sampled_logits = jnp.take_along_axis(logits, sampled[..., None], axis=-1)[..., 0]
        sampled = jnp.where(is_mask, sampled, ids)
        sampled_logits = jnp.where(is_mask, sampled_logits, jnp.inf)
        remask = num_to_remask(step, num_steps, decoded, jnp.sum(is_mask, axis=-1, keepdims=True))
        confidence = sampled_logits + temperature * _gumbel(confidence_key, sampled_logits.shape)
        cut_off = jnp.take_along_axis(jnp.sort(confidence, axis=-1), remask - 1, axis=-1)
        remasked = jnp.where(confidence <= cut_off, mask_id, sampled)
        return jnp.where(step == num_steps - 1, sampled, remasked), key

    ids = jnp.full((batch, num_tokens), mask_id, jnp.int32)
    ids, _ = jax.lax.fori_loop(0, num_steps, body, (ids, rng))
    return ids[:, :decoded] if prefix else ids


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The sampler's knobs (config.sampling); hashable, so a jitted sampler can take it static."""

    num_steps: int = 8
    guidance_scale: float = 0.0
    guidance_schedule: str = "constant"
    guidance_power: float = 3.0
    randomize_temperature: float = 1.0
    softmax_temperature_annealing: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SamplingSettings:
        fields = dict(config)
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(valid))
        if unknown:
            raise ValueError(f"Unknown sampling field(s) {unknown}; valid: {', '.join(valid)}.")
        settings = cls(**fields)
        if settings.num_steps < 1:
            raise ValueError(f"sampling.num_steps must be >= 1, got {settings.num_steps}.")
        guidance_weights(settings.num_steps, settings.guidance_scale, settings.guidance_schedule)  # validates
        return settings

    def sample(self, logits_fn: LogitsFn, class_ids: jax.Array, rng: jax.Array, **model_sizes: int | None) -> jax.Array:
        """`sample_tokens` with these settings; model_sizes: num_tokens, codebook_size, null_class (and
        prefix_length)."""
        return sample_tokens(logits_fn, class_ids, rng, **model_sizes, **dataclasses.asdict(self))
