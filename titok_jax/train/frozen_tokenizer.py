"""A trained TiTok VQ tokenizer, loaded frozen: for pretokenizing, generator training and sampling."""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.models import layer_stack
from titok_jax.models.titok import TiTok, titok_from_config
from titok_jax.train.loop import restore_newest

# What names a tokenizer; token shards record it and the generator checks it.
IDENTITY_KEYS = ("num_tokens", "codebook_size", "codebook_sha256")


@functools.partial(jax.jit, static_argnames="model")
def encode_indices(model: TiTok, params: Any, images: jax.Array) -> jax.Array:
    """Code indices (B, K) of the deterministic encoding (module-level: one compile per model and shape)."""
    return model.apply(params, images, sample_posterior=False, method=TiTok.encode)[1]["indices"]


def load_tokenizer(config: ml_collections.ConfigDict | None, workdir: str) -> tuple[TiTok, Any, dict[str, Any]]:
    """(model, EMA params on the host, identity) of the newest checkpoint of a tokenizer training workdir,
    or of an exported tokenizer (a titok_jax bundle or an official hub directory; `config` unused)."""
    from titok_jax.tokenizer import is_exported_tokenizer, load_model_and_variables

    if is_exported_tokenizer(workdir):
        model, params, metadata = load_model_and_variables(workdir)
        if model.quantize_mode != "vq":
            raise ValueError(f"A token generator needs a VQ tokenizer (discrete codes); {workdir!r} is a VAE.")
        return (
            model,
            params,
            _identity(workdir, int(metadata.get("step", 0)), metadata.get("variant", ""), model, params),
        )
    configs.validate_config(config)
    model_config = config.model
    if model_config.quantize_mode != "vq":
        raise ValueError("A token generator needs a VQ tokenizer (discrete codes); this config is a VAE.")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(
            f"Tokenizer workdir {workdir!r} does not exist (expected a tokenizer training workdir)."
        )
    # Restored in the checkpoint's layout; handed out in the layout of the config's model (a tokenizer
    # trained with --config.model.scan_layers=True is often named by its plain config file).
    restored = restore_newest(config, sh.make_mesh(**config.mesh), workdir)
    if restored is None:
        raise FileNotFoundError(f"Tokenizer workdir {workdir!r} holds no checkpoint (expected a training workdir).")
    _, _, state, step = restored
    model = titok_from_config(model_config)
    params = layer_stack.to_layout(sh.to_host(state.ema_params), model.scan_layers)
    return model, params, _identity(workdir, int(step), config.get("variant", ""), model, params)


def _identity(workdir: str, step: int, variant: str, model: TiTok, params: Any) -> dict[str, Any]:
    codebook = np.asarray(params["params"]["quantize"]["codebook"])
    return {
        "tokenizer_workdir": os.path.abspath(workdir),
        "checkpoint_step": step,
        "variant": variant,
        "num_tokens": int(model.num_latent_tokens),
        "codebook_size": int(model.codebook_size),
        "codebook_sha256": hashlib.sha256(codebook.astype(np.float32).tobytes()).hexdigest(),
    }
