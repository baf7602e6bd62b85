"""Frozen perceptual-loss networks: LPIPS-VGG16 and torchvision's ConvNeXt-Small.

These reproduce the official TiTok `PerceptualLoss` (bytedance/1d-tokenizer,
modeling/modules/perceptual_loss.py and lpips.py). Images are NHWC in [0, 1]
and every function computes in float32.

LPIPS: pixels are mapped to [-1, 1], then through LPIPS' scaling layer
((x - shift) / scale); the VGG16 trunk is tapped after relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3; each tap is unit-normalised over channels, the
squared difference of the two images' taps goes through a bias-free 1x1 conv
to one channel, is averaged over space, and the five layers are summed. No
resize: LPIPS sees the images at their own size.

ConvNeXt: both images are resized to 224 x 224 with antialiased bilinear
interpolation (torch `interpolate(size=224, mode="bilinear", align_corners=False,
antialias=True)`, which `jax.image.resize(method="linear", antialias=True)`
matches: half-pixel centres, triangle kernel widened by the scale when
shrinking). A non-square image is squashed to 224 x 224, as the official code
does. Then ImageNet normalisation, the classifier's 1000 logits, and the mean
squared error between the two images' logits.

The weights come from files (see `titok_jax.convert.perceptual`); the loss
functions stop gradients into them, so they are never trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax import sharding as sh
from titok_jax.models.layers import ONES, ZEROS, partitioned

Params = Mapping[str, Any]
Precision = jax.lax.PrecisionLike

# LPIPS' scaling layer, applied to pixels in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# ImageNet statistics of torchvision's classifiers, applied to pixels in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVNEXT_IMAGE_SIZE = 224

# VGG16 convolutions up to relu5_3, grouped by the pooling level each LPIPS tap closes.
VGG16_CHANNELS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
LPIPS_TAP_CHANNELS = tuple(level[-1] for level in VGG16_CHANNELS)

_CONV_AXES = (sh.KERNEL_HEIGHT, sh.KERNEL_WIDTH, sh.CONV_IN, sh.CONV_OUT)
# torchvision's default init is irrelevant here (weights always come from files), so any sane init serves.
_KERNEL_INIT = nn.initializers.lecun_normal()


def _conv(
    features: int,
    kernel: int,
    name: str,
    precision: Precision,
    stride: int = 1,
    padding: str | int = "SAME",
    groups: int = 1,
) -> nn.Conv:
    # A depthwise kernel is (k, k, 1, C): its input axis has no channels to name.
    axes = _CONV_AXES if groups == 1 else (sh.KERNEL_HEIGHT, sh.KERNEL_WIDTH, None, sh.CONV_OUT)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        feature_group_count=groups,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=precision,
        kernel_init=partitioned(_KERNEL_INIT, *axes),
        bias_init=partitioned(ZEROS, sh.CONV_OUT),
        name=name,
    )


def _dense(
    features: int, in_axis: str, out_axis: str | None, name: str, precision: Precision, use_bias: bool = True
) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=precision,
        kernel_init=partitioned(_KERNEL_INIT, in_axis, out_axis),
        bias_init=partitioned(ZEROS, out_axis),
        name=name,
    )


def _layer_norm(name: str, epsilon: float) -> nn.LayerNorm:
    # Two-pass variance (E[(x - mean)^2]), as torch computes it: deep ConvNeXt
    # activations have large means, where E[x^2] - E[x]^2 loses fp32 digits.
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=partitioned(ONES, sh.NORM),
        bias_init=partitioned(ZEROS, sh.NORM),
        name=name,
    )


def check_image_pair(images: jax.Array, targets: jax.Array) -> None:
    """Raises a ValueError unless images and targets are same-shaped float NHWC RGB batches."""
    for name, x in (("images", images), ("targets", targets)):
        if x.ndim != 4 or x.shape[-1] != 3:
            hint = " The input looks channels-first; transpose it to NHWC." if x.ndim == 4 and x.shape[1] == 3 else ""
            raise ValueError(f"Perceptual losses take {name} of shape (batch, height, width, 3); got {x.shape}.{hint}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"Perceptual losses take float {name} in [0, 1]; got dtype {x.dtype}. "
                "Convert uint8 pixels with x.astype(jnp.float32) / 255."
            )
    if images.shape != targets.shape:
        raise ValueError(f"images and targets must have the same shape; got {images.shape} and {targets.shape}.")


# ---------------------------------------------------------------------------- LPIPS


def lpips_scale(images: jax.Array) -> jax.Array:
    """Pixels in [0, 1] -> the VGG input of LPIPS: [-1, 1], then LPIPS' scaling layer."""
    shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
    scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
    return (images.astype(jnp.float32) * 2.0 - 1.0 - shift) / scale


