r"""Reproduce a released model's published numbers: ours next to the paper's, with the protocol.

  # a released tokenizer on ImageNet val (an image folder, or --tfds_data_dir=DIR for the TFDS split)
  python -m titok_jax.reproduce --release=tokenizer_titok_l32_imagenet --images=/data/imagenet/val \
      --inception_weights=/data/inception [--checkpoint=DIR] [--max_images=N]
  # a released generator: 50k samples (50 per class) with its sampler settings -> gFID / sFID / IS / P / R
  python -m titok_jax.reproduce --release=generator_titok_l32_imagenet --reference=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=/data/inception [--checkpoint=DIR] [--tokenizer=DIR] [--num_images=50000]

Without --checkpoint (--tokenizer) the release's hub repo is read through the hub cache (HF_HUB_OFFLINE=1: the
cache alone). Prints the comparison table and writes everything (numbers, published values, protocol) to
--output (default ./reproduce_RELEASE.json). The releases and their published numbers: tasks/reproduce.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import logging

from titok_jax import cli, files
from titok_jax.tasks import reproduce


@dataclasses.dataclass(frozen=True)
class Options:
    release: str = cli.option(None, f"One of: {', '.join(reproduce.RELEASES)}.", required=True)
    checkpoint: str = cli.option("", "Its checkpoint (hub dir, bundle or weights); default: the release's hub id.")
    tokenizer: str = cli.option("", "Generators: the tokenizer's checkpoint; default: its release's hub id.")
    images: str = cli.option("", "Tokenizers: a folder of evaluation images (ImageNet val).")
    tfds_data_dir: str = cli.option("", "Tokenizers: TFDS data dir holding imagenet2012 (validation split).")
    reference: str = cli.option("", "Generators: the ADM reference batch (VIRTUAL_imagenet256_labeled.npz).")
    inception_weights: str = cli.option("", "inception.msgpack from titok_jax.convert.inception (else random).")
    num_images: int = cli.option(50_000, "Generators: samples to draw (balanced classes).")
    max_images: int = cli.option(0, "Tokenizers: evaluate only the first N images (0: all).")
    batch_size: int = cli.option(64, "Images per batch.")
    output: str = cli.option("", "The JSON written (default ./reproduce_RELEASE.json).")


def run(config, options: Options) -> dict[str, Any]:
    del config
    entry = reproduce.release(options.release)
    if entry.is_generator:
        if not options.reference:
            raise ValueError(
                "A generator needs --reference (the ADM reference batch, VIRTUAL_imagenet256_labeled.npz)."
            )
        output_dir = os.path.splitext(options.output or f"reproduce_{options.release}.json")[0] + "_samples"
        results = reproduce.reproduce_generator(
            options.release, options.reference, options.checkpoint, options.tokenizer, options.inception_weights,
            options.num_images, options.batch_size, output_dir,
        )  # fmt: skip
    else:
        results = reproduce.reproduce_tokenizer(
            options.release, options.checkpoint, options.images, options.tfds_data_dir, options.inception_weights,
            options.batch_size, options.max_images,
        )  # fmt: skip
    output = options.output or f"reproduce_{options.release}.json"
    with files.atomic_write(output, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    logging.info("%s\n(written to %s)", results["table"], output)
    return results


if __name__ == "__main__":
    cli.main(run, Options)
