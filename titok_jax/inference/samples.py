"""Class-balanced sample sets on disk: samples.npz (the ADM evaluator's layout) and labelled grids of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from titok_jax import files, images
from titok_jax.inference.generator import Generator, balanced_class_ids


def write_samples(
    generator: Generator,
    num_images: int,
    output_dir: str,
    batch_size: int = 64,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    max_grid_pages: int = 16,
    num_tokens: int | None = None,
) -> dict[str, Any]:
    """Samples `num_images` with balanced classes in order (image i has class i * num_classes // N) and writes
    `samples.npz` (`arr_0`: uint8 (N, H, W, 3); `labels`: int32 (N,); `tokens`: int32 (N, K)) and the grid
    pages `grid.png`, `grid_1.png`, ... into `output_dir`; returns a summary.

    The grids show every sample: one row per class (a class with more than 16 samples wraps onto more rows),
    each row labelled at its left with the class name (`class_names[id]`, when given) or id, tiles upscaled to
    at least 128 px, 16 rows per page, up to `max_grid_pages` pages (a 50k evaluation set would fill hundreds:
    the pages then show the first classes, and the summary says how many rows are shown). `num_tokens` = k < K
    samples and decodes k-token prefixes (Generator.generate's rules)."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    class_ids = balanced_class_ids(num_images, generator.num_classes)
    samples, tokens = generator.generate(
        class_ids, seed=seed, batch_size=batch_size, progress=True, num_tokens=num_tokens
    )
    all_rows = images.class_rows(samples, class_ids, class_names)
    rows = all_rows[: max_grid_pages * images.PAGE_ROWS]
    pages = -(-len(rows) // images.PAGE_ROWS)
    summary = {
        "checkpoint_step": int(generator.metadata.get("step", 0)),
        "num_images": num_images,
        "output_dir": output_dir,
        "shape": list(samples.shape),
        "grids": [images.page_name(i) for i in range(pages)],
        "grid_rows": f"{len(rows)} of {len(all_rows)}",
    }
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with files.atomic_write(os.path.join(output_dir, "samples.npz")) as f:
            np.savez(f, arr_0=samples, labels=class_ids, tokens=tokens)
        images.save_pages(images.labelled_pages(rows), output_dir)
        logging.info("Wrote %d samples and %d grid page(s) to %s", num_images, pages, output_dir)
    return summary
