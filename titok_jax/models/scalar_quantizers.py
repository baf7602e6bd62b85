"""Lookup-free quantizers of the TiTok latent tokens: FSQ, LFQ and BSQ, computed in float32.

No codebook parameters: the code of a token id is computed. Each returns (codes, info) like VectorQuantizer:
codes carry straight-through gradients, info holds `indices` (int32) and the loss terms the recipe weighs.
Facts (levels, bit order, entropy forms) follow ../shared/spec/next-wave.md sections 2-3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Mentzer et al. (2023), Table 1: the recommended levels for about 2**bits codes (products 240 ... 64,000).
FSQ_PRESETS: dict[int, tuple[int, ...]] = {
    8: (8, 6, 5),
    10: (8, 5, 5, 5),
    12: (7, 5, 5, 5, 5),
    14: (8, 8, 8, 6, 5),
    16: (8, 8, 8, 5, 5, 5),
}
FSQ_EPS = 1e-3
# MaskBit clamps probabilities before the log.
ENTROPY_EPS = 1e-5


def _zero() -> jax.Array:
    return jnp.zeros((), jnp.float32)


def _straight_through(x: jax.Array, rounded: jax.Array) -> jax.Array:
    """Forward: `rounded`; gradient: the identity to x."""
    return x + jax.lax.stop_gradient(rounded - x)


def _check_channels(latents: jax.Array, channels: int, name: str) -> None:
    if latents.shape[-1] != channels:
        raise ValueError(f"{name} expects latents (..., {channels}), got {latents.shape}.")


# ---- FSQ ------------------------------------------------------------------------------------------------
def fsq_bound(z: jax.Array, levels: Sequence[int]) -> jax.Array:
    """tanh(z + shift) * half_l - offset per channel: values in an interval holding exactly L integers."""
    levels_f = jnp.asarray(levels, jnp.float32)
    half_l = (levels_f - 1.0) * (1.0 + FSQ_EPS) / 2.0
    offset = jnp.where(jnp.asarray(levels) % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half_l)
    return jnp.tanh(z + shift) * half_l - offset


def _half_widths(levels: Sequence[int]) -> jax.Array:
    return jnp.asarray([level // 2 for level in levels], jnp.float32)


def _fsq_basis(levels: Sequence[int]) -> np.ndarray:
    """Mixed-radix place values, channel 0 least significant."""
    return np.cumprod([1, *levels[:-1]]).astype(np.int64)


def fsq_codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Codes in [-1, 1] (..., d) -> int32 ids: digit_i = code_i * hw_i + hw_i, id = sum digit_i * basis_i."""
    half = _half_widths(levels)
    digits = jnp.round(codes * half + half).astype(jnp.int32)
    return jnp.sum(digits * jnp.asarray(_fsq_basis(levels), jnp.int32), axis=-1).astype(jnp.int32)


