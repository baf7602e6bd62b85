"""The FID Inception-v3 of pytorch-fid, as a frozen NHWC Flax network.

This is `pytorch_fid.inception.fid_inception_v3()`: torchvision's Inception-v3
(num_classes=1008, no auxiliary head, no `transform_input`) with the blocks that
pytorch-fid patches to match TensorFlow's original FID graph (inception-2015-12-05):

  * Mixed_5b/5c/5d (FIDInceptionA), Mixed_6b..6e (FIDInceptionC) and Mixed_7b
    (FIDInceptionE_1): the pool branch's 3x3 average pool ignores the zero
    padding (torch `count_include_pad=False`, TF's "SAME" average pool);
  * Mixed_7c (FIDInceptionE_2): the pool branch uses a 3x3 *max* pool.

Input handling is pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`:
images are NHWC floats in [0, 1] of any size; they are bilinearly resized to
299 x 299 like torch `F.interpolate(size=(299, 299), mode="bilinear",
align_corners=False)`, which does NOT antialias when shrinking
(`jax.image.resize(method="linear", antialias=False)` samples the same
half-pixel-centred positions), then mapped to [-1, 1] with 2x - 1.

Outputs: `pool` (batch, 2048), the global average pool after Mixed_7c
(pytorch-fid's block 3, the "pool3" features FID uses), and `logits`
(batch, 1008) = fc(pool), the classifier the Inception Score uses (dropout is
off: eval mode). Everything computes in float32.

Variables mirror torch's module names: `params` holds
`Conv2d_1a_3x3/conv/kernel` (HWIO), `Conv2d_1a_3x3/bn/{scale,bias}`,
`Mixed_5b/branch1x1/conv/kernel`, ..., `fc/{kernel,bias}`; BatchNorm's running
statistics stay unfolded in a separate `batch_stats` collection
(`.../bn/{mean,var}`), used in inference mode only. Keeping them unfolded makes
the converter a one-to-one renaming of pytorch-fid's state dict.
The weights come from a file (see `titok_jax.convert.inception`) and are never trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax import sharding as sh
from titok_jax.models.layers import ONES, ZEROS, partitioned

Variables = Mapping[str, Any]
Precision = jax.lax.PrecisionLike

INCEPTION_IMAGE_SIZE = 299
NUM_CLASSES = 1008  # TF's 2015 graph: 1000 ImageNet classes + 8 unused
POOL_FEATURES = 2048
# sFID (the ADM evaluator's `mixed_6/conv`): the first 7 channels of Mixed_6d's 1x1 branch at 17 x 17, flattened
# in (height, width, channel) order as TF's NHWC tensor is: 17 * 17 * 7 = 2023 features.
SPATIAL_CHANNELS = 7
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS
BN_EPSILON = 1e-3  # torchvision's BasicConv2d

_CONV_AXES = (sh.KERNEL_HEIGHT, sh.KERNEL_WIDTH, sh.CONV_IN, sh.CONV_OUT)
# The weights always come from a file, so any sane init serves.
_KERNEL_INIT = nn.initializers.lecun_normal()
# The default precision runs float32 convs as bf16 passes on TPU and TF32 on recent GPUs; FID
# statistics are compared with ones computed in full float32, so every contraction asks for it.
HIGHEST = jax.lax.Precision.HIGHEST

Padding = int | tuple[int, int]  # torch's padding: one int, or (height, width)
Kernel = int | tuple[int, int]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


def check_images(images: jax.Array) -> None:
    """Raises a ValueError unless images are a float NHWC RGB batch."""
    if images.ndim != 4 or images.shape[-1] != 3:
        hint = (
            " The input looks channels-first; transpose it to NHWC."
            if images.ndim == 4 and images.shape[1] == 3
            else ""
        )
        raise ValueError(
            f"The FID Inception takes images of shape (batch, height, width, 3); got {images.shape}.{hint}"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"The FID Inception takes float images in [0, 1]; got dtype {images.dtype}. "
            "Convert uint8 pixels with x.astype(jnp.float32) / 255."
        )


def preprocess(images: jax.Array, size: int = INCEPTION_IMAGE_SIZE) -> jax.Array:
    """NHWC pixels in [0, 1] -> the network input: bilinear resize to size x size (no antialias), then 2x - 1."""
    batch, _, _, channels = images.shape
    resized = jax.image.resize(
        images.astype(jnp.float32), (batch, size, size, channels), method="linear", antialias=False
    )
    return 2.0 * resized - 1.0


def _conv(features: int, kernel: Kernel, stride: int, padding: Padding, precision: Precision) -> nn.Conv:
    pad_h, pad_w = _pair(padding)
    return nn.Conv(
        features,
        _pair(kernel),
        strides=(stride, stride),
        padding=((pad_h, pad_h), (pad_w, pad_w)),
        use_bias=False,  # the BatchNorm's bias replaces it
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=precision,
        kernel_init=partitioned(_KERNEL_INIT, *_CONV_AXES),
        name="conv",
    )


class BasicConv2d(nn.Module):
    """torchvision's BasicConv2d: bias-free conv -> BatchNorm (running stats, eps 1e-3) -> ReLU."""

    features: int
    kernel: Kernel
    stride: int = 1
    padding: Padding = 0
    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.features, self.kernel, self.stride, self.padding, self.precision)(x)
        x = nn.BatchNorm(
            use_running_average=True,
            epsilon=BN_EPSILON,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            scale_init=partitioned(ONES, sh.NORM),
            bias_init=partitioned(ZEROS, sh.NORM),
            name="bn",
        )(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    # TF's SAME average pool: the padded zeros are not counted (torch count_include_pad=False).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x: jax.Array) -> jax.Array:
    # flax pads max pools with -inf, as torch does, so the padding never wins.
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
    # torch MaxPool2d(3, stride=2): no padding, floor mode.
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
    """Mixed_5b/5c/5d: [1x1 (64), 1x1 -> 5x5 (64), 1x1 -> 3x3 -> 3x3 (96), avgpool -> 1x1 (pool_features)]."""

    pool_features: int
    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        branch1x1 = BasicConv2d(64, 1, precision=p, name="branch1x1")(x)
        branch5x5 = BasicConv2d(48, 1, precision=p, name="branch5x5_1")(x)
        branch5x5 = BasicConv2d(64, 5, padding=2, precision=p, name="branch5x5_2")(branch5x5)
        branch3x3dbl = BasicConv2d(64, 1, precision=p, name="branch3x3dbl_1")(x)
        branch3x3dbl = BasicConv2d(96, 3, padding=1, precision=p, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = BasicConv2d(96, 3, padding=1, precision=p, name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = BasicConv2d(self.pool_features, 1, precision=p, name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (unpatched): [3x3/2 (384), 1x1 -> 3x3 -> 3x3/2 (96), maxpool 3x3/2 (in_channels)]."""

    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        branch3x3 = BasicConv2d(384, 3, stride=2, precision=p, name="branch3x3")(x)
        branch3x3dbl = BasicConv2d(64, 1, precision=p, name="branch3x3dbl_1")(x)
        branch3x3dbl = BasicConv2d(96, 3, padding=1, precision=p, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = BasicConv2d(96, 3, stride=2, precision=p, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..6e: [1x1 (192), 1x1 -> 1x7 -> 7x1 (192), 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 (192), avgpool -> 1x1 (192)].

    Kernels are (height, width): torch's kernel_size=(1, 7) is one row of seven taps.
    """

    channels_7x7: int
    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, c7 = self.precision, self.channels_7x7
        branch1x1 = BasicConv2d(192, 1, precision=p, name="branch1x1")(x)
        branch7x7 = BasicConv2d(c7, 1, precision=p, name="branch7x7_1")(x)
        branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), precision=p, name="branch7x7_2")(branch7x7)
        branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), precision=p, name="branch7x7_3")(branch7x7)
        dbl = BasicConv2d(c7, 1, precision=p, name="branch7x7dbl_1")(x)
        dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), precision=p, name="branch7x7dbl_2")(dbl)
        dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), precision=p, name="branch7x7dbl_3")(dbl)
        dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), precision=p, name="branch7x7dbl_4")(dbl)
        dbl = BasicConv2d(192, (1, 7), padding=(0, 3), precision=p, name="branch7x7dbl_5")(dbl)
        branch_pool = BasicConv2d(192, 1, precision=p, name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (unpatched): [1x1 -> 3x3/2 (320), 1x1 -> 1x7 -> 7x1 -> 3x3/2 (192), maxpool 3x3/2 (in_channels)]."""

    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        branch3x3 = BasicConv2d(192, 1, precision=p, name="branch3x3_1")(x)
        branch3x3 = BasicConv2d(320, 3, stride=2, precision=p, name="branch3x3_2")(branch3x3)
        branch7x7x3 = BasicConv2d(192, 1, precision=p, name="branch7x7x3_1")(x)
        branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), precision=p, name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), precision=p, name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = BasicConv2d(192, 3, stride=2, precision=p, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (pool="avg", FIDInceptionE_1) and Mixed_7c (pool="max", FIDInceptionE_2).

    Branches, concatenated in this order: 1x1 (320); 1x1 -> [1x3, 3x1] (2 x 384);
    1x1 -> 3x3 -> [1x3, 3x1] (2 x 384); pool -> 1x1 (192). 2048 channels in all.
    """

    pool: str
    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool not in ("avg", "max"):
            raise ValueError(f"FIDInceptionE pool must be 'avg' or 'max'; got {self.pool!r}.")
        p = self.precision
        branch1x1 = BasicConv2d(320, 1, precision=p, name="branch1x1")(x)
        branch3x3 = BasicConv2d(384, 1, precision=p, name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), precision=p, name="branch3x3_2a")(branch3x3),
                BasicConv2d(384, (3, 1), padding=(1, 0), precision=p, name="branch3x3_2b")(branch3x3),
            ],
            axis=-1,
        )
        dbl = BasicConv2d(448, 1, precision=p, name="branch3x3dbl_1")(x)
        dbl = BasicConv2d(384, 3, padding=1, precision=p, name="branch3x3dbl_2")(dbl)
        dbl = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), precision=p, name="branch3x3dbl_3a")(dbl),
                BasicConv2d(384, (3, 1), padding=(1, 0), precision=p, name="branch3x3dbl_3b")(dbl),
            ],
            axis=-1,
        )
        pooled = _avg_pool_3x3_same(x) if self.pool == "avg" else _max_pool_3x3_same(x)
        branch_pool = BasicConv2d(192, 1, precision=p, name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-v3: NHWC images in [0, 1] -> {"pool": (B, 2048), "logits": (B, 1008),
    "spatial": (B, 2023)} (the sFID features).

    Apply with {"params": ..., "batch_stats": ...}; BatchNorm always uses the
    running statistics and nothing is mutated, so no `mutable=` is needed.
    """

    num_classes: int = NUM_CLASSES
    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        check_images(images)
        p = self.precision
        x = preprocess(images)  # (B, 299, 299, 3) in [-1, 1]
        x = BasicConv2d(32, 3, stride=2, precision=p, name="Conv2d_1a_3x3")(x)  # 149
        x = BasicConv2d(32, 3, precision=p, name="Conv2d_2a_3x3")(x)  # 147
        x = BasicConv2d(64, 3, padding=1, precision=p, name="Conv2d_2b_3x3")(x)  # 147
        x = _max_pool_3x3_stride2(x)  # 73
        x = BasicConv2d(80, 1, precision=p, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, precision=p, name="Conv2d_4a_3x3")(x)  # 71
        x = _max_pool_3x3_stride2(x)  # 35
        x = FIDInceptionA(32, p, name="Mixed_5b")(x)  # 256 channels
        x = FIDInceptionA(64, p, name="Mixed_5c")(x)  # 288
        x = FIDInceptionA(64, p, name="Mixed_5d")(x)  # 288
        x = InceptionB(p, name="Mixed_6a")(x)  # 17 x 17 x 768
        x = FIDInceptionC(128, p, name="Mixed_6b")(x)
        x = FIDInceptionC(160, p, name="Mixed_6c")(x)
        x = FIDInceptionC(160, p, name="Mixed_6d")(x)
        # The 1x1 branch leads Mixed_6d's concatenated output, so its first channels are the block's.
        spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
        x = FIDInceptionC(192, p, name="Mixed_6e")(x)
        x = InceptionD(p, name="Mixed_7a")(x)  # 8 x 8 x 1280
        x = FIDInceptionE("avg", p, name="Mixed_7b")(x)  # 2048
        x = FIDInceptionE("max", p, name="Mixed_7c")(x)  # 2048
        pool = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1): FID's pool3 features
        logits = nn.Dense(
            self.num_classes,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            precision=p,
            kernel_init=partitioned(_KERNEL_INIT, sh.CONV_IN, sh.CLASSES),
            bias_init=partitioned(ZEROS, sh.CLASSES),
            name="fc",
        )(pool)
        return {"pool": pool, "logits": logits, "spatial": spatial}


def inception_features(
    variables: Variables, images: jax.Array, precision: Precision = HIGHEST
) -> tuple[jax.Array, jax.Array]:
    """(pool (B, 2048), logits (B, 1008)) of NHWC images in [0, 1] of any size.

    `variables` is {"params": ..., "batch_stats": ...} as `load_inception_params`
    returns it. Pure and shape-static, so it can be jitted (or pjitted with the
    variables replicated); gradients never flow into the frozen weights.
    """
    outputs = all_features(variables, images, precision)
    return outputs["pool"], outputs["logits"]


def all_features(variables: Variables, images: jax.Array, precision: Precision = HIGHEST) -> dict[str, jax.Array]:
    """{"pool" (B, 2048), "logits" (B, 1008), "spatial" (B, 2023)}: every feature the ADM suite reads."""
    variables = jax.lax.stop_gradient({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    return FIDInceptionV3(precision=precision).apply(variables, images)
