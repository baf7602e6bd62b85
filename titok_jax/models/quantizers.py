"""Quantizers of the TiTok latent tokens, computed in float32.

Latents are channels-last, (batch, num_latent_tokens, token_size): the official
(B, token_size, 1, K) tensor moved to channels-last with the singleton dropped.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax import sharding as sh
from titok_jax.models.layers import partitioned

# Distances decide which code is picked: keep full fp32 matmuls on TPU too.
_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def symmetric_uniform(limit: float) -> nn.initializers.Initializer:
    """U(-limit, limit): the official codebook init with limit = 1 / codebook_size."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)

    return init


class VectorQuantizer(nn.Module):
    """Nearest-neighbour VQ with straight-through gradients.

    With `use_l2_norm`, latents and codebook rows are l2-normalised before the
    squared-distance argmin, the looked-up entry is normalised again, and the
    losses and the straight-through output use the normalised latents.
    """

    codebook_size: int
    token_size: int
    commitment_cost: float = 0.25
    use_l2_norm: bool = False
    # Official "clustering VQ": also report, per code, the batch frequency and the
    # nearest latent, from which `clustering_update` revives unused codes.
    clustering_vq: bool = False

    def setup(self):
        self.codebook = self.param(
            "codebook",
            partitioned(symmetric_uniform(1.0 / self.codebook_size), sh.CODEBOOK, sh.TOKEN),
            (self.codebook_size, self.token_size),
            jnp.float32,
        )

    def codebook_entries(self, indices: jax.Array) -> jax.Array:
        """Code vectors for integer indices of any shape -> indices.shape + (token_size,)."""
        codebook = self.codebook
        if self.use_l2_norm:
            codebook = l2_normalize(codebook)
        return jnp.take(codebook, indices, axis=0)

    def __call__(self, latents: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        if latents.shape[-1] != self.token_size:
            raise ValueError(f"Quantizer expects latents (..., {self.token_size}), got {latents.shape}.")
        latents = latents.astype(jnp.float32)
        flat = flat_unnormed = latents.reshape(-1, self.token_size)
        codebook = self.codebook
        if self.use_l2_norm:
            flat = l2_normalize(flat)
            codebook = l2_normalize(codebook)
        distances = (
            jnp.sum(jnp.square(flat), axis=1, keepdims=True)
            + jnp.sum(jnp.square(codebook), axis=1)[None, :]
            - 2.0 * jnp.matmul(flat, codebook.T, precision=_HIGHEST)
        )
        indices = jnp.argmin(distances, axis=1).reshape(latents.shape[:-1])
        quantized = self.codebook_entries(indices)
        if self.use_l2_norm:
            latents = l2_normalize(latents)
        commitment_loss = self.commitment_cost * jnp.mean(jnp.square(jax.lax.stop_gradient(quantized) - latents))
        codebook_loss = jnp.mean(jnp.square(quantized - jax.lax.stop_gradient(latents)))
        quantized = latents + jax.lax.stop_gradient(quantized - latents)
        info = {
            "quantizer_loss": commitment_loss + codebook_loss,
            "commitment_loss": commitment_loss,
            "codebook_loss": codebook_loss,
            "indices": indices,
        }
        if self.clustering_vq:
            unnormed = jax.lax.stop_gradient(flat_unnormed)
            info["code_frequencies"] = jnp.mean(jax.nn.one_hot(indices.reshape(-1), self.codebook_size), axis=0)
            info["nearest_latents"] = unnormed[jnp.argmin(jax.lax.stop_gradient(distances), axis=0)]
        return quantized, info


class DiagonalGaussian(nn.Module):
    """VAE posterior: moments (..., 2*token_size) split as [mean | logvar].

    logvar is clamped to [-30, 20]. With `sample=True` a reparameterised draw
    from the 'noise' rng stream, else the mean (the mode). `kl` is summed over
    tokens and channels per example; the loss averages it over the batch.
    """

    token_size: int

    def __call__(self, moments: jax.Array, sample: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
        if moments.shape[-1] != 2 * self.token_size:
            raise ValueError(f"VAE posterior expects moments (..., {2 * self.token_size}), got {moments.shape}.")
        moments = moments.astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        logvar = jnp.clip(logvar, -30.0, 20.0)
        std = jnp.exp(0.5 * logvar)
        if sample:
            latents = mean + std * jax.random.normal(self.make_rng("noise"), mean.shape, jnp.float32)
        else:
            latents = mean
        kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=tuple(range(1, mean.ndim)))
        return latents, {"mean": mean, "logvar": logvar, "kl": kl}


def clustering_update(
    codebook: jax.Array,
    usage_ema: jax.Array,
    code_frequencies: jax.Array,
    nearest_latents: jax.Array,
    decay: float = 0.99,
) -> tuple[jax.Array, jax.Array]:
    """Official clustering VQ: pull rarely used codes onto their nearest latent of the batch.

    usage_ema <- decay * usage_ema + (1 - decay) * frequencies; each code moves
    towards its nearest (un-normalised) latent by exp(-usage_ema * N * 10 / (1 - decay) - 1e-3),
    i.e. almost fully for dead codes and not at all for used ones. Returns (codebook, usage_ema).
    """
    usage_ema = usage_ema * decay + code_frequencies * (1.0 - decay)
    num_codes = codebook.shape[0]
    mix = jnp.exp(-(usage_ema * num_codes * 10.0) / (1.0 - decay) - 1e-3)[:, None]
    return codebook * (1.0 - mix) + nearest_latents * mix, usage_ema
