r"""Official TiTok tokenizers (hub directories) <-> our TiTok fields and parameter trees.

A published tokenizer is a directory with `config.json` (the official OmegaConf tree; the
model is `model.vq_model`, the image size `dataset.preprocessing.crop_size`) and
`model.safetensors` (or `pytorch_model.bin`, which needs torch). Everything about our
model is derived from config.json, so nothing has to be typed twice:

  vit_{enc,dec}_model_size small|base|large   -> {encoder,decoder}_{width,depth,num_heads}
  vit_{enc,dec}_patch_size, num_latent_tokens, token_size, codebook_size, use_l2_norm,
  commitment_cost, quantize_mode (vq|vae)      -> the same fields
  is_legacy (default true)                     -> legacy_two_stage
  finetune_decoder (default true)              -> with_pixel_decoder (MaskGIT VQGAN decoder)

Extension keys (titok_jax only; the official code ignores them and only knows the three
named sizes): `vit_{enc,dec}_{width,depth,num_heads}` override a named size, and
`pixel_decoder: {hidden_channels, channel_mult, num_res_blocks, z_channels, num_embeddings}`
overrides the official ImageNet pixel decoder. Exports write them only for models the
official code cannot build, and only when asked to (`allow_custom_sizes`).

Key layout: see ../../shared spec ("Checkpoint keys"); `titok_entries` lists every tensor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from titok_jax.convert import torch_layout as tl
from titok_jax.convert.vqgan import decoder_entries
from titok_jax.files import atomic_write
from titok_jax.models.titok import TITOK_FIELDS, VIT_SIZES, TiTok, titok_from_config

Tree = dict[str, Any]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_NAME = "pytorch_model.bin"
# The pixel decoder every released two-stage tokenizer uses (the MaskGIT VQGAN ImageNet decoder).
OFFICIAL_PIXEL_DECODER = {
    "hidden_channels": 128,
    "channel_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "z_channels": 256,
    "num_embeddings": 1024,
}
_PIXEL_FIELDS = {
    "hidden_channels": "pixel_decoder_filters",
    "channel_mult": "pixel_decoder_channel_multipliers",
    "num_res_blocks": "pixel_decoder_num_res_blocks",
    "z_channels": "pixel_codebook_dim",
    "num_embeddings": "proxy_codebook_size",
}
_SIZE_KEYS = ("width", "depth", "num_heads")


# ---------------------------------------------------------------------------- config.json <-> fields


def _require(mapping: Mapping[str, Any], key: str, where: str, source: str) -> Any:
    if key not in mapping:
        raise ValueError(f"{source}: {where} has no {key!r}; a TiTok config.json needs it.")
    return mapping[key]


def _vit_size(vq: Mapping[str, Any], part: str, source: str) -> dict[str, int]:
    """{part_width, part_depth, part_num_heads} from vit_{enc,dec}_model_size and optional overrides."""
    short = {"encoder": "enc", "decoder": "dec"}[part]
    size = {}
    name = vq.get(f"vit_{short}_model_size")
    if name is not None:
        if name not in VIT_SIZES:
            raise ValueError(
                f"{source}: model.vq_model.vit_{short}_model_size={name!r} is not one of {sorted(VIT_SIZES)}."
            )
        size = dict(zip(_SIZE_KEYS, VIT_SIZES[name], strict=True))
    for key in _SIZE_KEYS:
        if f"vit_{short}_{key}" in vq:
            size[key] = int(vq[f"vit_{short}_{key}"])
    missing = [key for key in _SIZE_KEYS if key not in size]
    if missing:
        raise ValueError(f"{source}: model.vq_model has no vit_{short}_model_size (small, base or large).")
    return {f"{part}_{key}": value for key, value in size.items()}


def fields_from_hub_config(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """Our TiTok fields from an official config.json tree (see the module docstring)."""
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise ValueError(f"{source}: not a TiTok config (no top-level 'model' with a 'vq_model').")
    vq = _require(config["model"], "vq_model", "model", source)
    crop = config.get("dataset", {}).get("preprocessing", {}).get("crop_size")
    if crop is None:
        raise ValueError(f"{source}: no dataset.preprocessing.crop_size (the image size the tokenizer was built for).")
    mode = vq.get("quantize_mode", "vq")
    finetune_decoder = bool(vq.get("finetune_decoder", True))
    if finetune_decoder and mode != "vq":
        raise ValueError(f"{source}: finetune_decoder=true needs quantize_mode 'vq' (as in the official code).")
    fields: dict[str, Any] = {
        "image_size": int(crop),
        "encoder_patch_size": int(_require(vq, "vit_enc_patch_size", "model.vq_model", source)),
        "decoder_patch_size": int(_require(vq, "vit_dec_patch_size", "model.vq_model", source)),
        **_vit_size(vq, "encoder", source),
        **_vit_size(vq, "decoder", source),
        "num_latent_tokens": int(_require(vq, "num_latent_tokens", "model.vq_model", source)),
        "token_size": int(_require(vq, "token_size", "model.vq_model", source)),
        "quantize_mode": mode,
        "legacy_two_stage": bool(vq.get("is_legacy", True)),
        "with_pixel_decoder": finetune_decoder,
    }
    if mode == "vq":
        fields["codebook_size"] = int(_require(vq, "codebook_size", "model.vq_model", source))
        fields["use_l2_norm"] = bool(vq.get("use_l2_norm", False))
        fields["commitment_cost"] = float(vq.get("commitment_cost", 0.25))
    pixel = {**OFFICIAL_PIXEL_DECODER, **vq.get("pixel_decoder", {})}
    for key, field in _PIXEL_FIELDS.items():
        fields[field] = tuple(pixel[key]) if key == "channel_mult" else int(pixel[key])
    return fields


def _size_name(width: int, depth: int, heads: int) -> str | None:
    for name, size in VIT_SIZES.items():
        if size == (width, depth, heads):
            return name
    return None


def hub_config_from_fields(model: TiTok, allow_custom_sizes: bool = False) -> dict[str, Any]:
    """The official config.json tree for `model` (inverse of fields_from_hub_config)."""
    if model.quantize_mode not in ("vq", "vae"):
        raise ValueError(
            f"The official TiTok layout has VQ and VAE tokenizers only, not quantize_mode={model.quantize_mode!r}: "
            "export it as a titok_jax bundle (--format=bundle, the default)."
        )
    if model.token_dropout != "none":
        raise ValueError(
            "The official TiTok layout has no variable-length (token_dropout) tokenizers: export it as a titok_jax "
            "bundle (--format=bundle, the default)."
        )
    vq: dict[str, Any] = {}
    if model.quantize_mode == "vq":
        vq.update(
            codebook_size=model.codebook_size, use_l2_norm=model.use_l2_norm, commitment_cost=model.commitment_cost
        )
    vq.update(token_size=model.token_size, quantize_mode=model.quantize_mode)
    custom = []
    for part, short in (("encoder", "enc"), ("decoder", "dec")):
        size = tuple(getattr(model, f"{part}_{key}") for key in _SIZE_KEYS)
        name = _size_name(*size)
        if name is None:
            custom.append(f"{part} width/depth/heads {size}")
            vq.update({f"vit_{short}_{key}": value for key, value in zip(_SIZE_KEYS, size, strict=True)})
            name = "small"  # placeholder the extension keys override
        vq[f"vit_{short}_model_size"] = name
    vq.update(
        vit_enc_patch_size=model.encoder_patch_size,
        vit_dec_patch_size=model.decoder_patch_size,
        num_latent_tokens=model.num_latent_tokens,
        finetune_decoder=model.with_pixel_decoder,
        is_legacy=model.legacy_two_stage,
    )
    if model.legacy_two_stage or model.with_pixel_decoder:
        pixel = {key: getattr(model, field) for key, field in _PIXEL_FIELDS.items()}
        pixel["channel_mult"] = list(pixel["channel_mult"])
        if pixel != OFFICIAL_PIXEL_DECODER:
            # Stage-1 models only need the proxy codebook size; with a pixel decoder everything counts.
            relevant = pixel if model.with_pixel_decoder else {"num_embeddings": pixel["num_embeddings"]}
            if any(OFFICIAL_PIXEL_DECODER[k] != v for k, v in relevant.items()):
                custom.append(f"pixel decoder {relevant}")
                vq["pixel_decoder"] = pixel
    if custom and not allow_custom_sizes:
        raise ValueError(
            "The official TiTok code only builds ViTs of the named sizes "
            f"({', '.join(f'{k} {v}' for k, v in VIT_SIZES.items())}) and the ImageNet MaskGIT pixel decoder "
            f"{OFFICIAL_PIXEL_DECODER}; this model has {'; '.join(custom)}. Export it as a titok_jax bundle "
            "(--format=bundle) instead, or pass allow_custom_sizes=True to write titok_jax's extension keys."
        )
    return {"model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": model.image_size}}}


# ---------------------------------------------------------------------------- key map


def _vit_entries(torch_prefix: str, path: tuple[str, ...], width: int, depth: int, heads: int) -> list[tl.Entry]:
    entries = []
    for i in range(depth):
        prefix, block = f"{torch_prefix}.transformer.{i}", (*path, "transformer", f"block_{i}")
        entries += tl.norm(f"{prefix}.ln_1", (*block, "ln_1"), width)
        entries += tl.fused_attention(f"{prefix}.attn", (*block, "attn"), width, heads)
        entries += tl.norm(f"{prefix}.ln_2", (*block, "ln_2"), width)
        entries += tl.linear(f"{prefix}.mlp.c_fc", (*block, "mlp", "fc"), 4 * width, width)
        entries += tl.linear(f"{prefix}.mlp.c_proj", (*block, "mlp", "proj"), width, 4 * width)
    return entries


def titok_entries(model: TiTok) -> list[tl.Entry]:
    """Every tensor of the official TiTok with `model`'s fields, mapped onto our params."""
    width, k = model.encoder_width, model.num_latent_tokens
    grid = model.image_size // model.encoder_patch_size
    entries = tl.tensor("latent_tokens", ("latent_tokens",), (k, width))
    enc = ("encoder",)
    entries += tl.conv("encoder.patch_embed", (*enc, "patch_embed"), width, 3, model.encoder_patch_size)
    entries += tl.tensor("encoder.class_embedding", (*enc, "class_embedding"), (1, width))
    entries += tl.tensor("encoder.positional_embedding", (*enc, "positional_embedding"), (grid * grid + 1, width))
    entries += tl.tensor(
        "encoder.latent_token_positional_embedding", (*enc, "latent_token_positional_embedding"), (k, width)
    )
    entries += tl.norm("encoder.ln_pre", (*enc, "ln_pre"), width)
    entries += _vit_entries("encoder", enc, width, model.encoder_depth, model.encoder_num_heads)
    entries += tl.norm("encoder.ln_post", (*enc, "ln_post"), width)
    token_channels = model.token_size * (2 if model.quantize_mode == "vae" else 1)
    entries += tl.conv1x1_as_dense("encoder.conv_out", (*enc, "conv_out"), token_channels, width)

    width, dec = model.decoder_width, ("decoder",)
    grid = model.image_size // model.decoder_patch_size
    entries += tl.linear("decoder.decoder_embed", (*dec, "decoder_embed"), width, model.token_size)
    entries += tl.tensor("decoder.class_embedding", (*dec, "class_embedding"), (1, width))
    entries += tl.tensor("decoder.positional_embedding", (*dec, "positional_embedding"), (grid * grid + 1, width))
    entries += tl.tensor("decoder.mask_token", (*dec, "mask_token"), (1, 1, width))
    entries += tl.tensor(
        "decoder.latent_token_positional_embedding", (*dec, "latent_token_positional_embedding"), (k, width)
    )
    entries += tl.norm("decoder.ln_pre", (*dec, "ln_pre"), width)
    entries += _vit_entries("decoder", dec, width, model.decoder_depth, model.decoder_num_heads)
    entries += tl.norm("decoder.ln_post", (*dec, "ln_post"), width)
    if model.legacy_two_stage:
        entries += tl.conv1x1_as_dense("decoder.ffn.0", (*dec, "ffn_hidden"), 2 * width, width)
        entries += tl.conv1x1_as_dense("decoder.ffn.2", (*dec, "ffn_logits"), model.proxy_codebook_size, 2 * width)
    else:
        patch = model.decoder_patch_size
        entries += tl.conv1x1_as_dense("decoder.ffn.0", (*dec, "ffn_pixels"), patch * patch * 3, width)
        entries += tl.conv("decoder.conv_out", (*dec, "conv_out"), 3, 3, 3)

    if model.quantize_mode == "vq":
        entries += tl.tensor(
            "quantize.embedding.weight", ("quantize", "codebook"), (model.codebook_size, model.token_size)
        )
    if model.with_pixel_decoder:
        entries += tl.tensor(
            "pixel_quantize.embedding.weight",
            ("pixel_quantize", "codebook"),
            (model.proxy_codebook_size, model.pixel_codebook_dim),
        )
        entries += decoder_entries(
            "pixel_decoder",
            ("pixel_decoder",),
            model.pixel_decoder_filters,
            tuple(model.pixel_decoder_channel_multipliers),
            model.pixel_decoder_num_res_blocks,
            model.pixel_codebook_dim,
        )
    return entries


