"""PyTorch test reference of the official TiTok / MaskGIT models (bytedance/1d-tokenizer @ 942a96f).

Written from the facts in shared/spec/titok-reference.md and a reading of the official modules, not
copied from them: it reproduces the official state_dict keys, shapes and forward numerics so that the
converters in titok_jax.convert can be checked against "the official model" without installing it.

  OfficialTiTok(config)        modeling/titok.py TiTok (+ blocks.TiTokEncoder/TiTokDecoder, quantizer)
  OfficialVQGANPort(...)       modeling/titok.py PretrainedTokenizer (maskgit_vqgan.py Encoder/Decoder/VQ)
  OfficialImageBert(config)    modeling/maskgit.py ImageBert (HF BertModel, written out by hand)
  OfficialUViTBert(config)     modeling/maskgit.py UViTBert
  TOKENIZER_VARIANTS / GENERATOR_VARIANTS   the configs of the published checkpoints
  randomize_(module, seed)     seeded non-trivial weights for parity tests

TEST-ONLY EXTENSION (titok_jax's, ignored by the official code): model.vq_model may carry
`vit_{enc,dec}_{width,depth,num_heads}` overriding the named ViT size, and
`pixel_decoder: {hidden_channels, channel_mult, num_res_blocks, z_channels, num_embeddings}` overriding
the fixed ImageNet MaskGIT-VQGAN pixel decoder (num_embeddings is also the legacy head's logit count).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# name -> (width, depth, heads), as in TiTokEncoder / TiTokDecoder
VIT_SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
# The pixel decoder (and PretrainedTokenizer) config hard-coded in the official titok.py.
IMAGENET_VQGAN = {
    "hidden_channels": 128,
    "channel_mult": (1, 1, 2, 2, 4),
    "num_res_blocks": 2,
    "z_channels": 256,
    "num_embeddings": 1024,
}


# ---------------------------------------------------------------------------- published configs


def _vit(enc: str, dec: str, k: int) -> dict[str, Any]:
    return {
        "vit_enc_model_size": enc,
        "vit_dec_model_size": dec,
        "vit_enc_patch_size": 16,
        "vit_dec_patch_size": 16,
        "num_latent_tokens": k,
    }


def _two_stage(enc: str, k: int) -> dict[str, Any]:  # L-32 / B-64 / S-128: no quantize_mode, no is_legacy
    vq = {"codebook_size": 4096, "token_size": 12, "use_l2_norm": True, "commitment_cost": 0.25}
    return {**vq, **_vit(enc, enc, k), "finetune_decoder": True}


def _vq8k(enc: str, k: int) -> dict[str, Any]:
    vq = {"codebook_size": 8192, "token_size": 64, "use_l2_norm": False, "commitment_cost": 0.25}
    return {**vq, **_vit(enc, "large", k), "finetune_decoder": False, "is_legacy": False}


def _vae(enc: str, k: int) -> dict[str, Any]:  # the VAE yamls have no codebook_size / l2 / commitment keys
    return {
        "quantize_mode": "vae",
        "token_size": 16,
        **_vit(enc, "large", k),
        "finetune_decoder": False,
        "is_legacy": False,
    }


def _hub(vq: dict[str, Any], generator: dict[str, Any] | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {"vq_model": vq}
    if generator is not None:
        model["generator"] = generator
    return {"model": model, "dataset": {"preprocessing": {"crop_size": 256}}}


# model.vq_model exactly as configs/infer/TiTok/<name>.yaml has it
TOKENIZER_VARIANTS: dict[str, dict[str, Any]] = {
    "titok_l32": _hub(_two_stage("large", 32)),
    "titok_b64": _hub(_two_stage("base", 64)),
    "titok_s128": _hub(_two_stage("small", 128)),
    "titok_bl64_vq8k": _hub(_vq8k("base", 64)),
    "titok_bl128_vq8k": _hub(_vq8k("base", 128)),
    "titok_sl256_vq8k": _hub(_vq8k("small", 256)),
    "titok_ll32_vae_c16": _hub(_vae("large", 32)),
    "titok_bl64_vae_c16": _hub(_vae("base", 64)),
    "titok_bl128_vae_c16": _hub(_vae("base", 128)),
}


def _generator(model_type: str, hidden: int, heads: int, inter: int, k: int, **sampling: Any) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": {"ViT": 24, "UViT": 20}[model_type],
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "dropout": 0.1,
        "attn_drop": 0.1,
        "num_steps": sampling.pop("num_steps"),
        "class_label_dropout": 0.1,
        "image_seq_len": k,  # the yaml writes ${model.vq_model.num_latent_tokens}; resolved here
        "condition_num_classes": 1000,
        **sampling,
    }


# configs/infer/TiTok/titok_{l32,b64,s128}.yaml (their vq_model and generator sections)
GENERATOR_VARIANTS: dict[str, dict[str, Any]] = {
    "titok_l32": _hub(
        _two_stage("large", 32),
        _generator("ViT", 768, 16, 3072, 32, num_steps=8, randomize_temperature=9.5, guidance_scale=4.5,
                   guidance_decay="linear"),
    ),
    "titok_b64": _hub(
        _two_stage("base", 64),
        _generator("ViT", 768, 16, 3072, 64, num_steps=8, randomize_temperature=11.0, guidance_scale=3.0,
                   guidance_decay="linear"),
    ),
    "titok_s128": _hub(
        _two_stage("small", 128),
        _generator("UViT", 1024, 16, 4096, 128, num_steps=64, randomize_temperature=2.8, guidance_scale=6.9,
                   guidance_decay="power-cosine"),
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------- helpers


def randomize_(module: nn.Module, seed: int, scale: float = 0.02) -> nn.Module:
    """Fill every parameter with seeded normal values so parity tests see non-trivial weights.

    Linear / Conv / MultiheadAttention weight matrices get N(0, 1/fan_in) (unit gain, so signals keep
    their size through the tiny test models); LayerNorm/GroupNorm weights N(1, scale^2); everything else
    (biases, embeddings, codebooks, latent/positional tokens) N(0, scale^2). Deterministic for a given
    module structure and seed (draws on CPU in module order). Returns the module.
    """
    gen = torch.Generator().manual_seed(seed)
    matrix_modules = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention)
    with torch.no_grad():
        for mod in module.modules():
            is_norm = isinstance(mod, (nn.LayerNorm, nn.GroupNorm))
            for name, param in mod.named_parameters(recurse=False):
                std = scale
                if isinstance(mod, matrix_modules) and name.endswith("weight") and param.ndim >= 2:
                    std = (param.shape[0] / param.numel()) ** 0.5
                values = std * torch.randn(param.shape, generator=gen, dtype=torch.float32)
                if is_norm and name == "weight":
                    values += 1.0
                param.copy_(values.to(param.dtype))
    return module


def _vq_config(config: dict[str, Any]) -> dict[str, Any]:
    return config["model"]["vq_model"]


def _vit_dims(vq: dict[str, Any], part: str) -> tuple[int, int, int]:
    """(width, depth, heads) for part 'enc' or 'dec': the named size, or the test-only override keys."""
    dims = list(VIT_SIZES.get(vq.get(f"vit_{part}_model_size"), (None, None, None)))
    for i, key in enumerate(("width", "depth", "num_heads")):
        dims[i] = vq.get(f"vit_{part}_{key}", dims[i])
    if None in dims:
        raise ValueError(
            f"vit_{part}_model_size must be small, base or large (got {vq.get(f'vit_{part}_model_size')!r})"
        )
    return int(dims[0]), int(dims[1]), int(dims[2])


def _pixel_config(vq: dict[str, Any]) -> dict[str, Any]:
    return {**IMAGENET_VQGAN, **vq.get("pixel_decoder", {})}


def _init_titok(module: nn.Module) -> None:
    """TiTok._init_weights: trunc-normal(0.02) linear/conv/embedding weights, zero biases, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------- TiTok ViTs


