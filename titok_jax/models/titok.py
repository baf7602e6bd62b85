"""TiTok: a ViT that turns an image into a short 1D sequence of tokens, and back.

Layouts (channels-last throughout):
  images   (batch, image_size, image_size, 3) floats in [0, 1]
  latents  (batch, num_latent_tokens, token_size)  -- the official (B, token_size, 1, K)
  tokens   (batch, num_latent_tokens) int code indices (VQ) or the latents themselves (VAE)

Two forms are built from the same fields:
  * legacy two-stage (released L-32 / B-64 / S-128): the encoder's latent reshape
    quirk and a decoder head that predicts logits over the MaskGIT-VQGAN's 1024
    proxy codes (stage 1); with `with_pixel_decoder` (stage 2 / inference) the
    softmax of those logits soft-embeds the VQGAN codebook and the MaskGIT VQGAN
    decoder renders pixels.
  * single-stage (VQ or VAE): a pixel head (1x1 conv -> depth-to-space -> 3x3 conv).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from titok_jax import sharding as sh
from titok_jax.models.layers import (
    OFFICIAL_INIT_STD,
    PIXEL_CONV_INITS,
    POSITIONAL_INITS,
    REMAT_POLICIES,
    ZEROS,
    Transformer,
    dense,
    grid_positional_init,
    layer_norm,
    partitioned,
    pixel_conv_init,
    scaled_normal,
    weight_init,
)
from titok_jax.models.quantizers import DiagonalGaussian, VectorQuantizer
from titok_jax.models.scalar_quantizers import BSQ, FSQ, FSQ_PRESETS, LFQ
from titok_jax.models.vqgan import VQGANDecoder, VQGANQuantizer

Dtype = Any
QUANTIZE_MODES = ("vq", "vae", "fsq", "lfq", "bsq")
# Modes whose tokens are integer ids (a generator's vocabulary is codebook_size); "vae" tokens are vectors.
DISCRETE_MODES = ("vq", "fsq", "lfq", "bsq")
# Modes without a learned codebook: the code of an id is computed (FSQ levels, LFQ / BSQ bits).
LOOKUP_FREE_MODES = ("fsq", "lfq", "bsq")
# How many leading tokens a variable-length tokenizer keeps per training image (TiTok.token_dropout).
TOKEN_DROPOUTS = ("none", "uniform", "pow2")


def powers_of_two_up_to(num_tokens: int) -> tuple[int, ...]:
    """1, 2, 4, ..., K (and K itself when it is not a power of two): the pow2 training counts, and the few
    prefix lengths an evaluation reports (a quality-vs-k curve on a log axis)."""
    return tuple(sorted({min(2**i, num_tokens) for i in range(int(np.ceil(np.log2(num_tokens))) + 1)}))


def draw_num_kept(rng: jax.Array, batch: int, num_tokens: int, distribution: str, rate: float = 1.0) -> jax.Array:
    """(batch,) int32 token counts to keep: uniform over 1..K, or uniform over the powers of two 1, 2, .., K
    (and K itself when K is not a power of two); with `rate` < 1 only that share of the images draws, the
    others keep all K."""
    if distribution == "uniform":
        counts = jax.random.randint(rng, (batch,), 1, num_tokens + 1, jnp.int32)
    elif distribution == "pow2":
        choices = powers_of_two_up_to(num_tokens)
        counts = jnp.asarray(choices, jnp.int32)[jax.random.randint(rng, (batch,), 0, len(choices))]
    else:
        raise ValueError(f"token_dropout={distribution!r} draws no counts; one of {TOKEN_DROPOUTS[1:]}.")
    if rate >= 1.0:
        return counts
    return jnp.where(jax.random.bernoulli(jax.random.fold_in(rng, 1), rate, (batch,)), counts, num_tokens)


def quantizer_fields(mode: str, bits: int, group_size: int = 0) -> dict[str, Any]:
    """TiTok fields of a lookup-free quantizer with about 2**bits codes: token_size and codebook_size derived
    from the quantizer (FSQ: the paper's levels for 2**bits, their product; LFQ / BSQ: bits, 2**bits)."""
    if mode == "fsq":
        if bits not in FSQ_PRESETS:
            raise ValueError(f"FSQ presets exist for {sorted(FSQ_PRESETS)} bits, got {bits}.")
        levels = FSQ_PRESETS[bits]
        return dict(quantize_mode="fsq", fsq_levels=levels, token_size=len(levels), codebook_size=int(np.prod(levels)))
    if mode in ("lfq", "bsq"):
        fields = dict(quantize_mode=mode, token_size=bits, codebook_size=2**bits)
        if mode == "bsq":
            fields["bsq_group_size"] = group_size or bits
        return fields
    raise ValueError(f"quantizer_fields is for {LOOKUP_FREE_MODES}, got {mode!r}.")


def _embedding_param(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple[str | None, ...]) -> jax.Array:
    """A raw embedding initialised as width**-0.5 * randn (official init)."""
    scale = shape[-1] ** -0.5
    return module.param(name, partitioned(scaled_normal(scale), *names), shape, jnp.float32)


def _grid_positional_embedding(module: TiTokEncoder | TiTokDecoder, grid: int) -> jax.Array:
    """The [class | grid*grid] positional embedding, initialised per the module's `positional_init`."""
    init = grid_positional_init(grid, module.positional_init, module.width**-0.5)
    shape = (grid * grid + 1, module.width)
    return module.param("positional_embedding", partitioned(init, sh.LENGTH, sh.EMBED), shape, jnp.float32)


def _transformer(module: TiTokEncoder | TiTokDecoder) -> Transformer:
    """The ViT trunk of the encoder or decoder, from the module's own fields."""
    return Transformer(
        module.depth,
        module.num_heads,
        dtype=module.dtype,
        attention_impl=module.attention_impl,
        init_std=module.init_std,
        remat_policy=module.remat_policy,
        scan_layers=module.scan_layers,
        name="transformer",
    )


def causal_latent_mask(grid: int, num_latent_tokens: int) -> jax.Array:
    """(L, L) attention mask of the encoder sequence [class | grid*grid patches | latents]: the image part
    attends only itself; latent i attends the image part and latents 0..i."""
    image = 1 + grid * grid
    length = image + num_latent_tokens
    query, key = np.arange(length)[:, None], np.arange(length)[None, :]
    mask = (key < image) | ((query >= image) & (key <= query))
    return jnp.asarray(mask)


def _broadcast_batch(x: jax.Array, batch: int) -> jax.Array:
    return jnp.broadcast_to(x[None], (batch, *x.shape))


class TiTokEncoder(nn.Module):
    """Patches + learned latent tokens through a ViT; the latent outputs become tokens.

    Sequence order: [class | grid*grid patches | num_latent_tokens latents].
    Returns (batch, num_latent_tokens, output_channels).
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    num_latent_tokens: int
    output_channels: int
    legacy_reshape: bool = False
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    init_std: float = OFFICIAL_INIT_STD
    remat_policy: str = "none"
    positional_init: str = "normal"
    scan_layers: bool = False
    causal_latents: bool = False  # latent i attends the image and latents <= i only

    @nn.compact
    def __call__(self, images: jax.Array, latent_tokens: jax.Array) -> jax.Array:
        batch = images.shape[0]
        grid = self.image_size // self.patch_size
        x = nn.Conv(
            self.width,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=partitioned(
                weight_init(self.init_std), sh.KERNEL_HEIGHT, sh.KERNEL_WIDTH, sh.CHANNELS, sh.EMBED
            ),
            bias_init=partitioned(ZEROS, sh.EMBED),
            name="patch_embed",
        )(images.astype(self.dtype))
        x = x.reshape(batch, grid * grid, self.width)

        class_embedding = _embedding_param(self, "class_embedding", (1, self.width), (None, sh.EMBED))
        positional_embedding = _grid_positional_embedding(self, grid)
        latent_positional_embedding = _embedding_param(
            self, "latent_token_positional_embedding", (self.num_latent_tokens, self.width), (sh.LENGTH, sh.EMBED)
        )
        x = jnp.concatenate([_broadcast_batch(class_embedding.astype(self.dtype), batch), x], axis=1)
        x = x + positional_embedding.astype(self.dtype)
        latents = (latent_tokens + latent_positional_embedding).astype(self.dtype)
        x = jnp.concatenate([x, _broadcast_batch(latents, batch)], axis=1)
        x = nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))

        x = layer_norm(sh.EMBED, "ln_pre", self.dtype)(x)
        x = _transformer(self)(x, causal_latent_mask(grid, self.num_latent_tokens) if self.causal_latents else None)
        latents = layer_norm(sh.EMBED, "ln_post", self.dtype)(x[:, 1 + grid * grid :])
        if self.legacy_reshape:
            # Released two-stage checkpoints reshape (B, K, W) -> (B, W, K) without a
            # transpose before the 1x1 conv_out; reproduce it to stay compatible.
            latents = latents.reshape(batch, self.width, self.num_latent_tokens).transpose(0, 2, 1)
        return dense(self.output_channels, sh.EMBED, sh.TOKEN, "conv_out", self.dtype, init_std=self.init_std)(latents)


class TiTokDecoder(nn.Module):
    """Latent tokens + grid*grid mask tokens through a ViT; the mask outputs become the image.

    Sequence order: [class | grid*grid mask tokens | latents]. Head `proxy_codes`
    returns float32 logits (batch, grid, grid, proxy_codebook_size); head `pixels`
    returns float32 pixels (batch, image_size, image_size, 3).
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    num_latent_tokens: int
    head: str = "pixels"
    proxy_codebook_size: int = 1024
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    init_std: float = OFFICIAL_INIT_STD
    remat_policy: str = "none"
    positional_init: str = "normal"
    pixel_conv_init: str = "truncated_normal"
    scan_layers: bool = False

    @nn.compact
    def __call__(self, latents: jax.Array) -> jax.Array:
        batch, length, _ = latents.shape
        grid = self.image_size // self.patch_size
        x = dense(self.width, sh.TOKEN, sh.EMBED, "decoder_embed", self.dtype, init_std=self.init_std)(
            latents.astype(self.dtype)
        )

        class_embedding = _embedding_param(self, "class_embedding", (1, self.width), (None, sh.EMBED))
        positional_embedding = _grid_positional_embedding(self, grid)
        mask_token = _embedding_param(self, "mask_token", (1, 1, self.width), (None, None, sh.EMBED))
        latent_positional_embedding = _embedding_param(
            self, "latent_token_positional_embedding", (self.num_latent_tokens, self.width), (sh.LENGTH, sh.EMBED)
        )
        queries = jnp.broadcast_to(mask_token.astype(self.dtype), (batch, grid * grid, self.width))
        queries = jnp.concatenate([_broadcast_batch(class_embedding.astype(self.dtype), batch), queries], axis=1)
        queries = queries + positional_embedding.astype(self.dtype)
        x = x + latent_positional_embedding[:length].astype(self.dtype)
        x = jnp.concatenate([queries, x], axis=1)
        x = nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))

        x = layer_norm(sh.EMBED, "ln_pre", self.dtype)(x)
        x = _transformer(self)(x)
        x = layer_norm(sh.EMBED, "ln_post", self.dtype)(x[:, 1 : 1 + grid * grid])
        x = x.reshape(batch, grid, grid, self.width)

        if self.head == "proxy_codes":
            x = jnp.tanh(dense(2 * self.width, sh.EMBED, sh.MLP, "ffn_hidden", self.dtype, init_std=self.init_std)(x))
            logits = dense(
                self.proxy_codebook_size, sh.MLP, sh.CODEBOOK, "ffn_logits", self.dtype, init_std=self.init_std
            )(x)
            return logits.astype(jnp.float32)
        # Pixel head: 1x1 conv to patch*patch*3 channels read as (p1, p2, c), then depth-to-space.
        p = self.patch_size
        x = dense(p * p * 3, sh.EMBED, None, "ffn_pixels", self.dtype, init_std=self.init_std)(x)
        x = x.reshape(batch, grid, grid, p, p, 3).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, grid * p, grid * p, 3)
        return nn.Conv(
            3,
            (3, 3),
            padding=1,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=partitioned(
                pixel_conv_init(self.pixel_conv_init, self.init_std),
                sh.KERNEL_HEIGHT,
                sh.KERNEL_WIDTH,
                sh.CONV_IN,
                sh.CONV_OUT,
            ),
            bias_init=partitioned(ZEROS, sh.CHANNELS),
            name="conv_out",
        )(x).astype(jnp.float32)


