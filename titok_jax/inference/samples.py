"""Class-balanced sample sets on disk: samples.npz (the ADM evaluator's layout) and a grid of them."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from PIL import Image

from titok_jax import files, images
from titok_jax.inference.generator import Generator, balanced_class_ids

GRID_IMAGES = 64
GRID_COLUMNS = 8


def write_samples(
    generator: Generator, num_images: int, output_dir: str, batch_size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Samples `num_images` with balanced classes in order (image i has class i * num_classes // N) and writes
    `samples.npz` (`arr_0`: uint8 (N, H, W, 3); `labels`: int32 (N,); `tokens`: int32 (N, K)) and `grid.png`
    (the first 64, 8 per row) into `output_dir`; returns a summary."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    class_ids = balanced_class_ids(num_images, generator.num_classes)
    samples, tokens = generator.generate(class_ids, seed=seed, batch_size=batch_size)
    summary = {
        "checkpoint_step": int(generator.metadata.get("step", 0)),
        "num_images": num_images,
        "output_dir": output_dir,
        "shape": list(samples.shape),
    }
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with files.atomic_write(os.path.join(output_dir, "samples.npz")) as f:
            np.savez(f, arr_0=samples, labels=class_ids, tokens=tokens)
        Image.fromarray(images.grid_of(samples[:GRID_IMAGES], GRID_COLUMNS)).save(os.path.join(output_dir, "grid.png"))
        logging.info("Wrote %d samples to %s", num_images, output_dir)
    return summary