class _ResidualAttentionBlock(nn.Module):
    """open_clip block: pre-LN, nn.MultiheadAttention on (L, N, D), MLP 4x with exact GELU."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * 4.0)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _ViTBase(nn.Module):
    """Fields and parameters common to the TiTok encoder and decoder."""

    def __init__(self, config: dict[str, Any], part: str):
        super().__init__()
        vq = _vq_config(config)
        self.patch_size = int(vq[f"vit_{part}_patch_size"])
        self.grid_size = int(config["dataset"]["preprocessing"]["crop_size"]) // self.patch_size
        self.num_latent_tokens = int(vq["num_latent_tokens"])
        self.token_size = int(vq["token_size"])
        self.is_legacy = bool(vq.get("is_legacy", True))
        self.width, self.num_layers, self.num_heads = _vit_dims(vq, part)

    def _embeddings(self, with_mask_token: bool) -> None:
        scale, w = self.width**-0.5, self.width
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, w))
        if with_mask_token:
            self.mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(self.num_latent_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList(_ResidualAttentionBlock(w, self.num_heads) for _ in range(self.num_layers))
        self.ln_post = nn.LayerNorm(w)

    def _run_transformer(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_pre(x).permute(1, 0, 2)  # NLD -> LND (nn.MultiheadAttention is sequence-first)
        for block in self.transformer:
            x = block(x)
        return x.permute(1, 0, 2)

    def _with_class_token(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.class_embedding.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)


class TiTokEncoder(_ViTBase):
    def __init__(self, config: dict[str, Any]):
        super().__init__(config, "enc")
        if _vq_config(config).get("quantize_mode", "vq") == "vae":
            self.token_size *= 2  # mean | logvar
        self.patch_embed = nn.Conv2d(3, self.width, self.patch_size, stride=self.patch_size, bias=True)
        self._embeddings(with_mask_token=False)
        self.conv_out = nn.Conv2d(self.width, self.token_size, kernel_size=1, bias=True)

    def forward(self, pixel_values: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b, k, w = pixel_values.shape[0], self.num_latent_tokens, self.width
        x = self._with_class_token(self.patch_embed(pixel_values).flatten(2).transpose(1, 2))
        latents = latent_tokens.unsqueeze(0).expand(b, -1, -1).to(x.dtype)
        latents = latents + self.latent_token_positional_embedding.to(x.dtype)
        x = self._run_transformer(torch.cat([x, latents], dim=1))
        latents = self.ln_post(x[:, 1 + self.grid_size**2 :])
        if self.is_legacy:  # the legacy quirk: (B, K, W) reshaped, not permuted, to (B, W, K, 1)
            latents = latents.reshape(b, w, k, 1)
        else:
            latents = latents.reshape(b, k, w, 1).permute(0, 2, 1, 3)
        return self.conv_out(latents).reshape(b, self.token_size, 1, k)


class _DepthToSpace(nn.Module):
    """einops 'b (p1 p2 c) h w -> b c (h p1) (w p2)'."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch
        return x.reshape(b, p, p, -1, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, -1, h * p, w * p)