class TiTok(nn.Module):
    """The TiTok tokenizer: encoder, quantizer and decoder (plus the stage-2 pixel decoder).

    Fields mirror the official `model.vq_model` config; see experiments/ for
    the released variants. Params are float32; `dtype` is the compute dtype of
    the ViTs and the pixel decoder; quantizers and logits run in float32.
    """

    image_size: int = 256
    encoder_patch_size: int = 16
    decoder_patch_size: int = 16
    encoder_width: int = 512
    encoder_depth: int = 8
    encoder_num_heads: int = 8
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 8
    num_latent_tokens: int = 128
    token_size: int = 12
    quantize_mode: str = "vq"
    codebook_size: int = 4096
    use_l2_norm: bool = True
    commitment_cost: float = 0.25
    clustering_vq: bool = False
    # Lookup-free quantizers (quantizer_fields derives token_size and codebook_size): FSQ levels per channel;
    # LFQ / BSQ use token_size bits; BSQ's codebook entropy is summed over groups of bsq_group_size bits;
    # entropy_temperature is the LFQ softmax temperature over all codes.
    fsq_levels: Sequence[int] = ()
    bsq_group_size: int = 0
    entropy_temperature: float = 0.01
    # LFQ's entropy_loss = sample_weight * H(each token's code distribution) - codebook_weight * H(the batch's
    # mean distribution); MaskBit's entropy_gamma is the codebook weight. The recipe scales the whole term by
    # losses.entropy_weight on its warm-up schedule.
    entropy_sample_weight: float = 1.0
    entropy_codebook_weight: float = 1.0
    # Released two-stage form: encoder reshape quirk + proxy-code head.
    legacy_two_stage: bool = True
    proxy_codebook_size: int = 1024
    # Stage 2 / inference of the two-stage form: soft-embed + MaskGIT VQGAN decoder.
    with_pixel_decoder: bool = False
    pixel_decoder_filters: int = 128
    pixel_decoder_channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
    pixel_decoder_num_res_blocks: int = 2
    pixel_codebook_dim: int = 256
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    # Kernel init std (official 0.02, tuned for 512-1024 wide ViTs; see recipes.defaults.TINY_VIT_FIELDS).
    init_std: float = OFFICIAL_INIT_STD
    # Activation rematerialisation of the ViT blocks: none | full | dots (models.layers.REMAT_POLICIES).
    remat_policy: str = "none"
    # Init of the grid positional embeddings: normal (official) | sincos (2D sin-cos start, small models).
    positional_init: str = "normal"
    # Init of the single-stage head's last 3x3 conv: truncated_normal (official) | identity (small models).
    pixel_conv_init: str = "truncated_normal"
    # The ViT blocks under nn.scan (params stacked along a leading depth axis: compiles each block once).
    # Checkpoints keep the layout they were trained with; exports are always unscanned (models.layer_stack).
    scan_layers: bool = False
    # Variable-length tokens (nested dropout; FlexTok, One-D-Piece): "none" (the published models), or a training
    # distribution of how many leading tokens are kept per image, "uniform" (k in 1..K) or "pow2" (k in 1, 2, 4,
    # ..., K). The dropped positions are a learned vector (`latent_mask_vector`), so any prefix decodes and shapes
    # stay static under jit.
    token_dropout: str = "none"
    # With token_dropout: the share of training images that drop their tail; the others keep all K tokens, so
    # the full-length code keeps the training signal of a tokenizer without dropout (training only).
    token_dropout_rate: float = 1.0
    # With token_dropout: each training image is also decoded from all K tokens, and the reconstruction loss is
    # that of the full code plus token_dropout_prefix_weight times that of the image's drawn prefix (Matryoshka
    # style), so the full code is trained on every image and the prefixes ride along (training only).
    token_dropout_full_pass: bool = False
    token_dropout_prefix_weight: float = 1.0
    # With token_dropout: a causal mask among the latents in the encoder (token i sees the image and tokens <= i,
    # and the image sees no latent), so a prefix's tokens do not depend on the tokens after it.
    causal_latents: bool = False

    def setup(self):
        validate_fields(self)
        self.latent_tokens = _embedding_param(
            self, "latent_tokens", (self.num_latent_tokens, self.encoder_width), (sh.LENGTH, sh.EMBED)
        )
        if self.token_dropout != "none":
            self.latent_mask_vector = self.param(
                "latent_mask_vector", partitioned(nn.initializers.normal(0.02), sh.TOKEN), (self.token_size,)
            )
        self.encoder = TiTokEncoder(
            image_size=self.image_size,
            patch_size=self.encoder_patch_size,
            width=self.encoder_width,
            depth=self.encoder_depth,
            num_heads=self.encoder_num_heads,
            num_latent_tokens=self.num_latent_tokens,
            output_channels=self.token_size * (2 if self.quantize_mode == "vae" else 1),
            legacy_reshape=self.legacy_two_stage,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            init_std=self.init_std,
            remat_policy=self.remat_policy,
            positional_init=self.positional_init,
            scan_layers=self.scan_layers,
            causal_latents=self.causal_latents,
        )
        if self.quantize_mode == "vq":
            self.quantize = VectorQuantizer(
                self.codebook_size, self.token_size, self.commitment_cost, self.use_l2_norm, self.clustering_vq
            )
        elif self.quantize_mode == "fsq":
            self.quantize = FSQ(tuple(self.fsq_levels))
        elif self.quantize_mode == "lfq":
            self.quantize = LFQ(
                self.token_size,
                self.commitment_cost,
                self.entropy_temperature,
                sample_weight=self.entropy_sample_weight,
                batch_weight=self.entropy_codebook_weight,
            )
        elif self.quantize_mode == "bsq":
            self.quantize = BSQ(self.token_size, self.bsq_group_size, self.commitment_cost)
        else:
            self.quantize = DiagonalGaussian(self.token_size)
        self.decoder = TiTokDecoder(
            image_size=self.image_size,
            patch_size=self.decoder_patch_size,
            width=self.decoder_width,
            depth=self.decoder_depth,
            num_heads=self.decoder_num_heads,
            num_latent_tokens=self.num_latent_tokens,
            head="proxy_codes" if self.legacy_two_stage else "pixels",
            proxy_codebook_size=self.proxy_codebook_size,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            init_std=self.init_std,
            remat_policy=self.remat_policy,
            positional_init=self.positional_init,
            pixel_conv_init=self.pixel_conv_init,
            scan_layers=self.scan_layers,
        )
        if self.with_pixel_decoder:
            self.pixel_quantize = VQGANQuantizer(self.proxy_codebook_size, self.pixel_codebook_dim)
            self.pixel_decoder = VQGANDecoder(
                filters=self.pixel_decoder_filters,
                channel_multipliers=tuple(self.pixel_decoder_channel_multipliers),
                num_res_blocks=self.pixel_decoder_num_res_blocks,
                dtype=self.dtype,
            )

    # ---- shapes -------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.num_latent_tokens, self.token_size)

    @property
    def decodes_to_pixels(self) -> bool:
        return not self.legacy_two_stage or self.with_pixel_decoder

    # ---- public API -----------------------------------------------------------
    def encode(self, images: jax.Array, sample_posterior: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Pixels -> (latents (B, K, token_size), quantizer outputs).

        VQ / FSQ / LFQ / BSQ outputs: indices (B, K) and the quantizer/commitment/codebook losses (LFQ / BSQ
        also per_sample_entropy and codebook_entropy, in training mode). VAE outputs: mean, logvar and
        per-example kl. `sample_posterior` is training mode: a VAE draw from the 'noise' rng (else the mean,
        needing no rng) and the LFQ / BSQ entropy terms (else zeros, skipping the softmax over all codes).
        """
        check_images(images, self.image_shape, "TiTok.encode")
        features = self.encoder(images, self.latent_tokens)
        if self.quantize_mode in ("vq", "fsq"):
            return self.quantize(features)
        if self.quantize_mode in ("lfq", "bsq"):
            return self.quantize(features, train=sample_posterior)
        return self.quantize(features, sample=sample_posterior)

    def keep_prefix(self, latents: jax.Array, num_kept: jax.Array) -> jax.Array:
        """Latents (B, K, token_size) with the positions >= num_kept (B,) replaced by the mask vector."""
        if self.token_dropout == "none":
            raise ValueError(
                "This TiTok was built with token_dropout='none': it has no mask vector for dropped tokens."
            )
        kept = jnp.arange(latents.shape[1])[None, :, None] < jnp.asarray(num_kept)[:, None, None]
        return jnp.where(kept, latents, self.latent_mask_vector.astype(latents.dtype))

    def decode_prefix(self, latents: jax.Array, num_kept: jax.Array) -> jax.Array:
        """What `decode` returns from the first num_kept (B,) of the latents (B, K, token_size), the rest masked.
        num_kept is traced: one compile serves every prefix length (decode of a (B, k, C) slice compiles per k)."""
        return self.decode(self.keep_prefix(latents, num_kept))

    def decode(self, latents: jax.Array) -> jax.Array:
        """Latents (B, K, token_size) -> pixels (B, H, W, 3), or float32 proxy-code
        logits (B, grid, grid, proxy_codebook_size) for a stage-1 two-stage model. A model trained with
        token_dropout also takes a prefix (B, k, token_size), 1 <= k <= K: the rest are mask vectors."""
        if latents.ndim != 3 or latents.shape[-1] != self.token_size or latents.shape[1] > self.num_latent_tokens:
            raise ValueError(
                f"TiTok.decode expects latents of shape (batch, {self.num_latent_tokens}, {self.token_size}); "
                f"got {latents.shape}."
            )
        if self.token_dropout != "none" and latents.shape[1] < self.num_latent_tokens:
            missing = self.num_latent_tokens - latents.shape[1]
            tail = jnp.broadcast_to(
                self.latent_mask_vector.astype(latents.dtype), (latents.shape[0], missing, self.token_size)
            )
            latents = jnp.concatenate([latents, tail], axis=1)
        decoded = self.decoder(latents)
        if not self.with_pixel_decoder:
            return decoded
        soft_codes = jax.nn.softmax(decoded, axis=-1)
        features = jnp.einsum(
            "bhwn,nd->bhwd", soft_codes, self.pixel_quantize.codebook, precision=jax.lax.Precision.HIGHEST
        )
        return self.pixel_decoder(features.astype(self.dtype)).astype(jnp.float32)

    def decode_tokens(self, tokens: jax.Array) -> jax.Array:
        """Tokens -> what `decode` returns. VQ / FSQ / LFQ / BSQ: int indices (B, K) or (B, 1, K);
        VAE: the continuous latents (B, K, token_size)."""
        if self.quantize_mode == "vae":
            return self.decode(tokens)
        if tokens.ndim == 3 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"TiTok.decode_tokens expects integer token ids of shape (batch, {self.num_latent_tokens}); "
                f"got {tokens.dtype} {tokens.shape}."
            )
        return self.decode(self.quantize.codebook_entries(tokens))

    def __call__(self, images: jax.Array, sample_posterior: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
        latents, info = self.encode(images, sample_posterior=sample_posterior)
        return self.decode(latents), info


def check_prefix_lengths(model: TiTok, counts: Sequence[int], setting: str, allow_full: bool = True) -> None:
    """Refuses prefix lengths a tokenizer cannot decode, naming `setting` (the flag or argument that chose them):
    they must lie in 1..K, and one trained without token dropout decodes only all K tokens (with `allow_full`;
    without it, none: a per-k evaluation of such a tokenizer says nothing the full one does not)."""
    num_tokens = model.num_latent_tokens
    example = ",".join(map(str, powers_of_two_up_to(num_tokens)))
    if not counts:
        raise ValueError(f"{setting} names no token counts; give counts in 1..{num_tokens}, e.g. {example}.")
    outside = [k for k in counts if not 1 <= k <= num_tokens]
    if outside:
        raise ValueError(
            f"{setting}: {outside} lie outside 1..{num_tokens} (this tokenizer has {num_tokens} tokens); give "
            f"counts in 1..{num_tokens}, e.g. {example}."
        )
    if model.token_dropout == "none" and (not allow_full or any(k != num_tokens for k in counts)):
        raise ValueError(
            f"{setting}: this tokenizer was trained without token dropout (model.token_dropout='none'), so it "
            f"decodes only all {num_tokens} tokens; drop {setting}, or use a tokenizer trained with "
            "model.token_dropout=uniform or pow2 (--config.model.token_dropout=uniform)."
        )


def check_images(images: jax.Array, expected_shape: tuple[int, int, int], where: str) -> None:
    """Raises a ValueError that names the expected layout when images do not fit it."""
    expected = f"float images of shape (batch, {', '.join(map(str, expected_shape))}) (NHWC) with values in [0, 1]"
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(expected_shape):
        hint = ""
        if images.ndim == 4 and images.shape[1] == expected_shape[2] and images.shape[-1] != expected_shape[2]:
            hint = " The input looks channels-first (NCHW): transpose it to NHWC."
        raise ValueError(f"{where} expects {expected}; got shape {tuple(images.shape)}.{hint}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{where} expects {expected}; got dtype {images.dtype}. "
            "Convert uint8 pixels with images.astype(jnp.float32) / 255."
        )


def _lookup_free_problems(model: TiTok) -> list[str]:
    """token_size and codebook_size must be the ones the quantizer implies (set them with quantizer_fields)."""
    mode = model.quantize_mode
    if mode not in LOOKUP_FREE_MODES:
        return []
    if mode == "fsq":
        levels = tuple(model.fsq_levels)
        if not levels or min(levels) < 2:
            return [f"quantize_mode='fsq' needs fsq_levels of at least 2 levels each, got {levels}"]
        token_size, codebook_size = len(levels), int(np.prod(levels))
    else:
        token_size, codebook_size = model.token_size, 2**model.token_size
        if mode == "lfq" and model.token_size > 16:
            return [
                f"quantize_mode='lfq' takes its entropy over all 2**token_size codes: token_size <= 16, got {model.token_size}"
            ]
        if mode == "bsq" and (model.bsq_group_size <= 0 or model.token_size % model.bsq_group_size):
            return [f"bsq_group_size={model.bsq_group_size} must divide token_size={model.token_size}"]
    if (model.token_size, model.codebook_size) != (token_size, codebook_size):
        return [
            f"quantize_mode={mode!r} implies token_size={token_size} and codebook_size={codebook_size}, got "
            f"{model.token_size} and {model.codebook_size} (set them with models.titok.quantizer_fields)"
        ]
    return []


def validate_fields(model: TiTok) -> None:
    """Checks that the fields describe a buildable model; raises ValueError naming the field."""
    problems = []
    if model.quantize_mode not in QUANTIZE_MODES:
        problems.append(f"quantize_mode={model.quantize_mode!r} is not one of {QUANTIZE_MODES}")
    if model.quantize_mode == "vq" and model.codebook_size <= 0:
        problems.append(f"quantize_mode='vq' needs codebook_size > 0, got {model.codebook_size}")
    problems += _lookup_free_problems(model)
    if model.num_latent_tokens <= 0 or model.token_size <= 0:
        problems.append(
            f"num_latent_tokens={model.num_latent_tokens} and token_size={model.token_size} must be positive"
        )
    for name in ("encoder_patch_size", "decoder_patch_size"):
        patch = getattr(model, name)
        if patch <= 0 or model.image_size % patch:
            problems.append(f"image_size={model.image_size} is not divisible by {name}={patch}")
    for part in ("encoder", "decoder"):
        width, heads = getattr(model, f"{part}_width"), getattr(model, f"{part}_num_heads")
        if heads <= 0 or width % heads:
            problems.append(f"{part}_width={width} is not divisible by {part}_num_heads={heads}")
    if model.token_dropout not in TOKEN_DROPOUTS:
        problems.append(f"token_dropout={model.token_dropout!r} is not one of {TOKEN_DROPOUTS}")
    if not 0.0 < model.token_dropout_rate <= 1.0:
        problems.append(f"token_dropout_rate={model.token_dropout_rate} must be in (0, 1]")
    if model.token_dropout_full_pass and model.token_dropout == "none":
        problems.append(
            "token_dropout_full_pass is for variable-length tokenizers: set token_dropout (uniform or pow2)"
        )
    if not model.token_dropout_prefix_weight > 0:
        problems.append(f"token_dropout_prefix_weight={model.token_dropout_prefix_weight} must be positive")
    elif model.token_dropout_prefix_weight != 1.0 and not model.token_dropout_full_pass:
        problems.append(
            f"token_dropout_prefix_weight={model.token_dropout_prefix_weight} weighs the prefix decode next to the "
            "full one: set token_dropout_full_pass=True too"
        )
    if model.causal_latents and model.token_dropout == "none":
        problems.append("causal_latents is for variable-length tokenizers: set token_dropout (uniform or pow2)")
    if model.remat_policy not in REMAT_POLICIES:
        problems.append(f"remat_policy={model.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
    if model.positional_init not in POSITIONAL_INITS:
        problems.append(f"positional_init={model.positional_init!r} is not one of {POSITIONAL_INITS}")
    if model.pixel_conv_init not in PIXEL_CONV_INITS:
        problems.append(f"pixel_conv_init={model.pixel_conv_init!r} is not one of {PIXEL_CONV_INITS}")
    if model.positional_init == "sincos" and (model.encoder_width % 4 or model.decoder_width % 4):
        problems.append("positional_init='sincos' needs encoder_width and decoder_width divisible by 4")
    if not isinstance(model.scan_layers, bool):
        problems.append(f"scan_layers={model.scan_layers!r} must be True or False")
    if not model.init_std > 0:
        problems.append(f"init_std={model.init_std} must be positive")
    if model.with_pixel_decoder:
        if not model.legacy_two_stage or model.quantize_mode != "vq":
            problems.append(
                "with_pixel_decoder needs the two-stage VQ form (legacy_two_stage=True, quantize_mode='vq')"
            )
        factor = 2 ** (len(model.pixel_decoder_channel_multipliers) - 1)
        if factor != model.decoder_patch_size:
            problems.append(
                f"the pixel decoder upsamples by {factor} (pixel_decoder_channel_multipliers="
                f"{tuple(model.pixel_decoder_channel_multipliers)}) but decoder_patch_size={model.decoder_patch_size}"
            )
    if problems:
        raise ValueError("Invalid TiTok config: " + "; ".join(problems) + ".")


# ViT sizes of the official tokenizers: name -> (width, depth, num_heads).
VIT_SIZES = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def vit_fields(prefix: str, size: str) -> dict[str, int]:
    """{prefix_width, prefix_depth, prefix_num_heads} of a named ViT size."""
    if size not in VIT_SIZES:
        raise ValueError(f"Unknown ViT size {size!r}; valid sizes: {', '.join(VIT_SIZES)}.")
    width, depth, heads = VIT_SIZES[size]
    return {f"{prefix}_width": width, f"{prefix}_depth": depth, f"{prefix}_num_heads": heads}


def pixel_decoder_fields(vqgan: Any) -> dict[str, Any]:
    """TiTok fields of a stage-2 pixel decoder initialised from the teacher `vqgan` (a mapping of VQGAN fields)."""
    return dict(
        proxy_codebook_size=vqgan["codebook_size"],
        pixel_decoder_filters=vqgan["filters"],
        pixel_decoder_channel_multipliers=tuple(vqgan["channel_multipliers"]),
        pixel_decoder_num_res_blocks=vqgan["num_res_blocks"],
        pixel_codebook_dim=vqgan["embedding_dim"],
    )


TITOK_FIELDS = tuple(f.name for f in dataclasses.fields(TiTok) if f.name not in ("parent", "name"))


def titok_from_config(model_config: Any, **overrides: Any) -> TiTok:
    """Builds TiTok from a mapping of its fields (e.g. `config.model`), rejecting unknown keys."""
    fields = dict(model_config)
    fields.update(overrides)
    unknown = sorted(set(fields) - set(TITOK_FIELDS))
    if unknown:
        raise ValueError(f"Unknown TiTok model field(s) {unknown}. Valid fields: {', '.join(TITOK_FIELDS)}.")
    for name in ("pixel_decoder_channel_multipliers", "fsq_levels"):  # hashable: the model is a jit static
        if name in fields:
            fields[name] = tuple(fields[name])
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    model = TiTok(**fields)
    validate_fields(model)
    return model
