r"""Official RAR checkpoints (`rar_{b,l,xl,xxl}.bin`, a plain state dict of `modeling/rar.py`'s RAR) <-> our RAR.

The files carry no config: the model is read off the tensors (width from cls_token, depth from the block
count, head_dim from q_norm, sequence length from timesteps_embeddings (N + 100 rows), codes from lm_head,
classes from the embedding table (V + 1 + C + 1 rows), MLP width from fc1). The sampler settings of the four
releases (README_RAR) come with a recognised size; `Generator.load(FILE, tokenizer=...)` reads one directly.
qkv rows are [q; k; v], each head-major: our fused (D, 3, heads, head_dim) kernel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from titok_jax.convert import torch_layout as tl
from titok_jax.models.rar import POSITION_ROWS_EXTRA, RAR, RAR_SIZES, TIMESTEP_ROWS_EXTRA

Tree = dict[str, Any]
# README_RAR's sampler settings per size (temperature, guidance scale, guidance power).
RELEASE_SAMPLING = {
    "B": dict(temperature=1.0, guidance_scale=16.0, guidance_power=2.75),
    "L": dict(temperature=1.02, guidance_scale=15.5, guidance_power=2.5),
    "XL": dict(temperature=1.02, guidance_scale=6.9, guidance_power=1.5),
    "XXL": dict(temperature=1.02, guidance_scale=8.0, guidance_power=1.2),
}
REQUIRED_KEYS = (
    "cls_token",
    "embeddings.weight",
    "timesteps_embeddings",
    "lm_head.weight",
    "blocks.0.attn.q_norm.weight",
)


def rar_entries(model: RAR) -> list[tl.Entry]:
    width, heads, head_dim = model.hidden_size, model.num_heads, model.head_dim
    rows = model.num_tokens + POSITION_ROWS_EXTRA
    entries = tl.tensor("cls_token", ("cls_token",), (1, 1, width), (1, width))
    entries += tl.tensor("embeddings.weight", ("embeddings", "embedding"), (model.vocab_size, width))
    entries += tl.tensor("pos_embed", ("pos_embed",), (1, rows, width), (rows, width))
    entries += tl.tensor("target_aware_pos_embed", ("target_aware_pos_embed",), (1, rows, width), (rows, width))
    steps = model.num_tokens + TIMESTEP_ROWS_EXTRA
    entries += tl.tensor("timesteps_embeddings", ("timesteps_embeddings",), (1, steps, width), (steps, width))
    for i in range(model.depth):
        prefix, path = f"blocks.{i}", (f"block_{i}",)
        entries += tl.norm(f"{prefix}.norm1", (*path, "norm1"), width)
        entries += [
            tl.Entry(f"{prefix}.attn.qkv.weight", (*path, "attn", "qkv_kernel"), (3 * width, width), (1, 0), (width, 3, heads, head_dim)),
            tl.Entry(f"{prefix}.attn.qkv.bias", (*path, "attn", "qkv_bias"), (3 * width,), None, (3, heads, head_dim)),
        ]  # fmt: skip
        entries += tl.norm(f"{prefix}.attn.q_norm", (*path, "attn", "q_norm"), head_dim)
        entries += tl.norm(f"{prefix}.attn.k_norm", (*path, "attn", "k_norm"), head_dim)
        entries += tl.attention_output(f"{prefix}.attn.proj", (*path, "attn"), width, heads)
        entries += tl.norm(f"{prefix}.norm2", (*path, "norm2"), width)
        entries += tl.linear(f"{prefix}.mlp.fc1", (*path, "mlp", "fc"), model.intermediate_size, width)
        entries += tl.linear(f"{prefix}.mlp.fc2", (*path, "mlp", "proj"), width, model.intermediate_size)
        entries += tl.linear(f"{prefix}.adaLN_modulation.1", (*path, "modulation"), 6 * width, width)
    entries += tl.linear("adaln_before_head.adaLN_modulation.1", ("final_modulation",), 2 * width, width)
    entries += tl.linear("lm_head", ("lm_head",), model.codebook_size, width)
    return entries


def fields_from_state_dict(state: Mapping[str, np.ndarray], source: str = "state dict") -> dict[str, Any]:
    """Our RAR fields (with `architecture`) read off an official state dict's shapes."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"{source} is not an official RAR checkpoint: it has no {', '.join(missing)}.")
    width = int(state["cls_token"].shape[-1])
    head_dim = int(state["blocks.0.attn.q_norm.weight"].shape[0])
    num_tokens = int(state["timesteps_embeddings"].shape[1]) - TIMESTEP_ROWS_EXTRA
    codebook_size = int(state["lm_head.weight"].shape[0])
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    return {
        "architecture": "rar",
        "codebook_size": codebook_size,
        "num_classes": int(state["embeddings.weight"].shape[0]) - codebook_size - 2,
        "num_tokens": num_tokens,
        "hidden_size": width,
        "depth": depth,
        "num_heads": width // head_dim,
        "intermediate_size": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
    }


def release_sampling(model: RAR) -> dict[str, Any]:
    """The README's sampler settings for a published size; constant guidance 4 (the README demo) otherwise."""
    for name, (width, depth, mlp) in RAR_SIZES.items():
        if (model.hidden_size, model.depth, model.intermediate_size) == (width, depth, mlp):
            return dict(RELEASE_SAMPLING[name])
    return dict(temperature=1.0, guidance_scale=4.0, guidance_power=0.0)


def params_from_state_dict(model: RAR, state: Mapping[str, np.ndarray], source: str = "state dict") -> Tree:
    from titok_jax.convert.generator import expected_params
    from titok_jax.trees import check_tree_matches

    params = tl.state_dict_to_tree(
        state,
        rar_entries(model),
        f"RAR generator {source}",
        hint="Check that the weights are an official rar_{b,l,xl,xxl}.bin (a plain RAR state dict).",
    )
    check_tree_matches(params, expected_params(model), f"RAR weights from {source}")
    return {"params": params}


def state_dict_from_params(model: RAR, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return tl.tree_to_state_dict(variables["params"], rar_entries(model))


def is_rar_state_dict(state: Mapping[str, Any]) -> bool:
    return all(key in state for key in REQUIRED_KEYS)


def load_official_rar(
    path: str | os.PathLike, state: Mapping[str, np.ndarray] | None = None
) -> tuple[RAR, Tree, dict[str, Any], dict[str, Any]]:
    """(model, {"params"}, fields, sampler settings) of an official rar_*.bin (or a .safetensors of the same
    keys); `state`: its tensors when already read."""
    path = os.fspath(path)
    state = tl.read_state_dict(path) if state is None else state
    fields = fields_from_state_dict(state, repr(path))
    model = RAR(**{k: v for k, v in fields.items() if k != "architecture"})
    return model, params_from_state_dict(model, state, repr(path)), fields, release_sampling(model)