class TiTokDecoder(_ViTBase):
    def __init__(self, config: dict[str, Any]):
        super().__init__(config, "dec")
        self.decoder_embed = nn.Linear(self.token_size, self.width, bias=True)
        self._embeddings(with_mask_token=True)
        w = self.width
        if self.is_legacy:  # logits over the MaskGIT-VQGAN codebook (1024 officially)
            codes = int(_pixel_config(_vq_config(config))["num_embeddings"])
            self.ffn = nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.Tanh(), nn.Conv2d(2 * w, codes, 1))
            self.conv_out = nn.Identity()
        else:  # RGB directly
            p = self.patch_size
            self.ffn = nn.Sequential(nn.Conv2d(w, p * p * 3, 1), _DepthToSpace(p))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1, bias=True)

    def forward(self, z_quantized: torch.Tensor) -> torch.Tensor:
        n, c, h, k = z_quantized.shape
        assert h == 1 and k == self.num_latent_tokens, (h, k, self.num_latent_tokens)
        x = self.decoder_embed(z_quantized.reshape(n, c * h, k).permute(0, 2, 1))
        grid2 = self.grid_size**2
        masks = self._with_class_token(self.mask_token.to(x.dtype).repeat(n, grid2, 1))
        x = x + self.latent_token_positional_embedding[:k]
        x = self._run_transformer(torch.cat([masks, x], dim=1))
        x = self.ln_post(x[:, 1 : 1 + grid2])
        x = x.permute(0, 2, 1).reshape(n, self.width, self.grid_size, self.grid_size)
        return self.conv_out(self.ffn(x.contiguous()))


