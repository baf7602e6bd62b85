"""RAR: the class-conditional autoregressive generator (bytedance/1d-tokenizer `modeling/rar.py`), with a KV cache.

Vocabulary (one embedding table, as MaskGIT's): ids 0..V-1 are codes, V the (unused) mask id, V+1+c class c and
V+1+C the null class; the head predicts the V codes. Callers pass `class_ids` in [0, C], C meaning "no class".

Sequence slots: 0 = a learned cls vector, 1 = the class, 2+i = image token i of the (per-sample) order `orders`.
Each slot adds two learned position rows: `pos_embed[P]` where P is the slot's own place (0, 1, then 2 + orders[i],
the token's raster position) and `target_aware_pos_embed[T]` where T is the place of the token the slot predicts
(none for slot 0, 2 + orders[0] for slot 1, 2 + orders[i+1] for slot 2+i, none for the last). Every block is
pre-LN with adaLN-zero modulation from c = class embedding + timesteps_embeddings[slot]. Causal attention with
qk-norm. Slot 1+i's output predicts token i, so N outputs come from slots 1..N and slot N+1 (the last token,
which predicts nothing) is never computed: the official forward computes it and drops its output, and under the
causal mask it cannot change the others.

Sampling (`prefill` then `decode_step`) runs in raster order with a per-layer K/V cache of N+1 slots: the first
call processes slots 0 and 1, each later one the newest token. `__call__` recomputes the whole prefix; both give
the same logits (tests/unit/models/test_rar.py).

Params: cls_token (1, D), embeddings, pos_embed / target_aware_pos_embed (N+1024, D), timesteps_embeddings (N+100, D),
block_i/{norm1, attn/{qkv_kernel, qkv_bias, q_norm, k_norm, out_kernel, out_bias}, norm2, mlp/{fc, proj},
modulation}, final_modulation, lm_head (the official table sizes, so the converter maps them one to one). The
names keep the official weight-decay rule's outcome (optim.NO_DECAY_NAME_PARTS: adaLN and cls_token decay).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax import sharding as sh
from titok_jax.models.layers import OFFICIAL_INIT_STD, QKV_INIT, ZEROS, dense, layer_norm, partitioned, weight_init

Dtype = Any
NORM_EPS = 1e-6
# Rows of the official position tables beyond the sequence (their sizes are part of the checkpoint layout).
POSITION_ROWS_EXTRA = 1024
TIMESTEP_ROWS_EXTRA = 100
NO_ROW = -1  # a slot without a target-aware position row (it adds zero)

# Sizes of the published models (heads 16): width, depth, MLP width. Parameter counts in docs/rar.md.
RAR_SIZES = {
    "B": (768, 24, 3072),
    "L": (1024, 24, 4096),
    "XL": (1280, 32, 5120),
    "XXL": (1408, 40, 6144),
}

# One (key, value) pair per layer, each (B, N + 1, heads, head_dim): the K/V of every slot computed so far.
KVCache = tuple[tuple[jax.Array, jax.Array], ...]


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


def _adaln(features: int, name: str, dtype: Dtype) -> nn.Dense:
    """adaLN-zero: the modulation Linear starts at zero, so every block starts as the identity."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(ZEROS, sh.EMBED, sh.MLP),
        bias_init=partitioned(ZEROS, sh.MLP),
        name=name,
    )


