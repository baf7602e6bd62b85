"""Exporting a trained run for inference: a tokenizer as a titok_jax bundle or an official hub directory,
a generator as a bundle with its tokenizer inside. Weights are read params-only."""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from titok_jax import recipes
from titok_jax.convert import titok as convert_titok
from titok_jax.inference import bundle as bundle_lib
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.inference.generator import Generator

FORMATS = ("bundle", "pytorch")


def export(
    config: ml_collections.ConfigDict,
    workdir: str,
    output: str,
    file_format: str = "bundle",
    ema: bool = True,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exports the newest checkpoint of a tokenizer or generator workdir; returns a summary (what was written)."""
    if file_format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {file_format!r}.")
    if dtype not in bundle_lib.DTYPES:
        raise ValueError(f"--dtype must be one of {bundle_lib.DTYPES}, got {dtype!r}.")
    if file_format == "pytorch" and dtype == "bfloat16":
        raise ValueError("--format=pytorch writes float32 or float16 weights; bfloat16 is for bundles.")
    module = recipes.validate(config)
    if os.path.abspath(output) == os.path.abspath(workdir):
        raise ValueError("--output must not be the training workdir; pick a new directory.")
    bundle_lib.check_output(output, overwrite)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} does not exist (expected a training workdir).")
    if module.ARTIFACT == recipes.GENERATOR:
        if file_format != "bundle" or not ema:
            raise ValueError("Generators export as bundles of their EMA weights (--format=bundle --ema=true).")
        export_config = config.copy_and_resolve_references()
        export_config.tokens_dir = ""
        generator = Generator.load(workdir, export_config)
        generator.save_bundle(output, dtype=dtype, overwrite=overwrite)
        summary = {"output": output, "format": "bundle", "step": int(generator.metadata["step"]), "ema": True}
        logging.info("Exported %s", summary)
        return {**summary, "dtype": dtype}
    model, restored = tokenizer_lib.restore_workdir(workdir, config, ema=ema)
    tokenizer = tokenizer_lib.Tokenizer(model, restored.variables, source=workdir)
    metadata = {"workdir": os.path.abspath(workdir), "step": restored.step, "ema": ema}
    if file_format == "pytorch":
        variables = {"params": tokenizer_lib.unscanned_params(tokenizer)}
        convert_titok.save_hub_tokenizer(
            model.clone(scan_layers=False),
            variables,
            output,
            dtype=np.dtype(dtype),
            extra_config={"titok_jax": metadata},
        )
    else:
        metadata["variant"] = config.get("variant", "")
        tokenizer_lib.save_bundle(tokenizer, output, dtype=dtype, metadata=metadata, overwrite=overwrite)
    summary = {"output": output, "format": file_format, "step": restored.step, "ema": ema, "dtype": dtype}
    logging.info("Exported %s", summary)
    return summary


def export_official_generator(
    checkpoint: str,
    tokenizer: str,
    output: str,
    config: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict[str, Any]:
    """An official generator (hub directory, or weights file + its config .yaml/.json) and the tokenizer it
    models -> a generator bundle with that tokenizer inside (what `Generator.load(output)` reads alone)."""
    bundle_lib.check_output(output, overwrite)
    generator = Generator.load(checkpoint, config=config, tokenizer=tokenizer)
    generator.save_bundle(output, dtype=dtype, overwrite=overwrite)
    return {"output": output, "format": "bundle", "source": checkpoint, "tokenizer": tokenizer, "dtype": dtype}