# ---------------------------------------------------------------------------- TiTok quantizers


class VectorQuantizer(nn.Module):
    """modeling/quantizer/quantizer.py VectorQuantizer (inference path; no clustering-VQ update)."""

    def __init__(self, codebook_size: int, token_size: int, commitment_cost: float = 0.25, use_l2_norm: bool = False):
        super().__init__()
        self.commitment_cost = commitment_cost
        self.use_l2_norm = use_l2_norm
        self.embedding = nn.Embedding(codebook_size, token_size)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = z.float().permute(0, 2, 3, 1).contiguous()  # b c h w -> b h w c
        flat = z.reshape(-1, z.shape[-1])
        codebook = self.embedding.weight
        if self.use_l2_norm:
            flat, codebook = F.normalize(flat, dim=-1), F.normalize(codebook, dim=-1)
        dist = (
            flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * torch.einsum("bd,dn->bn", flat, codebook.T)
        )
        indices = dist.argmin(dim=1)
        zq = self.get_codebook_entry(indices).view(z.shape)
        if self.use_l2_norm:
            z = F.normalize(z, dim=-1)
        commitment = self.commitment_cost * torch.mean((zq.detach() - z) ** 2)
        codebook_loss = torch.mean((zq - z.detach()) ** 2)
        zq = (z + (zq - z).detach()).permute(0, 3, 1, 2).contiguous()
        return zq, {
            "quantizer_loss": commitment + codebook_loss,
            "commitment_loss": commitment,
            "codebook_loss": codebook_loss,
            "min_encoding_indices": indices.view(zq.shape[0], zq.shape[2], zq.shape[3]),
        }

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """1-D int indices -> rows; 2-D (soft one-hot weights) -> weighted sums. l2-normalised if use_l2_norm."""
        if indices.ndim == 1:
            out = self.embedding(indices)
        elif indices.ndim == 2:
            out = torch.einsum("bd,dn->bn", indices, self.embedding.weight)
        else:
            raise NotImplementedError(indices.shape)
        return F.normalize(out, dim=-1) if self.use_l2_norm else out


