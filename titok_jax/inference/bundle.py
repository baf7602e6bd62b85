"""Inference bundles: a model's fields + its weights, loadable without the training config.

A bundle is a directory:
  titok_jax_bundle.json   {"format": "titok_jax.bundle", "version": 1, "kind": "tokenizer" | "generator",
                           "model": {field: value}, "params_dtype": "float32", "metadata": {...}}
  params.safetensors      the "params" collection, keys '/'-joined ("encoder/ln_pre/scale")

No optimizer state, no data iterator: what `Tokenizer.load` (or a generator loader) needs and
nothing else. The params file is written first and the JSON last (each atomically), so a
directory with the JSON is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from titok_jax.convert import torch_layout as tl
from titok_jax.files import atomic_write

BUNDLE_FILE = "titok_jax_bundle.json"
PARAMS_FILE = "params.safetensors"
FORMAT = "titok_jax.bundle"
VERSION = 1
KINDS = ("tokenizer", "generator")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class Bundle:
    kind: str
    model: dict[str, Any]
    variables: dict[str, Any]  # {"params": nested numpy float32 arrays}
    params_dtype: str
    metadata: dict[str, Any]


def is_bundle(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), BUNDLE_FILE))


def _storage_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"Bundle dtype must be one of {DTYPES}, got {name!r}.")
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def save_bundle(
    directory: str | os.PathLike,
    kind: str,
    model_fields: Mapping[str, Any],
    variables: Mapping[str, Any],
    params_dtype: str = "float32",
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a bundle; refuses a non-empty directory that is not a bundle unless `overwrite`."""
    directory = os.fspath(directory)
    if kind not in KINDS:
        raise ValueError(f"Bundle kind must be one of {KINDS}, got {kind!r}.")
    check_output(directory, overwrite)
    dtype = _storage_dtype(params_dtype)
    flat = {key: np.asarray(value).astype(dtype) for key, value in tl.flatten(variables["params"]).items()}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model": dict(model_fields),
        "params_dtype": params_dtype,
        "metadata": dict(metadata or {}),
    }
    json.dumps(header)  # fail on a non-JSON field before writing anything
    os.makedirs(directory, exist_ok=True)
    tl.save_safetensors(flat, os.path.join(directory, PARAMS_FILE), metadata={"format": FORMAT})
    with atomic_write(os.path.join(directory, BUNDLE_FILE), "w") as f:
        json.dump(header, f, indent=2, sort_keys=True)
    return directory


def check_output(directory: str | os.PathLike, overwrite: bool) -> None:
    """Refuses a non-empty output directory unless `overwrite` (nothing already there is lost by accident)."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"Output {directory!r} is a file; choose a directory.")
    if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
        raise FileExistsError(
            f"Output directory {directory!r} is not empty; choose a new directory or pass overwrite "
            "(--overwrite) to replace the bundle files in it."
        )


def read_header(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """The bundle's JSON header, checked (format, version, and `kind` when given)."""
    directory = os.fspath(directory)
    header_path = os.path.join(directory, BUNDLE_FILE)
    if not os.path.isfile(header_path):
        raise FileNotFoundError(f"{directory!r} is not a titok_jax bundle (no {BUNDLE_FILE}).")
    try:
        with open(header_path) as f:
            header = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{header_path!r} is not valid JSON: {err}") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{header_path!r} is not a titok_jax bundle header (format != {FORMAT!r}).")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{header_path!r} is bundle format version {header.get('version')}; this titok_jax reads version "
            f"{VERSION}. Re-export it with a matching titok_jax."
        )
    if kind is not None and header.get("kind") != kind:
        raise ValueError(f"{directory!r} holds a {header.get('kind')} bundle, not a {kind}.")
    return header


def load_bundle(directory: str | os.PathLike, kind: str | None = None) -> Bundle:
    """Reads a bundle (params as float32 numpy); `kind` refuses a bundle of the other kind."""
    directory = os.fspath(directory)
    header = read_header(directory, kind)
    params_path = os.path.join(directory, PARAMS_FILE)
    if not os.path.isfile(params_path):
        raise FileNotFoundError(f"Bundle {directory!r} has no {PARAMS_FILE}; it is incomplete. Export it again.")
    from safetensors.numpy import load_file

    try:
        flat = load_file(params_path)
    except Exception as err:
        raise ValueError(f"{params_path!r} is not a readable .safetensors file: {err}") from err
    params = tl.unflatten({key: value.astype(np.float32) for key, value in flat.items()})
    return Bundle(header["kind"], header["model"], {"params": params}, header["params_dtype"], header["metadata"])
