r"""Official MaskGIT generator checkpoints (ImageBert ViT, UViTBert) <-> our MaskGITBert / MaskGITUViT.

A published generator is a hub directory (config.json + model.safetensors, or
pytorch_model.bin) or an official `generator_titok_*.bin` with its infer .yaml. The
model is derived from `model.generator` (model_type ViT|UViT, hidden_size,
num_hidden_layers, num_attention_heads, intermediate_size, dropout, attn_drop,
image_seq_len, condition_num_classes) and `model.vq_model.codebook_size`; the sampler
settings (num_steps, guidance_scale, randomize_temperature, guidance_decay) come along.

ImageBert is HF BertModel (no pooler) under `model.` plus `model.lm_head`: its separate
query / key / value Linears fill our fused qkv kernel. HF's non-parameter buffers
(`model.embeddings.position_ids`, `token_type_ids`), which older transformers releases
saved, are accepted and dropped.

`titok_jax.Generator.load(DIR, tokenizer=...)` reads one directly; `python -m titok_jax.export
--official_generator=DIR --tokenizer=TOKENIZER --output=BUNDLE` turns it into a generator bundle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from titok_jax.convert import rar as convert_rar
from titok_jax.convert import torch_layout as tl
from titok_jax.convert.titok import CONFIG_NAME, hub_weights_file, read_config_file
from titok_jax.models.maskgit import MaskGITBert, MaskGITUViT, maskgit_from_config

Tree = dict[str, Any]
HF_BUFFERS = ("model.embeddings.position_ids", "model.embeddings.token_type_ids")
_ARCHITECTURES = {"vit": "vit", "uvit": "uvit"}
_SAMPLER_KEYS = {
    "num_steps": "num_steps",
    "guidance_scale": "guidance_scale",
    "randomize_temperature": "randomize_temperature",
    "guidance_decay": "guidance_schedule",
}


def fields_from_hub_config(
    config: Mapping[str, Any], source: str = CONFIG_NAME
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our generator fields incl. `architecture`, sampler settings) from an official config tree."""
    try:
        generator = config["model"]["generator"]
        codebook_size = int(config["model"]["vq_model"]["codebook_size"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{source}: not a MaskGIT generator config (needs model.generator and model.vq_model.codebook_size)."
        ) from err
    model_type = str(generator.get("model_type", "ViT")).lower()
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"{source}: model.generator.model_type={generator.get('model_type')!r} is not ViT or UViT.")

    def need(key: str) -> Any:
        if key not in generator:
            raise ValueError(f"{source}: model.generator has no {key!r}.")
        return generator[key]

    seq_len = need("image_seq_len")
    if isinstance(seq_len, str):  # the infer yamls interpolate ${model.vq_model.num_latent_tokens}
        seq_len = config["model"]["vq_model"]["num_latent_tokens"]
    fields: dict[str, Any] = {
        "architecture": _ARCHITECTURES[model_type],
        "codebook_size": codebook_size,
        "num_classes": int(need("condition_num_classes")),
        "num_tokens": int(seq_len),
        "hidden_size": int(need("hidden_size")),
        "depth": int(need("num_hidden_layers")),
        "num_heads": int(need("num_attention_heads")),
        "intermediate_size": int(need("intermediate_size")),
    }
    if fields["architecture"] == "vit":
        fields["dropout"] = float(generator.get("dropout", 0.1))
        fields["attention_dropout"] = float(generator.get("attn_drop", 0.1))
    sampling = {ours: generator[theirs] for theirs, ours in _SAMPLER_KEYS.items() if theirs in generator}
    return fields, sampling


def _bert_entries(model: MaskGITBert) -> list[tl.Entry]:
    hidden, heads = model.hidden_size, model.num_heads
    vocab = model.codebook_size + model.num_classes + 2
    emb = "model.embeddings"
    entries = tl.tensor(f"{emb}.word_embeddings.weight", ("word_embeddings", "embedding"), (vocab, hidden))
    entries += tl.tensor(
        f"{emb}.position_embeddings.weight", ("position_embeddings", "embedding"), (model.num_tokens + 1, hidden)
    )
    entries += tl.tensor(f"{emb}.token_type_embeddings.weight", ("token_type_embeddings", "embedding"), (2, hidden))
    entries += tl.norm(f"{emb}.LayerNorm", ("embedding_norm",), hidden)
    head_dim = hidden // heads
    for i in range(model.depth):
        prefix, layer = f"model.encoder.layer.{i}", (f"layer_{i}",)
        for slot, name in enumerate(("query", "key", "value")):
            key = f"{prefix}.attention.self.{name}"
            entries += [
                tl.Entry(
                    f"{key}.weight", (*layer, "attn", "qkv_kernel"), (hidden, hidden), (1, 0), (hidden, heads, head_dim),
                    slot=(1, slot),
                ),
                tl.Entry(f"{key}.bias", (*layer, "attn", "qkv_bias"), (hidden,), None, (heads, head_dim), slot=(0, slot)),
            ]  # fmt: skip
        entries += tl.attention_output(f"{prefix}.attention.output.dense", (*layer, "attn"), hidden, heads)
        entries += tl.norm(f"{prefix}.attention.output.LayerNorm", (*layer, "attn_norm"), hidden)
        entries += tl.linear(f"{prefix}.intermediate.dense", (*layer, "mlp", "fc"), model.intermediate_size, hidden)
        entries += tl.linear(f"{prefix}.output.dense", (*layer, "mlp", "proj"), hidden, model.intermediate_size)
        entries += tl.norm(f"{prefix}.output.LayerNorm", (*layer, "mlp_norm"), hidden)
    entries += tl.linear("model.lm_head", ("lm_head",), model.codebook_size, hidden)
    return entries


