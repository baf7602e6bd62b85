"""The frozen MaskGIT VQGAN teacher of the two-stage recipe: built from config, weights from a file."""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from titok_jax.convert.vqgan import load_vqgan_variables
from titok_jax.models.vqgan import VQGAN
from titok_jax.trees import check_tree_matches

VQGAN_FIELDS = ("filters", "channel_multipliers", "num_res_blocks", "embedding_dim", "codebook_size")

MISSING_WEIGHTS = (
    "The two-stage recipe needs the frozen MaskGIT VQGAN teacher: set config.teacher.checkpoint to its weights, "
    "the original google-research/maskgit JAX checkpoint `tokenizer_imagenet256_checkpoint` "
    "(flax msgpack of {{'params': {{encoder, quantizer, decoder}}}}), or the PyTorch port TiTok's repo ships "
    "(maskgit-vqgan-imagenet-f16-256.bin, or the same state dict as .safetensors). {detail}"
)


def teacher_model(config: ml_collections.ConfigDict) -> VQGAN:
    fields = {k: config[k] for k in VQGAN_FIELDS}
    fields["channel_multipliers"] = tuple(fields["channel_multipliers"])
    return VQGAN(**fields)


def check_teacher_weights(config: ml_collections.ConfigDict) -> None:
    """Fails fast (before any compile) when the configured weights cannot be used."""
    if config.random_init:
        return
    if not config.checkpoint:
        raise ValueError(
            MISSING_WEIGHTS.format(detail="It is not set. Only tiny smoke configs may use teacher.random_init=True.")
        )
    if not os.path.isfile(config.checkpoint):
        raise FileNotFoundError(MISSING_WEIGHTS.format(detail=f"No file at {config.checkpoint!r}."))


def load_teacher(config: ml_collections.ConfigDict, image_size: int, seed: int) -> tuple[VQGAN, Any]:
    """-> (teacher module, variables) with every key and shape checked."""
    model = teacher_model(config)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    if config.random_init:
        return model, nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), images))
    check_teacher_weights(config)
    variables = load_vqgan_variables(config.checkpoint, {k: config[k] for k in VQGAN_FIELDS})
    expected = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images))
    check_tree_matches(variables, expected, f"Teacher checkpoint {config.checkpoint!r}")
    return model, jax.tree.map(jnp.asarray, variables)
