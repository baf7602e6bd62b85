"""ViT building blocks with logical axes on every parameter.

The block is open_clip's ResidualAttentionBlock as TiTok uses it: pre-LN,
x + attn(ln_1(x)), x + mlp(ln_2(x)); multi-head attention with a fused q/k/v
projection and biases; a 4x MLP with exact GELU; LayerNorm eps 1e-5.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from titok_jax import sharding as sh

Dtype = Any

# Linear and conv weights: truncated normal, std 0.02; biases zero (spec "Init").
OFFICIAL_INIT_STD = 0.02


def weight_init(std: float = OFFICIAL_INIT_STD) -> nn.initializers.Initializer:
    """Truncated normal kernels. 0.02 suits the official 512-1024 wide ViTs; narrow
    CPU-sized models need a larger std or the latent path starts ~20x too weak."""
    return nn.initializers.truncated_normal(stddev=std)


# torch MultiheadAttention's fused in_proj is a raw Parameter, which the official
# init leaves at xavier-uniform over (3W, W); the (W, 3, heads, head_dim) kernel
# has the same fans (in W, out 3W). It matters: 0.02 would weaken attention ~4x.
QKV_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2, 3))
ZEROS = nn.initializers.zeros
ONES = nn.initializers.ones


def partitioned(init: nn.initializers.Initializer, *names: str | None) -> nn.initializers.Initializer:
    """Shorthand for an initializer whose value carries logical axis names."""
    return nn.with_logical_partitioning(init, names)


def scaled_normal(scale: float) -> nn.initializers.Initializer:
    """`scale * randn`, the init of TiTok's raw embeddings (scale = width ** -0.5)."""
    return nn.initializers.normal(stddev=scale)


def sincos_2d(grid: int, width: int) -> np.ndarray:
    """(grid*grid, width) fixed 2D sin-cos position codes (MAE style): a quarter of the channels each
    for sin(y), cos(y), sin(x), cos(x) at geometric frequencies; row-major over the grid."""
    if width % 4:
        raise ValueError(f"2D sin-cos position codes need a width divisible by 4, got {width}.")
    quarter = width // 4
    frequencies = 1.0 / 10_000 ** (np.arange(quarter) / quarter)
    y, x = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    angles = [c.reshape(-1, 1) * frequencies[None] for c in (y, x)]
    return np.concatenate([f(a) for a in angles for f in (np.sin, np.cos)], axis=1).astype(np.float32)


def grid_positional_init(grid: int, mode: str, scale: float) -> nn.initializers.Initializer:
    """Init of a (1 + grid*grid, width) positional embedding ([class | grid] rows).

    "normal": `scale * randn` everywhere (official). "sincos": the class row as official, the grid
    rows 0.5 * sincos_2d: the positions start out knowing their 2D layout instead of learning it from
    random codes, which is what holds back small ViTs that must render shapes (measured on the tiny
    tokenizer: held-out MSE 0.024 -> 0.021 at 900 steps, blobs where the shapes are from step ~600).
    """
    if mode not in POSITIONAL_INITS:
        raise ValueError(f"positional_init={mode!r} is not one of {POSITIONAL_INITS}.")

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        values = scaled_normal(scale)(key, shape, dtype)
        if mode == "sincos":
            values = values.at[1:].set(0.5 * jnp.asarray(sincos_2d(grid, shape[-1]), dtype))
        return values

    return init


def pixel_conv_init(mode: str, std: float) -> nn.initializers.Initializer:
    """Init of the single-stage head's final 3x3 conv (3 -> 3 channels).

    "truncated_normal" (official) or "identity" (centre tap = identity, other taps 0). A random 3 -> 3
    map of std ~0.07 is a near-singular last factor in a product of linear maps; gradient descent then
    learns colour directions one after another: the tiny tokenizer sat for 2000 steps on grey-yellow
    blobs that missed red and green (held-out MSE 0.045 > 0.026 of a flat per-image colour). Starting at
    identity it matches flat colour by step ~300 and goes on to place shapes.
    """
    if mode not in PIXEL_CONV_INITS:
        raise ValueError(f"pixel_conv_init={mode!r} is not one of {PIXEL_CONV_INITS}.")
    if mode == "truncated_normal":
        return weight_init(std)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        height, width, channels_in, channels_out = shape
        kernel = jnp.zeros(shape, dtype)
        return kernel.at[height // 2, width // 2].set(jnp.eye(channels_in, channels_out, dtype=dtype))

    return init


POSITIONAL_INITS = ("normal", "sincos")
PIXEL_CONV_INITS = ("truncated_normal", "identity")


def layer_norm(axis_name: str, name: str, dtype: Dtype, epsilon: float = 1e-5) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=partitioned(ONES, axis_name),
        bias_init=partitioned(ZEROS, axis_name),
        name=name,
    )


def dense(
    features: int,
    in_axis: str | None,
    out_axis: str | None,
    name: str,
    dtype: Dtype,
    use_bias: bool = True,
    init_std: float = OFFICIAL_INIT_STD,
) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(weight_init(init_std), in_axis, out_axis),
        bias_init=partitioned(ZEROS, out_axis),
        name=name,
    )