class CausalAttention(nn.Module):
    """Causal self-attention with a fused q/k/v projection, qk-norm and an optional K/V cache.

    Without `cache` the (L, L) causal mask applies. With `cache` ((B, S, H, hd) each), the L new slots are
    written at `index` and each attends to every cached slot up to its own.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    attention_dropout: float = 0.0
    projection_dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        deterministic: bool = True,
        cache: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | int = 0,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        qkv_shape = (3, self.num_heads, head_dim)
        qkv_kernel = self.param(
            "qkv_kernel", partitioned(QKV_INIT, sh.EMBED, sh.QKV, sh.HEADS, sh.HEAD_DIM), (width, *qkv_shape)
        )
        qkv_bias = self.param("qkv_bias", partitioned(ZEROS, sh.QKV, sh.HEADS, sh.HEAD_DIM), qkv_shape)
        qkv = jnp.einsum("bld,dkhe->blkhe", x.astype(self.dtype), qkv_kernel.astype(self.dtype))
        qkv = qkv + qkv_bias.astype(self.dtype)
        query = layer_norm(sh.HEAD_DIM, "q_norm", self.dtype, NORM_EPS)(qkv[:, :, 0])
        key = layer_norm(sh.HEAD_DIM, "k_norm", self.dtype, NORM_EPS)(qkv[:, :, 1])
        value = qkv[:, :, 2]
        queries = jnp.arange(length)
        if cache is None:
            mask = queries[:, None] >= queries[None, :]
            new_cache = None
        else:
            start = (0, index, 0, 0)
            keys = jax.lax.dynamic_update_slice(cache[0], key.astype(cache[0].dtype), start)
            values = jax.lax.dynamic_update_slice(cache[1], value.astype(cache[1].dtype), start)
            new_cache = (keys, values)
            key, value = keys.astype(self.dtype), values.astype(self.dtype)
            mask = jnp.arange(keys.shape[1])[None, :] <= index + queries[:, None]
        if self.attention_dropout > 0 and not deterministic:
            # The fused kernels have no dropout: spell the (short-sequence) attention out.
            scores = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32) / jnp.sqrt(head_dim)
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
            probs = nn.Dropout(self.attention_dropout)(jax.nn.softmax(scores, axis=-1), deterministic=False)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)
        else:
            out = jax.nn.dot_product_attention(query, key, value, mask=mask[None, None])
        out = nn.with_logical_constraint(out, (sh.BATCH, sh.LENGTH, sh.HEADS, sh.HEAD_DIM))
        out_kernel = self.param(
            "out_kernel",
            partitioned(weight_init(OFFICIAL_INIT_STD), sh.HEADS, sh.HEAD_DIM, sh.EMBED),
            (self.num_heads, head_dim, width),
        )
        out_bias = self.param("out_bias", partitioned(ZEROS, sh.EMBED), (width,))
        out = jnp.einsum("blhe,hed->bld", out, out_kernel.astype(self.dtype)) + out_bias.astype(self.dtype)
        del batch
        return nn.Dropout(self.projection_dropout)(out, deterministic), new_cache


class RARMlp(nn.Module):
    """timm's Mlp: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

    hidden_dim: int
    dropout: float
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        h = nn.gelu(dense(self.hidden_dim, sh.EMBED, sh.MLP, "fc", self.dtype)(x), approximate=False)
        h = nn.Dropout(self.dropout)(nn.with_logical_constraint(h, (sh.BATCH, sh.LENGTH, sh.MLP)), deterministic)
        return nn.Dropout(self.dropout)(dense(x.shape[-1], sh.MLP, sh.EMBED, "proj", self.dtype)(h), deterministic)


class RARBlock(nn.Module):
    """x += gate_msa * attn(modulate(norm1 x)); x += gate_mlp * mlp(modulate(norm2 x)); modulation from c."""

    num_heads: int
    intermediate_size: int
    dropout: float
    attention_dropout: float
    dtype: Dtype

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        condition: jax.Array,
        deterministic: bool = True,
        cache: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | int = 0,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        width = x.shape[-1]
        modulation = _adaln(6 * width, "modulation", self.dtype)(nn.silu(condition.astype(self.dtype)))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(modulation, 6, axis=-1)
        attn = CausalAttention(self.num_heads, self.dtype, self.attention_dropout, self.dropout, name="attn")
        h = _modulate(layer_norm(sh.EMBED, "norm1", self.dtype, NORM_EPS)(x), shift_msa, scale_msa)
        h, cache = attn(h, deterministic, cache, index)
        x = x + gate_msa * h
        h = _modulate(layer_norm(sh.EMBED, "norm2", self.dtype, NORM_EPS)(x), shift_mlp, scale_mlp)
        x = x + gate_mlp * RARMlp(self.intermediate_size, self.dropout, self.dtype, name="mlp")(h, deterministic)
        return nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED)), cache