def expected_params(model: TiTok) -> Tree:
    """Our model's param tree as ShapeDtypeStructs (no memory, no compile)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    images = jax.ShapeDtypeStruct((1, *model.image_shape), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images))["params"]


# ---------------------------------------------------------------------------- state dicts and directories


def params_from_state_dict(model: TiTok, state: Mapping[str, np.ndarray], source: str = "state dict") -> Tree:
    """An official TiTok state dict -> our {"params": ...}, every key and shape checked both ways."""
    from titok_jax.trees import check_tree_matches

    params = tl.state_dict_to_tree(
        state,
        titok_entries(model),
        f"TiTok ({_describe(model)}) {source}",
        hint="Check that config.json belongs to these weights (variant, token count, codebook, finetune_decoder).",
    )
    check_tree_matches(params, expected_params(model), f"TiTok weights from {source}")
    return {"params": params}


def state_dict_from_params(model: TiTok, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our {"params": ...} -> the official state dict (exact inverse of params_from_state_dict)."""
    return tl.tree_to_state_dict(variables["params"], titok_entries(model))


def _describe(model: TiTok) -> str:
    form = "two-stage" if model.legacy_two_stage else "single-stage"
    return f"{form} {model.quantize_mode.upper()}, {model.num_latent_tokens} tokens"


