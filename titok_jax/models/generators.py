"""Every token generator architecture by name (config.model.architecture): MaskGIT's "vit" / "uvit", RAR's "rar"."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from titok_jax.models.maskgit import (
    GENERATOR_ARCHITECTURES,
    MaskGITBert,
    MaskGITUViT,
    maskgit_fields,
    maskgit_from_config,
)
from titok_jax.models.rar import RAR, rar_from_config

GeneratorModel = MaskGITBert | MaskGITUViT | RAR
AUTOREGRESSIVE = "rar"
ARCHITECTURES = (*GENERATOR_ARCHITECTURES, AUTOREGRESSIVE)


def generator_from_config(model_config: Any) -> GeneratorModel:
    """A generator from a mapping of its fields plus `architecture` (one of ARCHITECTURES)."""
    architecture = dict(model_config).get("architecture")
    if architecture == AUTOREGRESSIVE:
        return rar_from_config(model_config)
    if architecture not in GENERATOR_ARCHITECTURES:
        raise ValueError(f"Unknown generator architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}.")
    return maskgit_from_config(model_config)


def generator_fields(model: GeneratorModel) -> dict[str, Any]:
    """JSON-able fields plus `architecture`: generator_from_config(generator_fields(m)) == m."""
    if not isinstance(model, RAR):
        return maskgit_fields(model)
    fields: dict[str, Any] = {"architecture": AUTOREGRESSIVE}
    for field in dataclasses.fields(model):
        if field.name not in ("parent", "name"):
            value = getattr(model, field.name)
            fields[field.name] = jnp.dtype(value).name if field.name == "dtype" else value
    return fields


def is_autoregressive(model: GeneratorModel) -> bool:
    return isinstance(model, RAR)
