"""The frozen MaskGIT-VQGAN as a token generator's tokenizer: images -> raster-order code ids -> images.

The official RAR (and LlamaGen-style generators) model the 2D codes of the MaskGIT-VQGAN
(`maskgit-vqgan-imagenet-f16-256.bin`): 256 px in, a 16 x 16 grid of codes, read row by row as 256 tokens.
`VQGANTokenizer` gives the VQGAN the surface the inference code reads off a TiTok (`encode` ->
(latents, {"indices"}), `decode_tokens`, num_latent_tokens, codebook_size, quantize_mode, token_dropout,
decodes_to_pixels, image_shape), so `Tokenizer`, pretokenization and `Generator` take either.

Its parameter tree is the VQGAN's own ({encoder, quantizer, decoder}, models/vqgan.py), so the JAX
checkpoint and the PyTorch port restore into it unchanged. The VQGAN is fully convolutional: `image_size`
only fixes the grid (image_size / f per side), which the file does not record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax.models.vqgan import MASKGIT_VQGAN, VQGAN_FIELDS, VQGANDecoder, VQGANEncoder, VQGANQuantizer

Dtype = Any
# The official tokenizer of RAR: 256 px (16 x 16 = 256 tokens of 1024 codes).
OFFICIAL_IMAGE_SIZE = 256
TOKENIZER_FIELDS = (*VQGAN_FIELDS, "image_size")


class VQGANTokenizer(nn.Module):
    """The MaskGIT VQGAN with TiTok's tokenizer surface; tokens are the (image_size / f)^2 codes in raster order."""

    filters: int = 128
    channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    embedding_dim: int = 256
    codebook_size: int = 1024
    image_size: int = OFFICIAL_IMAGE_SIZE
    dtype: Dtype = jnp.float32

    # What inference reads off a TiTok, fixed for a VQGAN: plain VQ codes, all tokens always, pixels out,
    # no scanned blocks.
    quantize_mode = "vq"
    token_dropout = "none"
    decodes_to_pixels = True
    scan_layers = False

    def __post_init__(self) -> None:
        factor = 2 ** (len(self.channel_multipliers) - 1)
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(
                f"The MaskGIT VQGAN downsamples by {factor}: image_size={self.image_size} must be a positive multiple "
                f"of {factor} (the official tokenizer reads 256 px)."
            )
        super().__post_init__()

    # ---- sizes ------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def grid_size(self) -> int:
        """Codes per side of the grid."""
        return self.image_size // self.downsample_factor

    @property
    def num_latent_tokens(self) -> int:
        return self.grid_size**2

    @property
    def token_size(self) -> int:
        return self.embedding_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    # ---- modules (the VQGAN's tree: encoder, quantizer, decoder) ------------------
    def setup(self) -> None:
        multipliers = tuple(self.channel_multipliers)
        self.encoder = VQGANEncoder(self.filters, multipliers, self.num_res_blocks, self.embedding_dim, self.dtype)
        self.quantizer = VQGANQuantizer(self.codebook_size, self.embedding_dim)
        self.decoder = VQGANDecoder(self.filters, multipliers, self.num_res_blocks, 3, self.dtype)

    def encode(self, images: jax.Array, sample_posterior: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Pixels (B, H, W, 3) in [0, 1] -> (quantized features (B, h, w, D), {"indices": (B, h * w)}), the codes
        flattened row-major (raster order). `sample_posterior` is TiTok's and means nothing here."""
        del sample_posterior
        quantized, indices = self.quantizer(self.encoder(images))
        return quantized, {"indices": indices.reshape(indices.shape[0], -1)}

    def decode_tokens(self, tokens: jax.Array) -> jax.Array:
        """Raster-order code ids (B, h * w) (or the grid (B, h, w)) -> pixels (B, H, W, 3), not clamped."""
        side = self.grid_size
        grid = tokens.reshape(tokens.shape[0], side, side)
        return self.decoder(self.quantizer.decode_ids(grid))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(reconstruction, tokens (B, K)): runs every submodule (used for init)."""
        _, info = self.encode(images)
        return self.decode_tokens(info["indices"]), info["indices"]


def vqgan_tokenizer(fields: Mapping[str, Any] | None = None) -> VQGANTokenizer:
    """A VQGANTokenizer from any of TOKENIZER_FIELDS (the rest: the official ImageNet-256 VQGAN)."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(TOKENIZER_FIELDS))
    if unknown:
        raise ValueError(f"Unknown MaskGIT VQGAN tokenizer fields {unknown}; valid: {', '.join(TOKENIZER_FIELDS)}.")
    merged = {**MASKGIT_VQGAN, "image_size": OFFICIAL_IMAGE_SIZE, **fields}
    merged["channel_multipliers"] = tuple(int(m) for m in merged["channel_multipliers"])  # hashable (a jit static)
    return VQGANTokenizer(**merged)


def tokenizer_fields(model: VQGANTokenizer) -> dict[str, Any]:
    """The fields that rebuild `model` (a bundle's header)."""
    fields = {name: getattr(model, name) for name in TOKENIZER_FIELDS}
    fields["channel_multipliers"] = list(fields["channel_multipliers"])
    return fields