def is_hub_directory(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), CONFIG_NAME))


def read_hub_config(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path!r} is not valid JSON: {err}") from err


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """An official config tree from config.json or an official infer / training .yaml."""
    path = os.fspath(path)
    if not path.endswith((".yaml", ".yml")):
        return read_hub_config(path)
    try:
        import yaml
    except ImportError as err:
        raise ImportError(f"Reading {path!r} needs PyYAML (`pip install pyyaml`), or pass a config.json.") from err
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path!r} is not valid YAML: {err}") from err


def hub_weights_file(directory: str) -> str:
    for name in (SAFETENSORS_NAME, TORCH_NAME):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"{directory!r} has a {CONFIG_NAME} but no {SAFETENSORS_NAME} or {TORCH_NAME} next to it "
        "(a hub tokenizer directory holds both)."
    )


def load_hub_tokenizer(directory: str | os.PathLike, weights: str | None = None) -> tuple[TiTok, Tree]:
    """(model, {"params": ...}) of an official hub directory (config.json + model.safetensors / .bin)."""
    directory = os.fspath(directory)
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"No {CONFIG_NAME} in {directory!r}; an official tokenizer directory holds one.")
    model = titok_from_config(fields_from_hub_config(read_hub_config(config_path), config_path))
    weights = weights or hub_weights_file(directory)
    return model, params_from_state_dict(model, tl.read_state_dict(weights), repr(weights))