def _uvit_block(prefix: str, path: tuple[str, ...], model: MaskGITUViT, skip: bool) -> list[tl.Entry]:
    hidden, heads = model.hidden_size, model.num_heads
    head_dim = hidden // heads
    entries = tl.linear(f"{prefix}.skip_linear", (*path, "skip_linear"), hidden, 2 * hidden) if skip else []
    entries += tl.norm(f"{prefix}.norm1", (*path, "norm1"), hidden)
    entries += [
        tl.Entry(f"{prefix}.attn.qkv.weight", (*path, "attn", "qkv_kernel"), (3 * hidden, hidden), (1, 0), (hidden, 3, heads, head_dim))
    ]  # fmt: skip
    entries += tl.attention_output(f"{prefix}.attn.proj", (*path, "attn"), hidden, heads)
    entries += tl.norm(f"{prefix}.norm2", (*path, "norm2"), hidden)
    entries += tl.linear(f"{prefix}.mlp.fc1", (*path, "mlp", "fc"), model.intermediate_size, hidden)
    entries += tl.linear(f"{prefix}.mlp.fc2", (*path, "mlp", "proj"), hidden, model.intermediate_size)
    return entries


def _uvit_entries(model: MaskGITUViT) -> list[tl.Entry]:
    hidden = model.hidden_size
    vocab = model.codebook_size + model.num_classes + 2
    entries = tl.tensor("embeddings.weight", ("embeddings", "embedding"), (vocab, hidden))
    entries += tl.tensor("pos_embed", ("pos_embed",), (1, model.num_tokens + 1, hidden), (model.num_tokens + 1, hidden))
    for i in range(model.depth // 2):
        entries += _uvit_block(f"in_blocks.{i}", (f"in_block_{i}",), model, skip=False)
    entries += _uvit_block("mid_block", ("mid_block",), model, skip=False)
    for i in range(model.depth // 2):
        entries += _uvit_block(f"out_blocks.{i}", (f"out_block_{i}",), model, skip=True)
    entries += tl.norm("norm", ("norm",), hidden)
    entries += tl.linear("lm_head", ("lm_head",), model.codebook_size, hidden)
    return entries


def generator_entries(model: MaskGITBert | MaskGITUViT) -> list[tl.Entry]:
    return _bert_entries(model) if isinstance(model, MaskGITBert) else _uvit_entries(model)


def expected_params(model: MaskGITBert | MaskGITUViT) -> Tree:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    ids = jax.ShapeDtypeStruct((1, model.num_tokens), jnp.int32)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    return nn.meta.unbox(jax.eval_shape(lambda i, c: model.init(jax.random.PRNGKey(0), i, c), ids, labels))["params"]


def params_from_state_dict(
    model: MaskGITBert | MaskGITUViT, state: Mapping[str, np.ndarray], source: str = "state dict"
) -> Tree:
    from titok_jax.trees import check_tree_matches

    kind = "ImageBert (ViT)" if isinstance(model, MaskGITBert) else "UViTBert"
    params = tl.state_dict_to_tree(
        state,
        generator_entries(model),
        f"MaskGIT {kind} generator {source}",
        ignored_keys=HF_BUFFERS,
        hint="Check that the config belongs to these weights (model_type, sizes, image_seq_len, codebook_size).",
    )
    check_tree_matches(params, expected_params(model), f"Generator weights from {source}")
    return {"params": params}


def state_dict_from_params(model: MaskGITBert | MaskGITUViT, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return tl.tree_to_state_dict(variables["params"], generator_entries(model))


def load_official_generator(
    path: str | os.PathLike, config: str | os.PathLike | None = None
) -> tuple[Any, Tree, dict[str, Any], dict[str, Any]]:
    """(model, {"params"}, fields, sampler settings) of a hub directory, or a weights file + its config, or an
    official RAR weights file (no config)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        config = config or os.path.join(path, CONFIG_NAME)
        weights = hub_weights_file(path)
    else:
        if config is None:
            state = tl.read_state_dict(path, drop_suffixes=HF_BUFFERS)
            if convert_rar.is_rar_state_dict(state):  # RAR files carry no config: the tensors say the sizes
                return convert_rar.load_official_rar(path, state)
            raise ValueError(f"{path!r} is a weights file; give its config (config.json or the official infer .yaml).")
        weights = path
    config = os.fspath(config)
    if not os.path.isfile(config):
        raise FileNotFoundError(f"No generator config at {config!r}.")
    tree = read_config_file(config)
    fields, sampling = fields_from_hub_config(tree, config)
    model = maskgit_from_config(fields)
    variables = params_from_state_dict(model, tl.read_state_dict(weights, drop_suffixes=HF_BUFFERS), repr(weights))
    return model, variables, fields, sampling


if __name__ == "__main__":
    # This module converts; writing a bundle belongs to the export command (a bundle carries its tokenizer).
    raise SystemExit(
        "python -m titok_jax.convert.generator moved: run python -m titok_jax.export "
        "--official_generator=DIR_OR_BIN [--official_config=YAML] --tokenizer=TOKENIZER --output=BUNDLE"
    )