def fsq_indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """int ids (...) -> codes (..., d): digit_i = (id // basis_i) mod L_i, code = (digit - hw) / hw."""
    basis = jnp.asarray(_fsq_basis(levels), jnp.int32)
    digits = (indices[..., None].astype(jnp.int32) // basis) % jnp.asarray(levels, jnp.int32)
    half = _half_widths(levels)
    return (digits.astype(jnp.float32) - half) / half


class FSQ(nn.Module):
    """Finite scalar quantization: each channel bounded and rounded to one of L_i levels, scaled to [-1, 1]."""

    levels: tuple[int, ...]

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    @property
    def token_size(self) -> int:
        return len(self.levels)

    def __call__(self, latents: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        if min(self.levels) < 2:  # a 1-level channel has half width 0: its code would divide by zero
            raise ValueError(f"FSQ needs at least 2 levels per channel, got {self.levels}.")
        _check_channels(latents, self.token_size, "FSQ")
        bounded = fsq_bound(latents.astype(jnp.float32), self.levels)
        codes = _straight_through(bounded, jnp.round(bounded)) / _half_widths(self.levels)
        indices = fsq_codes_to_indices(jax.lax.stop_gradient(codes), self.levels)
        return codes, {
            "indices": indices,
            "quantizer_loss": _zero(),
            "commitment_loss": _zero(),
            "codebook_loss": _zero(),
        }

    def codebook_entries(self, indices: jax.Array) -> jax.Array:
        return fsq_indices_to_codes(indices, self.levels)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        return fsq_codes_to_indices(codes, self.levels)


# ---- LFQ / BSQ bits ---------------------------------------------------------------------------------------
def bits_to_indices(bits: jax.Array, big_endian: bool = False) -> jax.Array:
    """Booleans (..., K) -> int32 ids; little-endian: bit i weighs 2**i (LFQ); big-endian: bit 0 is the most
    significant (BSQ)."""
    k = bits.shape[-1]
    weights = 2 ** (np.arange(k)[::-1] if big_endian else np.arange(k))
    return jnp.sum(bits.astype(jnp.int32) * jnp.asarray(weights, jnp.int32), axis=-1).astype(jnp.int32)


def indices_to_bits(indices: jax.Array, num_bits: int, big_endian: bool = False) -> jax.Array:
    """int ids (...) -> booleans (..., K), the inverse of bits_to_indices."""
    shifts = np.arange(num_bits)[::-1] if big_endian else np.arange(num_bits)
    return ((indices[..., None].astype(jnp.int32) >> jnp.asarray(shifts, jnp.int32)) & 1).astype(bool)


def all_sign_codes(num_bits: int) -> jax.Array:
    """Every code of {-1, +1}**K, row r = the code of id r (little-endian), (2**K, K) float32."""
    return jnp.where(indices_to_bits(jnp.arange(2**num_bits), num_bits), 1.0, -1.0).astype(jnp.float32)


def _entropy(probabilities: jax.Array, axis: int = -1) -> jax.Array:
    return -jnp.sum(probabilities * jnp.log(jnp.maximum(probabilities, ENTROPY_EPS)), axis=axis)


def lfq_entropy_terms(latents: jax.Array, temperature: float, chunk_bits: int = 0) -> tuple[jax.Array, jax.Array]:
    """(mean per-token entropy, entropy of the mean distribution), in nats, of p = softmax(2<z, c> / T) over
    all 2**K codes c (google-research/magvit's entropy_loss; 2<z, c> = -||z - c||^2 + const since ||c||^2 = K).

    chunk_bits = b in (0, K): the same sums taken over 2**(K - b) chunks of 2**b codes in a rematerialised scan,
    so memory holds (tokens, 2**b) instead of (tokens, 2**K). It is exact, not an approximation: the softmax's
    normaliser factorises over bits, log sum_c exp(<s, c>) = sum_i log(e^{s_i} + e^{-s_i}) with s = 2z / T, and
    both entropies are sums over codes (the eps clamp is per code)."""
    flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
    k = flat.shape[-1]
    if chunk_bits <= 0 or chunk_bits >= k:
        logits = 2.0 * jnp.matmul(flat, all_sign_codes(k).T, precision=jax.lax.Precision.HIGHEST)
        probabilities = jax.nn.softmax(logits / temperature, axis=-1)
        return jnp.mean(_entropy(probabilities)), _entropy(jnp.mean(probabilities, axis=0))

    scaled = 2.0 * flat / temperature  # logit of code c = <scaled, c>
    log_normaliser = jnp.sum(jnp.logaddexp(scaled, -scaled), axis=-1, keepdims=True)  # (N, 1)
    # Low bits vary inside a chunk, high bits name the chunk (the code order does not change either sum).
    low_logits = jnp.matmul(
        scaled[:, :chunk_bits], all_sign_codes(chunk_bits).T, precision=jax.lax.Precision.HIGHEST
    )  # (N, 2**b)
    high_bits = k - chunk_bits

    @jax.checkpoint  # recompute each chunk's (N, 2**b) probabilities in the backward pass instead of storing them
    def body(totals, chunk):
        high_code = jnp.where(indices_to_bits(chunk, high_bits), 1.0, -1.0)
        high_logit = jnp.matmul(scaled[:, chunk_bits:], high_code, precision=jax.lax.Precision.HIGHEST)
        probabilities = jnp.exp(low_logits + high_logit[:, None] - log_normaliser)
        sample_sum, codebook = totals
        sample_sum = sample_sum + jnp.sum(_entropy(probabilities))
        codebook = codebook + _entropy(jnp.mean(probabilities, axis=0))
        return (sample_sum, codebook), None

    (sample_sum, codebook), _ = jax.lax.scan(body, (_zero(), _zero()), jnp.arange(2**high_bits, dtype=jnp.int32))
    return sample_sum / flat.shape[0], codebook


def _entropy_info(sample: jax.Array, codebook: jax.Array, loss: jax.Array) -> dict[str, jax.Array]:
    return {"entropy_loss": loss, "per_sample_entropy": sample, "codebook_entropy": codebook}


class LFQ(nn.Module):
    """Lookup-free quantization: each channel's sign, codes in {-1, +1}**K, ids little-endian."""

    num_bits: int
    commitment_cost: float = 0.25
    temperature: float = 0.01
    sample_weight: float = 1.0
    batch_weight: float = 1.0  # MaskBit's entropy_gamma
    # 0: one softmax over all 2**K codes (K <= 16); b > 0: the same entropies in chunks of 2**b codes.
    entropy_chunk_bits: int = 0

    @property
    def codebook_size(self) -> int:
        return 2**self.num_bits

    @property
    def token_size(self) -> int:
        return self.num_bits

    def __call__(self, latents: jax.Array, train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
        """latents (..., K) -> (codes in {-1, +1} (..., K), info). info: int32 `indices` (...), float32
        scalars `quantizer_loss` = `commitment_loss`, `codebook_loss` (0), and the unweighted entropy terms
        `entropy_loss` = sample_weight * `per_sample_entropy` - batch_weight * `codebook_entropy` (nats; zeros
        when not training). The entropy is not in quantizer_loss: the recipe weighs it by a step schedule."""
        _check_channels(latents, self.num_bits, "LFQ")
        if self.num_bits > 30:  # int32 ids
            raise ValueError(f"LFQ ids are int32: num_bits <= 30, got {self.num_bits}.")
        if train and self.num_bits > 16 and not 0 < self.entropy_chunk_bits <= 16:
            raise ValueError(
                f"LFQ's entropy takes a softmax over all 2**{self.num_bits} codes per token, too large to hold: "
                f"num_bits <= 16, or set entropy_chunk_bits in 1..16 to sum it in chunks of that many bits."
            )
        z = latents.astype(jnp.float32)
        positive = z > 0
        signs = jnp.where(positive, 1.0, -1.0)
        commitment = self.commitment_cost * jnp.mean(jnp.square(z - jax.lax.stop_gradient(signs)))
        info = {
            "indices": bits_to_indices(positive),
            "quantizer_loss": commitment,
            "commitment_loss": commitment,
            "codebook_loss": _zero(),
        }
        if train:  # only training reads the entropy; evaluation skips the softmax over all codes
            sample, codebook = lfq_entropy_terms(z, self.temperature, self.entropy_chunk_bits)
            info.update(_entropy_info(sample, codebook, self.sample_weight * sample - self.batch_weight * codebook))
        else:
            info.update(_entropy_info(_zero(), _zero(), _zero()))
        return _straight_through(z, signs), info

    def codebook_entries(self, indices: jax.Array) -> jax.Array:
        return jnp.where(indices_to_bits(indices, self.num_bits), 1.0, -1.0).astype(jnp.float32)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        return bits_to_indices(codes > 0)


def bsq_entropy_terms(unit: jax.Array, group_size: int, inv_temperature: float) -> tuple[jax.Array, jax.Array]:
    """BSQ-ViT's soft entropies (nats) of unit-norm latents u (..., K):
    - per token, analytically: per bit p = sigmoid(-4 u_i / sqrt(K) * inv_T), sum of binary entropies, averaged;
    - codebook: split the bits into groups of g; in each group p = softmax over its 2**g sub-codes
      c in {-1, +1}**g / sqrt(K) of 2 <u_g, c> * inv_T; entropy of the batch-mean p, summed over groups."""
    k = unit.shape[-1]
    flat = unit.reshape(-1, k).astype(jnp.float32)
    scale = 1.0 / math.sqrt(k)
    p = jax.nn.sigmoid(-4.0 * flat * scale * inv_temperature)
    per_bit = -(p * jnp.log(jnp.maximum(p, ENTROPY_EPS)) + (1 - p) * jnp.log(jnp.maximum(1 - p, ENTROPY_EPS)))
    per_sample = jnp.mean(jnp.sum(per_bit, axis=-1))
    groups = flat.reshape(flat.shape[0], k // group_size, group_size)
    sub_codes = all_sign_codes(group_size) * scale  # (2**g, g)
    logits = 2.0 * jnp.einsum("ngd,cd->ngc", groups, sub_codes, precision=jax.lax.Precision.HIGHEST) * inv_temperature
    mean_probabilities = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)  # (groups, 2**g)
    return per_sample, jnp.sum(_entropy(mean_probabilities))


class BSQ(nn.Module):
    """Binary spherical quantization: l2-normalised latents, sign-quantised and scaled by 1/sqrt(K) (codes on the
    unit sphere), ids big-endian."""

    num_bits: int
    group_size: int  # bits per entropy group: 2**group_size sub-codes each
    commitment_cost: float = 0.0
    inv_temperature: float = 1.0
    sample_weight: float = 1.0  # BSQ-ViT's gamma0
    batch_weight: float = 1.0  # BSQ-ViT's gamma

    @property
    def codebook_size(self) -> int:
        return 2**self.num_bits

    @property
    def token_size(self) -> int:
        return self.num_bits

    def __call__(self, latents: jax.Array, train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
        """latents (..., K) -> (codes +-1/sqrt(K) (..., K), info) with the keys of LFQ; here
        `entropy_loss` = (sample_weight * H_sample - batch_weight * H_codebook) / inv_temperature, the terms as
        in `bsq_entropy_terms` (zeros when not training), and commitment = cost * mean_tokens ||q - u||^2."""
        _check_channels(latents, self.num_bits, "BSQ")
        if self.num_bits > 30:  # int32 ids
            raise ValueError(f"BSQ ids are int32: num_bits <= 30, got {self.num_bits}.")
        if not 0 < self.group_size <= 16 or self.num_bits % self.group_size:
            raise ValueError(
                f"BSQ group_size must divide num_bits and be in 1..16 (2**group_size sub-codes per group); "
                f"got group_size={self.group_size}, num_bits={self.num_bits}."
            )
        z = latents.astype(jnp.float32)
        unit = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        positive = unit > 0
        codes = jnp.where(positive, 1.0, -1.0) / math.sqrt(self.num_bits)
        commitment = self.commitment_cost * jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(codes) - unit), -1))
        info = {
            "indices": bits_to_indices(positive, big_endian=True),
            "quantizer_loss": commitment,
            "commitment_loss": commitment,
            "codebook_loss": _zero(),
        }
        if train:
            sample, codebook = bsq_entropy_terms(unit, self.group_size, self.inv_temperature)
            loss = (self.sample_weight * sample - self.batch_weight * codebook) / self.inv_temperature
            info.update(_entropy_info(sample, codebook, loss))
        else:
            info.update(_entropy_info(_zero(), _zero(), _zero()))
        return _straight_through(unit, codes), info

    def codebook_entries(self, indices: jax.Array) -> jax.Array:
        bits = indices_to_bits(indices, self.num_bits, big_endian=True)
        return jnp.where(bits, 1.0, -1.0).astype(jnp.float32) / math.sqrt(self.num_bits)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        return bits_to_indices(codes > 0, big_endian=True)
