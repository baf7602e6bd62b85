"""The GAN discriminator of the TiTok stage-2 and single-stage recipes.

Mirrors the official `NLayerDiscriminator` (bytedance/1d-tokenizer,
modeling/modules/discriminator.py) in NHWC: same parameters, same numerics.

  conv5 C->H, lrelu(0.1)
  num_stages x [conv3 -> blur downsample x2 -> GroupNorm(32, eps 1e-5) -> lrelu(0.1)], channels H * (1, 2, 4, ...)
  adaptive max pool to 16 x 16
  conv1 -> lrelu(0.1) -> conv5 -> 1 logit per cell
Every conv has a bias and 'same' padding (odd kernels: symmetric). Pixels in [0, 1].
With the defaults (C=3, H=128, 3 stages) it has 1,909,889 parameters.

Spatial sizes: the stages divide the side by 8 (ceil at odd sizes), then the
adaptive pool maps any side onto 16 cells, as torch's AdaptiveMaxPool2d:
a 2x2 max pool at 256 px, the identity at 128 px, and a replication of cells
below 128 px (any input of at least 1 px works; 64 px is fine for tests).

Parameter layout (torch state dict key -> our params path; conv OIHW -> HWIO):
  block_in.0.{weight,bias}     -> conv_in.{kernel,bias}
  blocks.{i}.0.{weight,bias}   -> stage_{i}.conv.{kernel,bias}
  blocks.{i}.1.kernel          -> (buffer: the fixed blur filter, no param)
  blocks.{i}.2.{weight,bias}   -> stage_{i}.norm.{scale,bias}
  to_logits.0.{weight,bias}    -> head_hidden.{kernel,bias}
  to_logits.2.{weight,bias}    -> head_out.{kernel,bias}
`tests/references/discriminator_convert.py` implements this map (the parity test's reference).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from titok_jax import sharding as sh
from titok_jax.models.layers import ONES, ZEROS, partitioned

Dtype = Any

NEGATIVE_SLOPE = 0.1
# Binomial blur filters by length, as the official BLUR_KERNEL_MAP.
BLUR_TAPS = {3: (1, 2, 1), 4: (1, 3, 3, 1), 5: (1, 4, 6, 4, 1)}
# The official blur pads as for a 4-tap, stride-2 filter whatever the filter length.
_BLUR_PAD_KERNEL = 4


def _torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's Conv2d bias init (the official D keeps torch defaults)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


# torch's kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance 1 / (3 fan_in).
_TORCH_DEFAULT_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(features: int, kernel: int, in_features: int, name: str, dtype: Dtype) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        padding="SAME",  # odd kernels, stride 1: the same split as the official Conv2dSame
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(_TORCH_DEFAULT_KERNEL_INIT, sh.KERNEL_HEIGHT, sh.KERNEL_WIDTH, sh.CONV_IN, sh.CONV_OUT),
        bias_init=partitioned(_torch_default_bias_init(kernel * kernel * in_features), sh.CONV_OUT),
        name=name,
    )


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF-style 'same' padding (extra cell at the end), as the official Conv2dSame / BlurBlock."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def blur_downsample(x: jax.Array, taps: tuple[int, ...] = BLUR_TAPS[4]) -> jax.Array:
    """Depthwise binomial blur with stride 2 (NHWC): the official BlurBlock.

    The filter is outer(taps, taps) / sum; zero padding is 'same' for a 4-tap
    filter (1 each side at even sizes, 1 before and 2 after at odd sizes), so
    each side becomes ceil(side / 2).
    """
    taps_1d = np.asarray(taps, np.float32)
    kernel = np.outer(taps_1d, taps_1d)
    kernel /= kernel.sum()
    channels = x.shape[-1]
    kernel = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, channels)), x.dtype)  # HWIO, I = 1
    padding = [_same_pad(x.shape[axis], _BLUR_PAD_KERNEL, 2) for axis in (1, 2)]
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(2, 2),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def _adaptive_max_pool_axis(x: jax.Array, axis: int, output_size: int) -> jax.Array:
    size = x.shape[axis]
    if size % output_size == 0:  # equal, disjoint bins: a plain reshape-max
        k = size // output_size
        return jnp.max(x.reshape(*x.shape[:axis], output_size, k, *x.shape[axis + 1 :]), axis=axis + 1)
    # torch's bins: [floor(i * size / out), ceil((i + 1) * size / out)); they overlap or repeat.
    bins = [((i * size) // output_size, -(-((i + 1) * size) // output_size)) for i in range(output_size)]
    return jnp.stack(
        [jnp.max(jax.lax.slice_in_dim(x, start, end, axis=axis), axis=axis) for start, end in bins], axis=axis
    )


def adaptive_max_pool(x: jax.Array, output_size: int) -> jax.Array:
    """torch.nn.AdaptiveMaxPool2d((output_size, output_size)) on NHWC; bins are separable per axis."""
    return _adaptive_max_pool_axis(_adaptive_max_pool_axis(x, 1, output_size), 2, output_size)


class DiscriminatorStage(nn.Module):
    """conv3 -> blur downsample x2 -> GroupNorm(32) -> leaky relu."""

    features: int
    blur_kernel_size: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.features, 3, x.shape[-1], "conv", self.dtype)(x)
        x = blur_downsample(x, BLUR_TAPS[self.blur_kernel_size])
        # torch GroupNorm defaults: eps 1e-5 (not flax's 1e-6), two-pass variance.
        x = nn.GroupNorm(
            num_groups=32,
            epsilon=1e-5,
            dtype=self.dtype,
            use_fast_variance=False,
            scale_init=partitioned(ONES, sh.NORM),
            bias_init=partitioned(ZEROS, sh.NORM),
            name="norm",
        )(x)
        x = nn.leaky_relu(x, NEGATIVE_SLOPE)
        return nn.with_logical_constraint(x, (sh.BATCH, sh.IMAGE_HEIGHT, sh.IMAGE_WIDTH, sh.CHANNELS))


class NLayerDiscriminator(nn.Module):
    """Images (B, H, W, C) in [0, 1] -> patch logits (B, 16, 16, 1), float32."""

    hidden_channels: int = 128
    num_stages: int = 3
    blur_kernel_size: int = 4
    pooled_size: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(
                f"NLayerDiscriminator expects images (batch, height, width, channels), got {images.shape}."
            )
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be at least 1, got {self.num_stages}.")
        if self.blur_kernel_size not in BLUR_TAPS:
            raise ValueError(f"blur_kernel_size must be one of {sorted(BLUR_TAPS)}, got {self.blur_kernel_size}.")
        x = images.astype(self.dtype)
        x = nn.leaky_relu(_conv(self.hidden_channels, 5, x.shape[-1], "conv_in", self.dtype)(x), NEGATIVE_SLOPE)
        x = nn.with_logical_constraint(x, (sh.BATCH, sh.IMAGE_HEIGHT, sh.IMAGE_WIDTH, sh.CHANNELS))
        for i in range(self.num_stages):
            x = DiscriminatorStage(self.hidden_channels * 2**i, self.blur_kernel_size, self.dtype, name=f"stage_{i}")(x)
        x = adaptive_max_pool(x, self.pooled_size)
        features = x.shape[-1]
        x = nn.leaky_relu(_conv(features, 1, features, "head_hidden", self.dtype)(x), NEGATIVE_SLOPE)
        logits = _conv(1, 5, features, "head_out", self.dtype)(x)
        return logits.astype(jnp.float32)  # losses run in float32