class VGG16Features(nn.Module):
    """torchvision's VGG16 `features` up to relu5_3; returns the five LPIPS taps.

    Convs are named conv{level}_{i} (1-based, as in the VGG paper); level k's
    tap is its last ReLU, and 2x2 max pools sit between levels (floor mode).
    """

    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        taps = []
        for level, channels in enumerate(VGG16_CHANNELS, start=1):
            if level > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i, features in enumerate(channels, start=1):
                x = nn.relu(_conv(features, 3, f"conv{level}_{i}", self.precision, padding=1)(x))
            taps.append(x)
        return tuple(taps)


def unit_normalize(x: jax.Array, eps: float = 1e-10) -> jax.Array:
    """x / (||x||_channels + eps), LPIPS' `normalize_tensor`.

    An all-zero feature vector (every ReLU off) has a norm whose plain gradient
    is 0 * inf = NaN; the double `where` keeps the same value with a zero gradient.
    """
    squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    positive = squared > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    return x / (norm + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG distance between two batches of images in [0, 1]; returns (batch,).

    Params: `vgg` (VGG16Features) and `lin_0` .. `lin_4`, the bias-free 1x1
    convs (Dense kernels (channels, 1)) of LPIPS' `vgg.pth` (version 0.1).
    """

    precision: Precision = None

    @nn.compact
    def __call__(self, images: jax.Array, targets: jax.Array) -> jax.Array:
        batch = images.shape[0]
        # One trunk pass over both batches.
        taps = VGG16Features(self.precision, name="vgg")(lpips_scale(jnp.concatenate([images, targets])))
        distance = jnp.zeros((batch,), jnp.float32)
        for k, tap in enumerate(taps):
            squared_diff = jnp.square(unit_normalize(tap[:batch]) - unit_normalize(tap[batch:]))
            weighted = _dense(1, sh.CONV_IN, None, f"lin_{k}", self.precision, use_bias=False)(squared_diff)
            distance = distance + jnp.mean(weighted, axis=(1, 2, 3))
        return distance


# ---------------------------------------------------------------------------- ConvNeXt


def resize_for_convnext(images: jax.Array, size: int = CONVNEXT_IMAGE_SIZE) -> jax.Array:
    """Antialiased bilinear resize to size x size (torch `interpolate(..., antialias=True)`)."""
    batch, _, _, channels = images.shape
    return jax.image.resize(images.astype(jnp.float32), (batch, size, size, channels), method="linear", antialias=True)


def imagenet_normalize(images: jax.Array) -> jax.Array:
    """Pixels in [0, 1] -> torchvision classifier input."""
    return (images - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


class ConvNeXtBlock(nn.Module):
    """x + layer_scale * fc2(gelu(fc1(norm(dwconv7x7(x))))); stochastic depth off (eval)."""

    layer_norm_eps: float = 1e-6
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        h = _conv(dim, 7, "dwconv", self.precision, padding=3, groups=dim)(x)
        h = _layer_norm("norm", self.layer_norm_eps)(h)
        h = nn.gelu(_dense(4 * dim, sh.CONV_IN, sh.CONV_OUT, "fc1", self.precision)(h), approximate=False)
        h = _dense(dim, sh.CONV_OUT, sh.CONV_IN, "fc2", self.precision)(h)
        # torchvision initialises the scale to 1e-6; the real value always comes from the weights file.
        layer_scale = self.param("layer_scale", partitioned(nn.initializers.constant(1e-6), sh.NORM), (dim,))
        return x + layer_scale * h


class ConvNeXtStage(nn.Module):
    """`depth` ConvNeXt blocks named block_0 .. block_{depth-1}."""

    depth: int
    layer_norm_eps: float = 1e-6
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = ConvNeXtBlock(self.layer_norm_eps, self.precision, name=f"block_{i}")(x)
        return x


class ConvNeXtSmall(nn.Module):
    """torchvision's `convnext_small` as an NHWC classifier: normalised images -> (batch, num_classes) logits.

    stem (4x4/4 conv + LN) -> stage_0 -> [downsample_i (LN + 2x2/2 conv) -> stage_i] for i = 1..3
    -> global average pool -> head_norm (LN) -> head (Linear).
    """

    depths: Sequence[int] = (3, 3, 27, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    num_classes: int = 1000
    layer_norm_eps: float = 1e-6
    precision: Precision = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {tuple(self.depths)} and dims {tuple(self.dims)} must have the same length.")
        eps = self.layer_norm_eps
        x = _conv(self.dims[0], 4, "stem_conv", self.precision, stride=4, padding="VALID")(x.astype(jnp.float32))
        x = _layer_norm("stem_norm", eps)(x)
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims, strict=True)):
            if i > 0:
                x = _layer_norm(f"downsample_{i}_norm", eps)(x)
                x = _conv(dim, 2, f"downsample_{i}_conv", self.precision, stride=2, padding="VALID")(x)
            x = ConvNeXtStage(depth, eps, self.precision, name=f"stage_{i}")(x)
        x = _layer_norm("head_norm", eps)(jnp.mean(x, axis=(1, 2)))
        return _dense(self.num_classes, sh.CONV_IN, sh.CLASSES, "head", self.precision)(x)


# ---------------------------------------------------------------------------- losses


def lpips_distance(
    lpips_params: Params, images: jax.Array, targets: jax.Array, precision: Precision = None
) -> jax.Array:
    """Per-image LPIPS-VGG distance, shape (batch,). Gradients flow to the images only."""
    check_image_pair(images, targets)
    params = jax.lax.stop_gradient(lpips_params)
    return LPIPS(precision).apply({"params": params}, images, targets)


def lpips_loss(lpips_params: Params, images: jax.Array, targets: jax.Array, precision: Precision = None) -> jax.Array:
    """Batch mean of the LPIPS-VGG distance (the official `LPIPS(...)(x, y).mean()`)."""
    return jnp.mean(lpips_distance(lpips_params, images, targets, precision))


def convnext_logits(convnext_params: Params, images: jax.Array, precision: Precision = None) -> jax.Array:
    """ConvNeXt-S logits of images in [0, 1] (any size), after the official resize and normalisation."""
    params = jax.lax.stop_gradient(convnext_params)
    return ConvNeXtSmall(precision=precision).apply({"params": params}, imagenet_normalize(resize_for_convnext(images)))


def convnext_logit_loss(
    convnext_params: Params, images: jax.Array, targets: jax.Array, precision: Precision = None
) -> jax.Array:
    """Mean squared error between the ConvNeXt-S logits of images and targets (mean over batch and classes)."""
    check_image_pair(images, targets)
    batch = images.shape[0]
    logits = convnext_logits(convnext_params, jnp.concatenate([images, targets]), precision)
    return jnp.mean(jnp.square(logits[:batch] - logits[batch:]))


@dataclasses.dataclass(frozen=True)
class PerceptualWeights:
    """Relative weights of the two perceptual terms; the loss is their weighted mean.

    A zero weight skips that network entirely (its params may then be absent).
    """

    lpips: float = 0.0
    convnext: float = 0.0

    def __post_init__(self):
        if self.lpips < 0 or self.convnext < 0 or self.lpips + self.convnext <= 0:
            raise ValueError(f"Perceptual weights must be >= 0 with a positive sum; got {self}.")

    @classmethod
    def from_name(cls, name: str) -> PerceptualWeights:
        """Parses the official `perceptual_loss` config string.

        "lpips" -> LPIPS alone; "convnext_s" -> ConvNeXt alone;
        "lpips-convnext_s-A-B" -> (A * lpips + B * convnext) / (A + B).
        """
        has_lpips, has_convnext = "lpips" in name, "convnext_s" in name
        if has_lpips and has_convnext:
            parts = name.split("-")
            try:
                return cls(lpips=float(parts[-2]), convnext=float(parts[-1]))
            except (IndexError, ValueError):
                raise ValueError(
                    f"Perceptual loss {name!r} names both networks but not their weights; "
                    "write it as 'lpips-convnext_s-<lpips weight>-<convnext weight>', e.g. 'lpips-convnext_s-1.0-0.1'."
                ) from None
        if has_lpips:
            return cls(lpips=1.0)
        if has_convnext:
            return cls(convnext=1.0)
        raise ValueError(
            f"Unknown perceptual loss {name!r}; expected 'lpips', 'convnext_s' or 'lpips-convnext_s-<w_lpips>-<w_convnext>'."
        )


def perceptual_loss_terms(
    params: Params, images: jax.Array, targets: jax.Array, weights: PerceptualWeights, precision: Precision = None
) -> dict[str, jax.Array]:
    """The official PerceptualLoss (already batch-averaged) and its parts.

    `params` is {"lpips": ..., "convnext": ...} as `load_perceptual_params`
    returns it. Returns {"perceptual": weighted mean, "lpips": ..., "convnext": ...}
    with only the terms whose weight is non-zero.
    """
    terms: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    if weights.lpips:
        terms["lpips"] = lpips_loss(_subtree(params, "lpips"), images, targets, precision)
        total = total + weights.lpips * terms["lpips"]
    if weights.convnext:
        terms["convnext"] = convnext_logit_loss(_subtree(params, "convnext"), images, targets, precision)
        total = total + weights.convnext * terms["convnext"]
    terms["perceptual"] = total / (weights.lpips + weights.convnext)
    return terms


def perceptual_loss(
    params: Params, images: jax.Array, targets: jax.Array, weights: PerceptualWeights, precision: Precision = None
) -> jax.Array:
    """Scalar weighted mean of the LPIPS and ConvNeXt terms (see `perceptual_loss_terms`)."""
    return perceptual_loss_terms(params, images, targets, weights, precision)["perceptual"]


def _subtree(params: Params, name: str) -> Params:
    if name not in params:
        raise ValueError(
            f"The perceptual loss needs {name!r} weights but the params hold only {sorted(params)}. "
            "Convert them with `python -m titok_jax.convert.perceptual` (see its --help)."
        )
    return params[name]