def _attention_mask(mask: jax.Array) -> jax.Array:
    """A (L, L) mask shared by every example -> (1, 1, L, L); a per-example (B, 1, Lq, L) one as it is."""
    if mask.ndim == 2:
        return mask[None, None]
    if mask.ndim != 4:
        raise ValueError(f"An attention mask is (L, L) or (batch, 1, L or 1, L); got shape {mask.shape}.")
    return mask


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused q/k/v projection (torch MultiheadAttention layout).

    The fused kernel is (width, 3, heads, head_dim): torch's in_proj_weight
    (3*width, width), transposed and reshaped, with q, k, v in that order.
    Params are created at their full rank (not flattened, as DenseGeneral does)
    so each axis keeps its logical name under a mesh.
    """

    num_heads: int
    use_qkv_bias: bool = True
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None  # None lets XLA / cuDNN choose.
    init_std: float = OFFICIAL_INIT_STD
    # Dropout on the attention probabilities (the MaskGIT BERT's 0.1); training only.
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> jax.Array:
        """`mask` bool, True where query position q may attend key position k (None: everywhere): (L, L) for
        every example, or (B, 1, L or 1, L) per example (e.g. a key mask (B, 1, 1, L) hiding padded positions)."""
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"Width {width} is not divisible by num_heads={self.num_heads}.")
        head_dim = width // self.num_heads
        qkv_shape = (3, self.num_heads, head_dim)
        qkv_kernel = self.param(
            "qkv_kernel",
            partitioned(QKV_INIT, sh.EMBED, sh.QKV, sh.HEADS, sh.HEAD_DIM),
            (width, *qkv_shape),
            jnp.float32,
        )
        qkv = jnp.einsum("bld,dkhe->blkhe", x.astype(self.dtype), qkv_kernel.astype(self.dtype))
        if self.use_qkv_bias:
            qkv_bias = self.param("qkv_bias", partitioned(ZEROS, sh.QKV, sh.HEADS, sh.HEAD_DIM), qkv_shape, jnp.float32)
            qkv = qkv + qkv_bias.astype(self.dtype)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.attention_dropout > 0 and not deterministic:
            # The fused kernels have no dropout: spell the (short-sequence) attention out.
            scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(head_dim).astype(query.dtype)
            if mask is not None:
                scores = jnp.where(_attention_mask(mask), scores, jnp.finfo(scores.dtype).min)
            probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(value.dtype)
            probs = nn.Dropout(self.attention_dropout)(probs, deterministic=False)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs, value)
        else:
            out = jax.nn.dot_product_attention(
                query,
                key,
                value,
                mask=None if mask is None else _attention_mask(mask),
                implementation=self.attention_impl,
            )
        out = nn.with_logical_constraint(out, (sh.BATCH, sh.LENGTH, sh.HEADS, sh.HEAD_DIM))
        out_kernel = self.param(
            "out_kernel",
            partitioned(weight_init(self.init_std), sh.HEADS, sh.HEAD_DIM, sh.EMBED),
            (self.num_heads, head_dim, width),
            jnp.float32,
        )
        out_bias = self.param("out_bias", partitioned(ZEROS, sh.EMBED), (width,), jnp.float32)
        return jnp.einsum("blhe,hed->bld", out, out_kernel.astype(self.dtype)) + out_bias.astype(self.dtype)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    hidden_dim: int
    dtype: Dtype = jnp.float32
    init_std: float = OFFICIAL_INIT_STD

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = dense(self.hidden_dim, sh.EMBED, sh.MLP, "fc", self.dtype, init_std=self.init_std)(x)
        h = nn.gelu(h, approximate=False)
        h = nn.with_logical_constraint(h, (sh.BATCH, sh.LENGTH, sh.MLP))
        return dense(width, sh.MLP, sh.EMBED, "proj", self.dtype, init_std=self.init_std)(h)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1 x); x + mlp(ln_2 x)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    init_std: float = OFFICIAL_INIT_STD

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        width = x.shape[-1]
        h = layer_norm(sh.EMBED, "ln_1", self.dtype)(x)
        x = x + MultiHeadAttention(
            self.num_heads, dtype=self.dtype, attention_impl=self.attention_impl, init_std=self.init_std, name="attn"
        )(h, mask=mask)
        h = layer_norm(sh.EMBED, "ln_2", self.dtype)(x)
        x = x + Mlp(int(width * self.mlp_ratio), dtype=self.dtype, init_std=self.init_std, name="mlp")(h)
        return nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))


# Rematerialisation policies (activation memory vs recompute), by name: "none" keeps every
# activation; "full" recomputes each block in the backward pass; "dots" keeps only matmul
# outputs without batch dims (recomputes norms, GELU, softmax).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _scan_body(block: nn.Module, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, None]:
    """One scan iteration: the block maps the carried activations (nn.scan wants (carry, ys) back); the
    attention mask is the same for every layer."""
    return block(x, mask), None


class Transformer(nn.Module):
    """A stack of `depth` residual attention blocks.

    Unscanned (the default and the interchange layout), the blocks are block_0 .. block_{depth-1}.
    `scan_layers` runs one block under nn.scan instead: its params live once under `blocks`, each
    with a leading axis of size depth (logical name sharding.LAYERS), and XLA compiles the block
    once rather than depth times. models.layer_stack converts between the two layouts.
    `remat_policy` wraps each block in nn.remat (same parameter names and tree).
    """

    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    init_std: float = OFFICIAL_INIT_STD
    remat_policy: str = "none"
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """`mask`: an (L, L) attention mask shared by every block (None: full attention)."""
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}.")
        block_cls = ResidualAttentionBlock
        if self.remat_policy != "none":
            # Inside a scan the loop boundary already keeps XLA from merging the recomputation into
            # the forward pass, so CSE prevention (extra optimisation barriers) is not needed there.
            block_cls = nn.remat(
                ResidualAttentionBlock, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan_layers
            )
        block_args = (self.num_heads, self.mlp_ratio, self.dtype, self.attention_impl, self.init_std)
        if self.scan_layers:
            scan = nn.scan(
                _scan_body,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast,),
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: sh.LAYERS},
            )
            x, _ = scan(block_cls(*block_args, name="blocks"), x, mask)
            return x
        for i in range(self.depth):
            x = block_cls(*block_args, name=f"block_{i}")(x, mask)
        return x
