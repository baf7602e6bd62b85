r"""Sample class-conditional images from a trained MaskGIT generator (its EMA params).

  python -m titok_jax.sample --config=experiments/maskgit_generator.py:tiny \
      --workdir=/tmp/titok_tiny_generator --num_images=640 [--output=DIR] [--batch_size=64]

Classes are balanced and in order (image i has class i * num_classes // N), so
`--num_images=50000` over 1000 classes gives the 50-per-class set of the 50k gFID
protocol. Writes `samples.npz` (`arr_0`: uint8 (N, H, W, 3), the layout the ADM
evaluator reads; `labels`: int32 (N,); `tokens`: int32 (N, K)) and `grid.png` (the first 64 images, 8 per row).
Every batch is one jitted call (the whole decoding loop on device), sharded over the
devices; sampling settings come from config.sampling (override them as flags, e.g.
`--config.sampling.guidance_scale=3.0`). The same seed gives the same images.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags
from PIL import Image

from titok_jax import configs, distributed
from titok_jax import sharding as sh
from titok_jax.train.generator import GeneratorRecipe
from titok_jax.train.loop import image_grid, restore_for_inference

GRID_IMAGES = 64


@functools.partial(jax.jit, static_argnames="recipe")
def sample_images(
    recipe: GeneratorRecipe, params: Any, tokenizer_params: Any, class_ids: jax.Array, rng: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """class_ids (B,) -> (uint8 images (B, H, W, 3), token ids (B, K)): MaskGIT decoding, then the tokenizer's decoder."""
    ids = recipe.sample(params, class_ids, rng)
    images = recipe.decode(tokenizer_params, ids)
    return jnp.round(images * 255).astype(jnp.uint8), ids


def balanced_class_ids(num_images: int, num_classes: int) -> np.ndarray:
    """Image i gets class i * num_classes // num_images: equal counts when num_classes divides num_images."""
    return (np.arange(num_images, dtype=np.int64) * num_classes // num_images).astype(np.int32)


def sample(
    config: ml_collections.ConfigDict,
    workdir: str,
    num_images: int,
    output_dir: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes samples.npz and grid.png into `output_dir` (default WORKDIR/samples/step_S); returns a summary."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    config = config.copy_and_resolve_references()
    config.tokens_dir = ""  # sampling reads no token shards
    configs.validate_config(config)
    if config.recipe != "generator":
        raise ValueError(f"--config must be a generator config (recipe 'generator'), got recipe {config.recipe!r}.")
    recipe, frozen, mesh, state, step = restore_for_inference(
        config, workdir, "it is not a generator workdir (train one with titok_jax.main)."
    )
    output_dir = output_dir or os.path.join(workdir, "samples", f"step_{step}")

    devices = jax.device_count()
    batch_size = -(-batch_size // devices) * devices  # whole shards on every device
    class_ids = balanced_class_ids(num_images, recipe.model.num_classes)
    key = jax.random.PRNGKey(seed)
    tokenizer_params = jax.device_put(frozen["tokenizer"], sh.replicated(mesh))
    sharding = sh.batch_sharding(mesh, 1)
    image_chunks, token_chunks = [], []
    with jax.set_mesh(mesh):
        for index, start in enumerate(range(0, num_images, batch_size)):
            ids = class_ids[start : start + batch_size]
            padded = np.concatenate([ids, np.zeros(batch_size - len(ids), np.int32)])
            local = np.split(padded, jax.process_count())[jax.process_index()]
            global_ids = jax.make_array_from_process_local_data(sharding, local)
            outputs = sample_images(
                recipe, state.ema_params, tokenizer_params, global_ids, jax.random.fold_in(key, index)
            )
            images, tokens = (np.asarray(x)[: len(ids)] for x in multihost_utils.process_allgather(outputs, tiled=True))
            image_chunks.append(images)
            token_chunks.append(tokens)
    images, tokens = np.concatenate(image_chunks), np.concatenate(token_chunks)
    summary = {"checkpoint_step": int(step), "num_images": num_images, "output_dir": output_dir, "shape": images.shape}
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        npz = os.path.join(output_dir, "samples.npz")
        with open(npz + ".tmp", "wb") as f:  # renamed when complete: a partial file never looks finished
            np.savez(f, arr_0=images, labels=class_ids, tokens=tokens.astype(np.int32))
        os.replace(npz + ".tmp", npz)
        shown = images[:GRID_IMAGES].astype(np.float32) / 255.0
        columns = min(8, len(shown))
        rows = -(-len(shown) // columns)
        shown = np.concatenate([shown, np.zeros((rows * columns - len(shown), *shown.shape[1:]), np.float32)])
        Image.fromarray(image_grid(shown.reshape(rows, columns, *shown.shape[1:]))).save(
            os.path.join(output_dir, "grid.png")
        )
        logging.info("Wrote %d samples of step %d to %s", num_images, step, output_dir)
    return summary


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (the library imports this module)."""
    distributed.define_flags()
    config_flags.DEFINE_config_file("config", None, "The generator's experiment config file[:variant].")
    flags.DEFINE_string("workdir", None, "The generator's training workdir.", required=True)
    flags.DEFINE_integer("num_images", 50_000, "How many images (balanced over the classes).")
    flags.DEFINE_string("output", None, "Output directory (default WORKDIR/samples/step_S).")
    flags.DEFINE_integer("batch_size", 64, "Global images per sampling call.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv):
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()
    if FLAGS.config is None:
        raise app.UsageError("--config is required (an experiment config file[:variant]).")
    summary = sample(FLAGS.config, FLAGS.workdir, FLAGS.num_images, FLAGS.output, FLAGS.batch_size, FLAGS.seed)
    print(json.dumps(summary, default=list, sort_keys=True))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
