"""The MaskGIT VQGAN: frozen proxy-code teacher of TiTok stage 1 and its pixel decoder.

Parameter tree and numerics follow google-research/maskgit's linen VQVAE
(`maskgit.nets.vqgan_tokenizer`, ImageNet config) so that its published
checkpoint restores straight into these modules:
{encoder, quantizer, decoder} with the layer names Conv_i, ResBlock_i and
GroupNorm_i in that code's creation order. Pixels are NHWC in [0, 1].

Quirk kept on purpose: when a residual block changes the channel count, the
1x1 shortcut conv is applied to the block's *output*, not to its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax import sharding as sh
from titok_jax.models.layers import ONES, ZEROS, partitioned

Dtype = Any

# The MaskGIT VQGAN of the official recipes (ImageNet 256, f16, 1024 x 256 codes).
MASKGIT_VQGAN = dict(
    filters=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, embedding_dim=256, codebook_size=1024
)
# The fields that build a VQGAN (a teacher config carries these and more).
VQGAN_FIELDS = ("filters", "channel_multipliers", "num_res_blocks", "embedding_dim", "codebook_size")
_HIGHEST = jax.lax.Precision.HIGHEST


def _conv(features: int, kernel: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        padding="SAME",
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(
            nn.initializers.lecun_normal(), sh.KERNEL_HEIGHT, sh.KERNEL_WIDTH, sh.CONV_IN, sh.CONV_OUT
        ),
        bias_init=partitioned(ZEROS, sh.CONV_OUT),
        name=name,
    )


def _group_norm(name: str, dtype: Dtype) -> nn.GroupNorm:
    # 32 groups, eps 1e-6: flax's defaults, which the official model uses.
    return nn.GroupNorm(
        num_groups=32,
        epsilon=1e-6,
        dtype=dtype,
        scale_init=partitioned(ONES, sh.NORM),
        bias_init=partitioned(ZEROS, sh.NORM),
        name=name,
    )


def _downsample(x: jax.Array) -> jax.Array:
    """2x2 average pool with TF 'SAME' semantics (padding cells not counted)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)


def _upsample(x: jax.Array) -> jax.Array:
    """2x nearest-neighbour upsampling."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
    filters: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        input_channels = x.shape[-1]
        residual = x
        x = _conv(self.filters, 3, "Conv_0", self.dtype, use_bias=False)(
            nn.swish(_group_norm("GroupNorm_0", self.dtype)(x))
        )
        x = _conv(self.filters, 3, "Conv_1", self.dtype, use_bias=False)(
            nn.swish(_group_norm("GroupNorm_1", self.dtype)(x))
        )
        if input_channels != self.filters:
            # Official quirk: the shortcut reads the block output.
            residual = _conv(self.filters, 1, "Conv_2", self.dtype, use_bias=False)(x)
        return x + residual


class VQGANEncoder(nn.Module):
    """Pixels (B, H, W, 3) in [0, 1] -> features (B, H/f, W/f, embedding_dim), f = 2**(levels-1)."""

    filters: int = 128
    channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    embedding_dim: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.filters, 3, "Conv_0", self.dtype, use_bias=False)(x)
        block = 0
        levels = len(self.channel_multipliers)
        for level, multiplier in enumerate(self.channel_multipliers):
            for _ in range(self.num_res_blocks):
                x = ResBlock(self.filters * multiplier, self.dtype, name=f"ResBlock_{block}")(x)
                block += 1
            if level < levels - 1:
                x = _downsample(x)
        for _ in range(self.num_res_blocks):
            x = ResBlock(x.shape[-1], self.dtype, name=f"ResBlock_{block}")(x)
            block += 1
        x = nn.swish(_group_norm("GroupNorm_0", self.dtype)(x))
        return _conv(self.embedding_dim, 1, "Conv_1", self.dtype)(x)


class VQGANDecoder(nn.Module):
    """Features (B, h, w, embedding_dim) -> pixels (B, h*f, w*f, output_channels)."""

    filters: int = 128
    channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    output_channels: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = 0
        block = 0

        def next_conv(features: int, kernel: int) -> nn.Conv:
            nonlocal conv
            layer = _conv(features, kernel, f"Conv_{conv}", self.dtype)
            conv += 1
            return layer

        def next_block(features: int) -> ResBlock:
            nonlocal block
            layer = ResBlock(features, self.dtype, name=f"ResBlock_{block}")
            block += 1
            return layer

        x = next_conv(self.filters * self.channel_multipliers[-1], 3)(x)
        for _ in range(self.num_res_blocks):
            x = next_block(x.shape[-1])(x)
        for level in reversed(range(len(self.channel_multipliers))):
            features = self.filters * self.channel_multipliers[level]
            for _ in range(self.num_res_blocks):
                x = next_block(features)(x)
            if level > 0:
                x = next_conv(features, 3)(_upsample(x))
        x = nn.swish(_group_norm("GroupNorm_0", self.dtype)(x))
        return next_conv(self.output_channels, 3)(x)


class VQGANQuantizer(nn.Module):
    """Plain nearest-neighbour codebook (no l2 norm), param `codebook` (codebook_size, dim)."""

    codebook_size: int = 1024
    embedding_dim: int = 256

    def setup(self):
        self.codebook = self.param(
            "codebook",
            partitioned(nn.initializers.variance_scaling(1.0, "fan_in", "uniform"), sh.CODEBOOK, sh.TOKEN),
            (self.codebook_size, self.embedding_dim),
            jnp.float32,
        )

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns (quantized features, integer code indices of shape features.shape[:-1])."""
        flat = features.astype(jnp.float32).reshape(-1, self.embedding_dim)
        distances = (
            jnp.sum(jnp.square(flat), axis=1, keepdims=True)
            - 2.0 * jnp.matmul(flat, self.codebook.T, precision=_HIGHEST)
            + jnp.sum(jnp.square(self.codebook), axis=1)[None, :]
        )
        indices = jnp.argmin(distances, axis=-1).reshape(features.shape[:-1])
        return self.decode_ids(indices), indices

    def decode_ids(self, indices: jax.Array) -> jax.Array:
        return jnp.take(self.codebook, indices, axis=0)


class VQGAN(nn.Module):
    """The MaskGIT VQGAN tokenizer: {encoder, quantizer, decoder}.

    Defaults are the ImageNet 256 config (f16, 1024 codes of 256 dims).
    """

    filters: int = 128
    channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    embedding_dim: int = 256
    codebook_size: int = 1024
    dtype: Dtype = jnp.float32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    def setup(self):
        self.encoder = VQGANEncoder(
            self.filters, tuple(self.channel_multipliers), self.num_res_blocks, self.embedding_dim, self.dtype
        )
        self.quantizer = VQGANQuantizer(self.codebook_size, self.embedding_dim)
        self.decoder = VQGANDecoder(self.filters, tuple(self.channel_multipliers), self.num_res_blocks, 3, self.dtype)

    def encode(self, images: jax.Array) -> jax.Array:
        """Pixels (B, H, W, 3) in [0, 1] -> code indices (B, H/f, W/f)."""
        _, indices = self.quantizer(self.encoder(images))
        return indices

    def decode_codes(self, indices: jax.Array) -> jax.Array:
        """Code indices (B, h, w) -> pixels (B, h*f, w*f, 3) (not clamped)."""
        return self.decoder(self.quantizer.decode_ids(indices))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reconstruction and codes: runs every submodule (used for init)."""
        indices = self.encode(images)
        return self.decode_codes(indices), indices
