"""Sample sets of a generator training workdir: samples.npz + labelled grid pages (see inference.samples)."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from titok_jax.data.pipeline import class_names
from titok_jax.inference.generator import balanced_class_ids
from titok_jax.inference.samples import write_samples
from titok_jax.tasks.runs import load_generator

__all__ = ["balanced_class_ids", "sample"]


def sample(
    config: ml_collections.ConfigDict,
    workdir: str,
    num_images: int,
    output_dir: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    num_tokens: int | None = None,
) -> dict[str, Any]:
    """Writes samples.npz and grid.png, grid_1.png, ... (rows labelled with the class names of config.data, where
    it has names) into `output_dir` (default WORKDIR/samples/step_S, or step_S_k{num_tokens}); returns a summary.
    `num_tokens` = k < K samples k-token prefixes (an AR generator, or a MaskGIT trained on prefixes, over a
    variable-length tokenizer)."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    generator = load_generator(config, workdir)
    suffix = f"_k{num_tokens}" if num_tokens else ""
    output_dir = output_dir or os.path.join(workdir, "samples", f"step_{generator.metadata['step']}{suffix}")
    names = class_names(config.data)
    return write_samples(generator, num_images, output_dir, batch_size, seed, names, num_tokens=num_tokens or None)
