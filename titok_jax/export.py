r"""Export a trained tokenizer for inference, as a titok_jax bundle or an official hub directory.

  python -m titok_jax.export --config=experiments/titok_single_stage.py:tiny_vq \
      --workdir=/tmp/titok_tiny --output=/tmp/titok_tiny_export [--format=bundle|pytorch] \
      [--ema=true] [--dtype=float32] [--overwrite]

`bundle`: titok_jax_bundle.json + params.safetensors (config + weights, no optimizer
state), loaded by `titok_jax.tokenizer.Tokenizer.load` without the training config.
`pytorch`: config.json + model.safetensors in the official key layout, which the official
code's `TiTok.from_pretrained(DIR)` loads (only for the official ViT sizes and pixel decoder).
The newest checkpoint is exported; `--ema` (default) takes the EMA weights the evaluation uses.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from titok_jax import bundle as bundle_lib
from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.convert import titok as convert_titok
from titok_jax.models import layer_stack
from titok_jax.models.titok import TiTok

FORMATS = ("bundle", "pytorch")


def export_tokenizer(
    config: ml_collections.ConfigDict,
    workdir: str,
    output: str,
    file_format: str = "bundle",
    ema: bool = True,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exports the newest checkpoint of a tokenizer workdir; returns a summary (what was written)."""
    if file_format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {file_format!r}.")
    if dtype not in bundle_lib.DTYPES:
        raise ValueError(f"--dtype must be one of {bundle_lib.DTYPES}, got {dtype!r}.")
    if file_format == "pytorch" and dtype == "bfloat16":
        raise ValueError("--format=pytorch writes float32 or float16 weights; bfloat16 is for bundles.")
    configs.validate_config(config)
    if config.recipe == "generator":
        raise ValueError("This exports tokenizers; the config is a generator's (recipe 'generator').")
    if os.path.abspath(output) == os.path.abspath(workdir):
        raise ValueError("--output must not be the training workdir; pick a new directory.")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise FileExistsError(f"--output={output!r} is not empty; choose a new directory or pass --overwrite.")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} does not exist (expected a tokenizer training workdir).")
    from titok_jax.train.loop import restore_for_inference

    recipe, _, _, state, step = restore_for_inference(
        config, workdir, "train the tokenizer first (python -m titok_jax.main --config=... --workdir=...)."
    )
    if ema and state.ema_params is None:
        raise ValueError("This run keeps no EMA weights; export the raw weights with --ema=false.")
    variables = sh.to_host(state.ema_params if ema else state.params)
    # Exports use the interchange layout: a run trained with scan_layers has its ViT blocks unstacked
    # and is described as unscanned, so loaders and converters never meet stacked params.
    variables = {"params": layer_stack.unstack_blocks(variables["params"])}
    model: TiTok = recipe.model.clone(scan_layers=False)
    if file_format == "pytorch":
        convert_titok.save_hub_tokenizer(
            model,
            variables,
            output,
            dtype=np.dtype(dtype),
            extra_config={"titok_jax": {"workdir": os.path.abspath(workdir), "step": int(step), "ema": ema}},
        )
    else:
        bundle_lib.save_bundle(
            output,
            "tokenizer",
            convert_titok.model_fields(model),
            variables,
            params_dtype=dtype,
            metadata={
                "workdir": os.path.abspath(workdir),
                "step": int(step),
                "ema": ema,
                "variant": config.get("variant", ""),
            },
            overwrite=overwrite,
        )
    summary = {"output": output, "format": file_format, "step": int(step), "ema": ema, "dtype": dtype}
    logging.info("Exported %s", summary)
    return summary


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "The tokenizer's experiment config file[:variant].")
    flags.DEFINE_string("workdir", None, "The tokenizer's training workdir.", required=True)
    flags.DEFINE_string("output", None, "Output directory (new or empty).", required=True)
    flags.DEFINE_enum("format", "bundle", FORMATS, "bundle (titok_jax) or pytorch (official hub layout).")
    flags.DEFINE_bool("ema", True, "Export the EMA weights (else the raw training weights).")
    flags.DEFINE_enum("dtype", "float32", bundle_lib.DTYPES, "Storage dtype of the weights.")
    flags.DEFINE_bool("overwrite", False, "Replace the files of an existing export in --output.")


def main(argv):
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required (the tokenizer's experiment config file[:variant]).")
    summary = export_tokenizer(
        FLAGS.config, FLAGS.workdir, FLAGS.output, FLAGS.format, FLAGS.ema, FLAGS.dtype, FLAGS.overwrite
    )
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