def gaussian_posterior(parameters: torch.Tensor) -> dict[str, torch.Tensor]:
    """DiagonalGaussianDistribution: split channels [mean | logvar], clamp logvar to [-30, 20]."""
    mean, logvar = torch.chunk(parameters.float(), 2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    return {"mean": mean, "logvar": logvar, "std": torch.exp(0.5 * logvar)}


# ---------------------------------------------------------------------------- MaskGIT VQGAN (PyTorch port)


class Conv2dSame(nn.Conv2d):
    """TF 'SAME' padding (extra pixel at the bottom/right when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
        (ph, pw) = pads
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _group_norm(cin)
        self.conv1 = Conv2dSame(cin, cout, 3, bias=False)
        self.norm2 = _group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2dSame(cout, cout, 3, bias=False)
        self.has_shortcut = cin != cout
        if self.has_shortcut:
            self.nin_shortcut = Conv2dSame(cout, cout, 1, bias=False)  # cout -> cout: see forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        residual = self.nin_shortcut(h) if self.has_shortcut else x  # quirk: shortcut of the block OUTPUT
        return h + residual


class _Stage(nn.Module):
    """Down or up stage: `block` (res blocks) and the resampling, keys as maskgit_vqgan.py."""

    def __init__(self, cin: int, cout: int, num_res_blocks: int, dropout: float, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, dropout) for i in range(num_res_blocks))
        self.resample = resample
        if resample == "up":
            self.upsample_conv = Conv2dSame(cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.resample == "down":
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        elif self.resample == "up":
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class VQGANEncoder(nn.Module):
    def __init__(self, hidden_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                 num_channels=3, dropout=0.0):  # fmt: skip
        super().__init__()
        mult, levels = tuple(channel_mult), len(channel_mult)
        self.conv_in = Conv2dSame(num_channels, hidden_channels, 3, bias=False)
        in_mult = (1, *mult)
        self.down = nn.ModuleList(
            _Stage(hidden_channels * in_mult[i], hidden_channels * mult[i], num_res_blocks, dropout,
                   "down" if i != levels - 1 else None)
            for i in range(levels)
        )  # fmt: skip
        mid = hidden_channels * mult[-1]
        self.mid = nn.ModuleList(ResnetBlock(mid, mid, dropout) for _ in range(num_res_blocks))
        self.norm_out = _group_norm(mid)
        self.conv_out = Conv2dSame(mid, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in (*self.down, *self.mid):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VQGANDecoder(nn.Module):
    """up[i] works at level i (up[0] the finest, no upsampling); run from the last level down to 0."""

    def __init__(self, hidden_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                 num_channels=3, dropout=0.0):  # fmt: skip
        super().__init__()
        mult, levels = tuple(channel_mult), len(channel_mult)
        top = hidden_channels * mult[-1]
        self.conv_in = Conv2dSame(z_channels, top, 3)
        self.mid = nn.ModuleList(ResnetBlock(top, top, dropout) for _ in range(num_res_blocks))
        self.up = nn.ModuleList(
            _Stage(hidden_channels * mult[min(i + 1, levels - 1)], hidden_channels * mult[i], num_res_blocks, dropout,
                   "up" if i != 0 else None)
            for i in range(levels)
        )  # fmt: skip
        self.norm_out = _group_norm(hidden_channels * mult[0])
        self.conv_out = Conv2dSame(hidden_channels * mult[0], num_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in (*self.mid, *reversed(self.up)):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class PixelQuantizer(nn.Module):
    """maskgit_vqgan.py VectorQuantizer (plain squared-distance VQ, no normalisation)."""

    def __init__(self, num_embeddings: int = 1024, embedding_dim: int = 256, commitment_cost: float = 0.25):
        super().__init__()
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)

    def compute_distances(self, features_nhwc: torch.Tensor) -> torch.Tensor:
        flat = features_nhwc.reshape(-1, self.embedding.weight.shape[1])
        codebook_t = self.embedding.weight.t()
        base = flat.pow(2.0).sum(1, keepdim=True) + codebook_t.pow(2.0).sum(0, keepdim=True)
        return torch.addmm(base, flat, codebook_t, alpha=-2.0)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NCHW features -> (quantized NCHW, indices (B, h*w)) as the official forward (loss omitted)."""
        nhwc = features.permute(0, 2, 3, 1).contiguous()
        indices = self.compute_distances(nhwc).argmin(dim=1)
        zq = self.embedding(indices).view(nhwc.shape).permute(0, 3, 1, 2).contiguous()
        return zq, indices.reshape(nhwc.shape[0], -1)

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) with N a square, or (B, h, w) -> NCHW embeddings."""
        if indices.ndim == 2:
            side = int(math.sqrt(indices.shape[1]))
            indices = indices.reshape(indices.shape[0], side, side)
        b, h, w = indices.shape
        return self.embedding(indices.reshape(b, -1)).reshape(b, h, w, -1).permute(0, 3, 1, 2)


class OfficialVQGANPort(nn.Module):
    """TiTok's PretrainedTokenizer: keys of maskgit-vqgan-imagenet-f16-256.bin (encoder.*, decoder.*,
    quantize.embedding.weight). Defaults are the ImageNet config; shrink it for tests."""

    def __init__(self, hidden_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                 num_embeddings=1024):  # fmt: skip
        super().__init__()
        sizes = dict(hidden_channels=hidden_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                     z_channels=z_channels)  # fmt: skip
        self.encoder = VQGANEncoder(**sizes)
        self.decoder = VQGANDecoder(**sizes)
        self.quantize = PixelQuantizer(num_embeddings, z_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW pixels in [0, 1] -> codes (B, h, w). (The official returns them flattened, (B, h*w).)"""
        features = self.encoder(x)
        _, codes = self.quantize(features)
        return codes.reshape(features.shape[0], features.shape[2], features.shape[3])

    def decode_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(features)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) or (B, h*w) -> NCHW pixels, NOT clamped (PretrainedTokenizer clamps to [0, 1])."""
        return self.decoder(self.quantize.get_codebook_entry(codes))


# ---------------------------------------------------------------------------- TiTok


class OfficialTiTok(nn.Module):
    """modeling/titok.py TiTok: state_dict keys latent_tokens, encoder.*, decoder.*, quantize.embedding.weight
    (vq), pixel_quantize.embedding.weight + pixel_decoder.* (finetune_decoder, default true)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        vq = _vq_config(config)
        self.finetune_decoder = bool(vq.get("finetune_decoder", True))
        self.quantize_mode = vq.get("quantize_mode", "vq")
        if self.quantize_mode not in ("vq", "vae"):
            raise ValueError(f"Unsupported quantize mode {self.quantize_mode}.")
        if self.finetune_decoder and self.quantize_mode != "vq":
            raise ValueError("finetune_decoder needs quantize_mode 'vq' (as the official code).")
        self.encoder = TiTokEncoder(config)
        self.decoder = TiTokDecoder(config)
        self.num_latent_tokens = int(vq["num_latent_tokens"])
        width = self.encoder.width
        self.latent_tokens = nn.Parameter(width**-0.5 * torch.randn(self.num_latent_tokens, width))
        self.apply(_init_titok)
        if self.quantize_mode == "vq":
            # use_l2_norm / commitment_cost are read unconditionally officially; defaulted here for tiny configs
            self.quantize = VectorQuantizer(
                int(vq["codebook_size"]),
                int(vq["token_size"]),
                float(vq.get("commitment_cost", 0.25)),
                bool(vq.get("use_l2_norm", False)),
            )
        if self.finetune_decoder:
            pixel = _pixel_config(vq)
            self.pixel_quantize = PixelQuantizer(int(pixel["num_embeddings"]), int(pixel["z_channels"]))
            self.pixel_decoder = VQGANDecoder(
                int(pixel["hidden_channels"]), tuple(pixel["channel_mult"]), int(pixel["num_res_blocks"]),
                int(pixel["z_channels"]),
            )  # fmt: skip

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NCHW pixels in [0, 1] -> (z (B, token_size, 1, K), info).

        vq: z is the (l2-normalised if use_l2_norm) codebook entry, info["min_encoding_indices"] (B, 1, K).
        vae: z is the posterior MEAN (the official returns a sample), info has "mean", "logvar", "std".
        """
        z = self.encoder(pixel_values=x, latent_tokens=self.latent_tokens)
        if self.quantize_mode == "vae":
            info = gaussian_posterior(z)
            return info["mean"], info
        zq, info = self.quantize(z)
        if self.finetune_decoder:  # stage 2: frozen encoder/quantizer, losses zeroed
            for key in ("quantizer_loss", "commitment_loss", "codebook_loss"):
                info[key] = info[key] * 0
        return zq, info

    def decode(self, z_quantized: torch.Tensor) -> torch.Tensor:
        decoded = self.decoder(z_quantized)
        if self.finetune_decoder:  # soft proxy-code embedding -> MaskGIT-VQGAN decoder
            soft = torch.einsum("nchw,cd->ndhw", decoded.softmax(1), self.pixel_quantize.embedding.weight)
            decoded = self.pixel_decoder(soft)
        return decoded

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """vq: int tokens (B, K) or (B, 1, K); vae: z (B, token_size, 1, K). -> NCHW (unclamped)."""
        if self.quantize_mode == "vae":
            return self.decode(tokens)
        if tokens.ndim == 3:
            tokens = tokens.squeeze(1)
        b, k = tokens.shape
        z = self.quantize.get_codebook_entry(tokens.reshape(-1)).reshape(b, 1, k, -1)
        return self.decode(z.permute(0, 3, 1, 2).contiguous())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, info = self.encode(x)
        return self.decode(z), info


# ---------------------------------------------------------------------------- generators


class _ConditionedGenerator(nn.Module):
    """Config fields and the class-token handling shared by ImageBert and UViTBert."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        gen = config["model"]["generator"]
        self.codebook_size = int(config["model"]["vq_model"]["codebook_size"])
        self.num_classes = int(gen["condition_num_classes"])
        seq_len = gen["image_seq_len"]
        if isinstance(seq_len, str):  # un-resolved "${model.vq_model.num_latent_tokens}"
            seq_len = config["model"]["vq_model"]["num_latent_tokens"]
        self.image_seq_len = int(seq_len)
        self.mask_token_id = self.codebook_size
        self.hidden_size = int(gen["hidden_size"])
        self.num_hidden_layers = int(gen["num_hidden_layers"])
        self.num_attention_heads = int(gen["num_attention_heads"])
        self.intermediate_size = int(gen["intermediate_size"])
        self.vocab_size = self.codebook_size + self.num_classes + 2

    def _prefix_condition(self, input_ids: torch.Tensor, condition: torch.Tensor, cond_drop_prob: float):
        """[class token | tokens]: class c -> codebook_size + 1 + c; dropped -> codebook_size + num_classes + 1."""
        drop = torch.rand_like(condition, dtype=torch.float) < cond_drop_prob
        condition = condition + self.codebook_size + 1
        condition[drop] = self.num_classes + self.codebook_size + 1
        return torch.cat([condition.view(condition.shape[0], -1), input_ids.view(input_ids.shape[0], -1)], dim=1)


