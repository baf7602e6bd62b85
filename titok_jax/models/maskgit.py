"""The class-conditional MaskGIT generators over TiTok tokens (official layouts, logical axes).

Token vocabulary (both models): ids 0..C-1 are codes, C is [MASK], C+1+c is class c and
C+1+num_classes the null class (vocab C + num_classes + 2). The sequence is
[class | K tokens]; logits over the C codes come back for the K token positions.
Callers pass `class_ids` in [0, num_classes], num_classes meaning "no class" (CFG / dropout).
An optional `lengths` (B,) makes each example a prefix of its first k tokens (a generator over a
variable-length tokenizer): token positions >= k are hidden as attention keys (the class token is
always visible), so no logit at a position < k depends on them; lengths=None (all K) is the official model.

MaskGITBert (L-32, B-64): HF BertModel without pooler (post-LN, eps 1e-12, learned positions,
  token-type row 0, exact GELU, dropout 0.1 on embeddings / attention probs / block outputs)
  + lm_head. Params: embeddings/{word, position, token_type, norm}, layer_i/{attn, attn_norm,
  mlp (fc, proj), mlp_norm}, lm_head. HF's separate query/key/value map onto the fused qkv kernel.
MaskGITUViT (S-128): pre-LN blocks, qkv without bias, depth/2 in-blocks, a mid block and
  depth/2 out-blocks that first mix in the matching in-block output (skip_linear on [x, skip]).
  Params: embeddings, pos_embed, in_block_i, mid_block, out_block_i/{skip_linear, norm1, attn,
  norm2, mlp}, norm, lm_head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax import sharding as sh
from titok_jax.models.layers import OFFICIAL_INIT_STD, Mlp, MultiHeadAttention, dense, layer_norm, partitioned

Dtype = Any
BERT_LAYER_NORM_EPS = 1e-12


def _embedding(num: int, width: int, name: str) -> nn.Embed:
    return nn.Embed(
        num,
        width,
        embedding_init=partitioned(nn.initializers.truncated_normal(OFFICIAL_INIT_STD), sh.CODEBOOK, sh.EMBED),
        name=name,
    )


def _check_inputs(module: Any, ids: jax.Array, class_ids: jax.Array) -> None:
    if ids.ndim != 2 or ids.shape[1] != module.num_tokens:
        raise ValueError(f"{type(module).__name__} expects token ids (batch, {module.num_tokens}), got {ids.shape}.")
    if class_ids.shape != ids.shape[:1]:
        raise ValueError(f"class_ids must be (batch,) = {ids.shape[:1]}, got {class_ids.shape}.")


def _check_lengths(lengths: jax.Array | None, ids: jax.Array) -> None:
    if lengths is not None and lengths.shape != ids.shape[:1]:
        raise ValueError(f"lengths must be (batch,) = {ids.shape[:1]}, got {lengths.shape}.")


def prefix_key_mask(lengths: jax.Array | None, num_tokens: int) -> jax.Array | None:
    """lengths (B,) -> attention mask (B, 1, 1, 1 + K): the class token and token positions < k visible as keys.

    A key mask (not a query mask): positions >= k still get outputs (ignored by the loss and the sampler),
    and every query keeps at least the class token to attend, so no row of the softmax is empty."""
    if lengths is None:
        return None
    visible = jnp.arange(num_tokens)[None] < lengths.astype(jnp.int32)[:, None]
    visible = jnp.concatenate([jnp.ones_like(visible[:, :1]), visible], axis=1)
    return visible[:, None, None, :]


def _with_class_token(module: Any, ids: jax.Array, class_ids: jax.Array) -> jax.Array:
    class_tokens = class_ids.astype(jnp.int32) + module.codebook_size + 1
    return jnp.concatenate([class_tokens[:, None], ids.astype(jnp.int32)], axis=1)


class BertLayer(nn.Module):
    """Post-LN: x = LN(x + drop(attn(x))); x = LN(x + drop(mlp(x)))."""

    num_heads: int
    intermediate_size: int
    dropout: float
    attention_dropout: float
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool, mask: jax.Array | None = None) -> jax.Array:
        attn = MultiHeadAttention(
            self.num_heads, dtype=self.dtype, attention_dropout=self.attention_dropout, name="attn"
        )
        h = nn.Dropout(self.dropout)(attn(x, deterministic, mask=mask), deterministic)
        x = layer_norm(sh.EMBED, "attn_norm", self.dtype, BERT_LAYER_NORM_EPS)(x + h)
        h = nn.Dropout(self.dropout)(Mlp(self.intermediate_size, self.dtype, name="mlp")(x), deterministic)
        x = layer_norm(sh.EMBED, "mlp_norm", self.dtype, BERT_LAYER_NORM_EPS)(x + h)
        return nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))


class MaskGITBert(nn.Module):
    codebook_size: int = 4096
    num_classes: int = 1000
    num_tokens: int = 32
    hidden_size: int = 768
    depth: int = 24
    num_heads: int = 16
    intermediate_size: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, ids: jax.Array, class_ids: jax.Array, deterministic: bool = True, lengths: jax.Array | None = None
    ) -> jax.Array:
        """ids (B, K), class_ids (B,), lengths (B,) or None -> logits (B, K, codebook_size) (see the module doc)."""
        _check_inputs(self, ids, class_ids)
        _check_lengths(lengths, ids)
        mask = prefix_key_mask(lengths, self.num_tokens)
        tokens = _with_class_token(self, ids, class_ids)
        vocab = self.codebook_size + self.num_classes + 2
        x = _embedding(vocab, self.hidden_size, "word_embeddings")(tokens)
        x = x + _embedding(self.num_tokens + 1, self.hidden_size, "position_embeddings").embedding[None]
        x = x + _embedding(2, self.hidden_size, "token_type_embeddings").embedding[0]  # token type 0 everywhere
        x = layer_norm(sh.EMBED, "embedding_norm", self.dtype, BERT_LAYER_NORM_EPS)(x.astype(self.dtype))
        x = nn.Dropout(self.dropout)(x, deterministic)
        for i in range(self.depth):
            x = BertLayer(
                self.num_heads,
                self.intermediate_size,
                self.dropout,
                self.attention_dropout,
                self.dtype,
                name=f"layer_{i}",
            )(x, deterministic, mask)
        logits = dense(self.codebook_size, sh.EMBED, sh.CODEBOOK, "lm_head", self.dtype)(x[:, 1:])
        return logits.astype(jnp.float32)


class UViTBlock(nn.Module):
    """Pre-LN block with qkv without bias; with `skip`, x = skip_linear([x, skip]) first."""

    num_heads: int
    mlp_ratio: float
    skip: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        width = x.shape[-1]
        if self.skip:
            x = dense(width, sh.MLP, sh.EMBED, "skip_linear", self.dtype)(jnp.concatenate([x, skip], axis=-1))
        attn = MultiHeadAttention(self.num_heads, use_qkv_bias=False, dtype=self.dtype, name="attn")
        x = x + attn(layer_norm(sh.EMBED, "norm1", self.dtype)(x), mask=mask)
        x = x + Mlp(int(width * self.mlp_ratio), self.dtype, name="mlp")(layer_norm(sh.EMBED, "norm2", self.dtype)(x))
        return nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))


class MaskGITUViT(nn.Module):
    codebook_size: int = 4096
    num_classes: int = 1000
    num_tokens: int = 128
    hidden_size: int = 1024
    depth: int = 20  # in-blocks + out-blocks; a mid block comes on top
    num_heads: int = 16
    intermediate_size: int = 4096
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, ids: jax.Array, class_ids: jax.Array, deterministic: bool = True, lengths: jax.Array | None = None
    ) -> jax.Array:
        """ids (B, K), class_ids (B,), lengths (B,) or None -> logits (B, K, codebook_size) (see the module doc)."""
        del deterministic  # the official UViT has no dropout
        _check_inputs(self, ids, class_ids)
        _check_lengths(lengths, ids)
        mask = prefix_key_mask(lengths, self.num_tokens)
        tokens = _with_class_token(self, ids, class_ids)
        vocab = self.codebook_size + self.num_classes + 2
        x = _embedding(vocab, self.hidden_size, "embeddings")(tokens)
        pos_embed = self.param(
            "pos_embed",
            partitioned(nn.initializers.truncated_normal(OFFICIAL_INIT_STD), sh.LENGTH, sh.EMBED),
            (self.num_tokens + 1, self.hidden_size),
            jnp.float32,
        )
        x = (x + pos_embed[None]).astype(self.dtype)
        ratio = self.intermediate_size / self.hidden_size
        skips = []
        for i in range(self.depth // 2):
            x = UViTBlock(self.num_heads, ratio, False, self.dtype, name=f"in_block_{i}")(x, mask=mask)
            skips.append(x)
        x = UViTBlock(self.num_heads, ratio, False, self.dtype, name="mid_block")(x, mask=mask)
        for i in range(self.depth // 2):
            x = UViTBlock(self.num_heads, ratio, True, self.dtype, name=f"out_block_{i}")(x, skips.pop(), mask)
        x = layer_norm(sh.EMBED, "norm", self.dtype)(x)
        logits = dense(self.codebook_size, sh.EMBED, sh.CODEBOOK, "lm_head", self.dtype)(x[:, 1:])
        return logits.astype(jnp.float32)


# What prefix lengths a MaskGIT recipe trains over (config.prefix_lengths): "none" (all K, the official recipe),
# the distributions of a variable-length tokenizer's token_dropout ("uniform" over 1..K, "pow2" over 1, 2, 4, .., K),
# or "auto" (the tokenizer's own token_dropout).
PREFIX_LENGTHS = ("none", "uniform", "pow2", "auto")


def resolve_prefix_lengths(option: str, token_dropout: str, source: str = "the tokenizer") -> str:
    """config.prefix_lengths -> "none" | "uniform" | "pow2" given the tokenizer's token_dropout; refuses
    prefixes over a tokenizer that decodes only all its tokens."""
    if option not in PREFIX_LENGTHS:
        raise ValueError(f"prefix_lengths={option!r} is not one of {PREFIX_LENGTHS}.")
    if option == "auto":
        return token_dropout
    if option != "none" and token_dropout == "none":
        raise ValueError(
            f"prefix_lengths={option!r}: {source} was trained without token dropout and decodes only all its "
            "tokens; use a variable-length tokenizer (model.token_dropout uniform / pow2, e.g. tokenizer=tiny_vq_nested) "
            "or --config.prefix_lengths=none."
        )
    return option


GENERATOR_ARCHITECTURES = {"vit": MaskGITBert, "uvit": MaskGITUViT}


def maskgit_from_config(model_config: Any) -> MaskGITBert | MaskGITUViT:
    """Builds a generator from a mapping of its fields plus `architecture` ("vit" or "uvit")."""
    fields = dict(model_config)
    architecture = fields.pop("architecture", None)
    if architecture not in GENERATOR_ARCHITECTURES:
        raise ValueError(
            f"Unknown generator architecture {architecture!r}; valid: {', '.join(GENERATOR_ARCHITECTURES)}."
        )
    cls = GENERATOR_ARCHITECTURES[architecture]
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}. Valid fields: {', '.join(valid)}.")
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    if cls is MaskGITUViT and fields.get("depth", cls.depth) % 2:
        raise ValueError("MaskGITUViT.depth counts in- plus out-blocks and must be even.")
    return cls(**fields)


def maskgit_fields(model: MaskGITBert | MaskGITUViT) -> dict[str, Any]:
    """JSON-able fields of a generator plus its `architecture`: maskgit_from_config(maskgit_fields(m)) == m."""
    architecture = next(name for name, cls in GENERATOR_ARCHITECTURES.items() if isinstance(model, cls))
    fields: dict[str, Any] = {"architecture": architecture}
    for field in dataclasses.fields(model):
        if field.name in ("parent", "name"):
            continue
        value = getattr(model, field.name)
        fields[field.name] = jnp.dtype(value).name if field.name == "dtype" else value
    return fields