def save_hub_tokenizer(
    model: TiTok,
    variables: Mapping[str, Any],
    directory: str | os.PathLike,
    dtype: Any = np.float32,
    allow_custom_sizes: bool = False,
    extra_config: Mapping[str, Any] | None = None,
) -> str:
    """Writes config.json + model.safetensors (official keys) that the official `from_pretrained` loads."""
    directory = os.fspath(directory)
    config = hub_config_from_fields(model, allow_custom_sizes)  # refuses before anything is written
    config.update(extra_config or {})
    state = {k: v.astype(dtype) for k, v in state_dict_from_params(model, variables).items()}
    os.makedirs(directory, exist_ok=True)
    tl.save_safetensors(state, os.path.join(directory, SAFETENSORS_NAME), metadata={"format": "pt"})
    _write_json(config, os.path.join(directory, CONFIG_NAME))
    return directory


def _write_json(value: Any, path: str) -> None:
    with atomic_write(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)


def model_fields(model: TiTok) -> dict[str, Any]:
    """JSON-able fields of a TiTok (tuples as lists, dtypes as names)."""
    fields = {}
    for name in TITOK_FIELDS:
        value = getattr(model, name)
        if name == "dtype":
            value = np.dtype(value).name
        elif isinstance(value, tuple):
            value = list(value)
        fields[name] = value
    return fields