def raster_orders(batch: int, num_tokens: int) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (batch, num_tokens))


def permute(values: jax.Array, orders: jax.Array) -> jax.Array:
    """values (B, N, ...) taken in each row's order (B, N): out[b, i] = values[b, orders[b, i]]."""
    index = orders.reshape(*orders.shape, *([1] * (values.ndim - 2)))
    return jnp.take_along_axis(values, index, axis=1)


def slot_rows(orders: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Orders (B, N) -> the position rows and target-aware rows (B, N + 1) of slots 0..N (NO_ROW: none).

    Slot 2+i holds token orders[i]: its position row is 2 + orders[i]; slot p predicts the token of slot p + 1,
    so its target row is that token's position row. E.g. orders [2, 0, 1]: positions [0, 1, 4, 2], targets
    [-, 4, 2, 3].
    """
    batch = orders.shape[0]
    prefix = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (batch, 2))
    positions = jnp.concatenate([prefix, 2 + orders[:, :-1]], axis=1)
    targets = jnp.concatenate([jnp.full((batch, 1), NO_ROW, jnp.int32), 2 + orders], axis=1)
    return positions, targets


class RAR(nn.Module):
    codebook_size: int = 1024
    num_classes: int = 1000
    num_tokens: int = 256
    hidden_size: int = 768
    depth: int = 24
    num_heads: int = 16
    intermediate_size: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def cache_slots(self) -> int:
        return self.num_tokens + 1  # slots 0..N: every slot sampling ever feeds in

    def setup(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"RAR.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}.")
        table = partitioned(nn.initializers.truncated_normal(OFFICIAL_INIT_STD), sh.LENGTH, sh.EMBED)
        width = self.hidden_size
        # (1, D) as the official (1, 1, D): weight decay applies to params of 2+ dims, and the official decays it.
        self.cls_token = self.param("cls_token", partitioned(ZEROS, None, sh.EMBED), (1, width))
        self.embeddings = nn.Embed(
            self.vocab_size,
            width,
            embedding_init=partitioned(nn.initializers.truncated_normal(OFFICIAL_INIT_STD), sh.CODEBOOK, sh.EMBED),
            name="embeddings",
        )
        rows = self.num_tokens + POSITION_ROWS_EXTRA
        self.pos_embed = self.param("pos_embed", table, (rows, width))
        self.target_aware_pos_embed = self.param("target_aware_pos_embed", table, (rows, width))
        self.timesteps_embeddings = self.param(
            "timesteps_embeddings", table, (self.num_tokens + TIMESTEP_ROWS_EXTRA, width)
        )
        block_fields = (self.num_heads, self.intermediate_size, self.dropout, self.attention_dropout, self.dtype)
        self.blocks = [RARBlock(*block_fields, name=f"block_{i}") for i in range(self.depth)]
        self.final_norm = nn.LayerNorm(NORM_EPS, use_scale=False, use_bias=False, dtype=self.dtype, name="final_norm")
        self.final_modulation = _adaln(2 * width, "final_modulation", self.dtype)
        self.lm_head = dense(self.codebook_size, sh.EMBED, sh.CODEBOOK, "lm_head", self.dtype)

    # ---- the shared pieces -----------------------------------------------------------------------------------
    def _class_tokens(self, class_ids: jax.Array) -> jax.Array:
        return class_ids.astype(jnp.int32) + self.codebook_size + 1

    def _inputs(
        self, slot_ids: jax.Array, slots: jax.Array, positions: jax.Array, targets: jax.Array, class_ids: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(slot inputs x, conditioning c), both (B, L, D), of slots `slots` (L,) holding vocabulary ids
        `slot_ids` (B, L) (slot 0's is ignored: the cls vector), with position rows `positions` (B, L) and
        target-aware rows `targets` (B, L) (NO_ROW: none)."""
        x = self.embeddings(slot_ids)
        x = jnp.where((slots == 0)[None, :, None], self.cls_token[None], x)
        x = x + jnp.take(self.pos_embed, positions, axis=0)
        x = x + jnp.where((targets != NO_ROW)[..., None], jnp.take(self.target_aware_pos_embed, targets, axis=0), 0)
        condition = self.embeddings(self._class_tokens(class_ids))[:, None] + self.timesteps_embeddings[slots][None]
        return x.astype(self.dtype), condition

    def _head(self, x: jax.Array, condition: jax.Array) -> jax.Array:
        scale, shift = jnp.split(self.final_modulation(nn.silu(condition.astype(self.dtype))), 2, axis=-1)
        logits = self.lm_head(_modulate(self.final_norm(x), shift, scale))
        return nn.with_logical_constraint(logits.astype(jnp.float32), (sh.BATCH, sh.LENGTH, sh.CODEBOOK))

    # ---- training and uncached sampling ----------------------------------------------------------------------
    def __call__(
        self,
        ids: jax.Array,
        class_ids: jax.Array,
        orders: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Token ids (B, N) in raster positions, class_ids (B,), orders (B, N) (None: raster) -> logits (B, N, V):
        logits[:, i] predicts token orders[:, i] from the class and the tokens before it in that order."""
        batch, num = ids.shape
        if num != self.num_tokens or class_ids.shape != (batch,):
            raise ValueError(
                f"RAR expects ids (batch, {self.num_tokens}) and class_ids (batch,), got {ids.shape}, {class_ids.shape}."
            )
        orders = raster_orders(batch, num) if orders is None else orders.astype(jnp.int32)
        shuffled = permute(ids.astype(jnp.int32), orders)
        slot_ids = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), self._class_tokens(class_ids)[:, None], shuffled[:, :-1]], axis=1)  # fmt: skip
        positions, targets = slot_rows(orders)
        x, condition = self._inputs(slot_ids, jnp.arange(num + 1), positions, targets, class_ids)
        for block in self.blocks:
            x, _ = block(x, condition, deterministic)
        return self._head(x[:, 1:], condition[:, 1:])

    # ---- cached sampling (raster order) ----------------------------------------------------------------------
    def init_cache(self, batch: int) -> KVCache:
        shape = (batch, self.cache_slots, self.num_heads, self.head_dim)
        return tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in range(self.depth))

    def _cached(
        self, slot_ids: jax.Array, slots: jax.Array, class_ids: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        batch = slot_ids.shape[0]
        positions = jnp.broadcast_to(slots, (batch, slots.shape[0]))
        targets = jnp.where(positions == 0, NO_ROW, positions + 1)  # raster: slot p predicts the token at p + 1
        x, condition = self._inputs(slot_ids, slots, positions, targets, class_ids)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x, layer_cache = block(x, condition, True, layer_cache, slots[0])
            new_cache.append(layer_cache)
        return self._head(x[:, -1:], condition[:, -1:])[:, 0], tuple(new_cache)

    def prefill(self, class_ids: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Slots 0 (cls) and 1 (class) -> (logits of token 0 (B, V), the cache)."""
        slot_ids = jnp.stack([jnp.zeros_like(class_ids), self._class_tokens(class_ids)], axis=1)
        return self._cached(slot_ids, jnp.arange(2), class_ids, cache)

    def decode_step(
        self, token: jax.Array, step: jax.Array, class_ids: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Token `step` - 1 (B,) into slot step + 1 -> (logits of token `step` (B, V), the cache); 1 <= step < N."""
        slots = jnp.asarray(step, jnp.int32)[None] + 1
        return self._cached(token[:, None].astype(jnp.int32), slots, class_ids, cache)


def rar_from_config(model_config: Any) -> RAR:
    """A RAR from a mapping of its fields (an `architecture: "rar"` entry, when present, is dropped)."""
    fields = dict(model_config)
    fields.pop("architecture", None)
    valid = [f.name for f in dataclasses.fields(RAR) if f.name not in ("parent", "name")]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"Unknown RAR field(s) {unknown}. Valid fields: {', '.join(valid)}.")
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return RAR(**fields)