class _BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = self.dropout((q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)).softmax(-1))
        return (probs @ v).transpose(1, 2).reshape(b, n, d)


class _BertDenseNorm(nn.Module):
    """BertSelfOutput / BertOutput: LayerNorm(dropout(dense(h)) + residual) (post-LN)."""

    def __init__(self, cin: int, cout: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class _BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, attn_drop: float, eps: float):
        super().__init__()
        self.self = _BertSelfAttention(hidden, heads, attn_drop)
        self.output = _BertDenseNorm(hidden, hidden, dropout, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class _BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # HF "gelu" = exact erf GELU


class _BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, dropout: float, attn_drop: float, eps: float):
        super().__init__()
        self.attention = _BertAttention(hidden, heads, dropout, attn_drop, eps)
        self.intermediate = _BertIntermediate(hidden, inter)
        self.output = _BertDenseNorm(inter, hidden, dropout, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class _BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_positions: int, dropout: float, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        # HF's position_ids / token_type_ids buffers are non-persistent: computed on the fly here.

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(input_ids))
        x = x + self.position_embeddings(positions)[None]
        return self.dropout(self.LayerNorm(x))


class _BertEncoder(nn.Module):
    def __init__(self, layers: list[_BertLayer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class _BertModel(nn.Module):
    """transformers.BertModel(add_pooling_layer=False), no attention mask (every position attends)."""

    def __init__(self, vocab, hidden, layers, heads, inter, dropout, attn_drop, max_positions, eps=1e-12):
        super().__init__()
        self.embeddings = _BertEmbeddings(vocab, hidden, max_positions, dropout, eps)
        self.encoder = _BertEncoder([_BertLayer(hidden, heads, inter, dropout, attn_drop, eps) for _ in range(layers)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids))


def _init_bert(module: nn.Module) -> None:
    """BertPreTrainedModel._init_weights with initializer_range 0.02."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class OfficialImageBert(_ConditionedGenerator):
    """modeling/maskgit.py ImageBert: keys model.embeddings.*, model.encoder.layer.{i}.*, model.lm_head.*."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        gen = config["model"]["generator"]
        self.model = _BertModel(
            self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads,
            self.intermediate_size, float(gen.get("dropout", 0.1)), float(gen.get("attn_drop", 0.1)),
            self.image_seq_len + 1,
        )  # fmt: skip
        self.model.lm_head = nn.Linear(self.hidden_size, self.codebook_size, bias=True)
        self.model.apply(_init_bert)

    def forward(self, input_ids: torch.Tensor, condition: torch.Tensor, cond_drop_prob: float = 0.1) -> torch.Tensor:
        """input_ids (B, K) in [0, codebook_size] (codebook_size = [MASK]), condition (B,) class ids
        -> logits (B, K, codebook_size). cond_drop_prob 0 / 1 is deterministic (conditional / null class)."""
        hidden = self.model(self._prefix_condition(input_ids, condition, cond_drop_prob))
        return self.model.lm_head(hidden[:, 1:])


class _UViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # 'B L (K H D) -> K B H L D', K=3 (the official 'flash' path, computed in float32)
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).float()
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _UViTBlock(nn.Module):
    """Pre-LN block (LayerNorm eps 1e-5), no dropout; out-blocks first fuse the skip: skip_linear(cat[x, skip])."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _UViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, mlp_hidden)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class OfficialUViTBert(_ConditionedGenerator):
    """modeling/maskgit.py UViTBert: keys embeddings.weight, pos_embed, in_blocks.{i}.*, mid_block.*,
    out_blocks.{i}.* (with skip_linear), norm.*, lm_head.*. num_hidden_layers // 2 in- and out-blocks."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        h, heads = self.hidden_size, self.num_attention_heads
        mlp_hidden = int(h * (self.intermediate_size / h))
        half = self.num_hidden_layers // 2
        self.embeddings = nn.Embedding(self.vocab_size, h)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, self.image_seq_len + 1, h), 0.0, 0.02))
        self.in_blocks = nn.ModuleList(_UViTBlock(h, heads, mlp_hidden) for _ in range(half))
        self.mid_block = _UViTBlock(h, heads, mlp_hidden)
        self.out_blocks = nn.ModuleList(_UViTBlock(h, heads, mlp_hidden, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(h)
        self.lm_head = nn.Linear(h, self.codebook_size, bias=True)
        self.apply(_init_titok)  # trunc-normal 0.02 linears/embeddings, zero biases, LayerNorm 1/0

    def forward(self, input_ids: torch.Tensor, condition: torch.Tensor, cond_drop_prob: float = 0.1) -> torch.Tensor:
        """Same contract as OfficialImageBert.forward."""
        ids = self._prefix_condition(input_ids, condition, cond_drop_prob)
        x = self.embeddings(ids)
        x = x + self.pos_embed[:, : x.shape[1]]
        skips = []
        for block in self.in_blocks:
            x = block(x)
            skips.append(x)
        x = self.mid_block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())
        return self.lm_head(self.norm(x)[:, 1:])
