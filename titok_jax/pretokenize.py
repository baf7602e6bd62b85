r"""Pretokenize a data set with a trained TiTok (VQ) tokenizer, for generator training.

  python -m titok_jax.pretokenize --config=experiments/titok_single_stage.py:tiny_vq \
      --tokenizer=/tmp/titok_tiny --output=/tmp/titok_tiny_tokens [--flip | --ten_crop] [--split=train]

--tokenizer is the tokenizer's training workdir (read with --config), an exported tokenizer, or the
MaskGIT-VQGAN's file (maskgit-vqgan-imagenet-f16-256.bin or its msgpack: raster-order codes at --config's
data.image_size); the images come from --config's data. The views and the shard layout are described in titok_jax/inference/pretokenize.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import app

from titok_jax import cli, recipes
from titok_jax.inference.pretokenize import pretokenize
from titok_jax.tasks.runs import checked


@dataclasses.dataclass(frozen=True)
class Options:
    tokenizer: str = cli.option(
        None,
        "The tokenizer's training workdir (or an exported tokenizer, or the MaskGIT-VQGAN's .bin / msgpack).",
        required=True,
    )
    output: str = cli.option(None, "Directory for the token shards.", required=True)
    split: str = cli.option("train", "Which split of config.data.", choices=("train", "eval"))
    flip: bool = cli.option(False, "Also store the tokens of the horizontally mirrored center crop.")
    ten_crop: bool = cli.option(False, "Store the 10 TenCrop views of a 1.1x center crop instead.")
    shard_size: int = cli.option(1024, "Examples per shard.")


def run(config, options: Options) -> dict[str, Any]:
    if options.flip and options.ten_crop:
        raise app.UsageError("--flip and --ten_crop exclude each other (ten-crop views already include mirrors).")
    augmentation = "ten_crop" if options.ten_crop else "flip" if options.flip else "center"
    return pretokenize(
        checked(config, recipes.TOKENIZER),
        options.tokenizer,
        options.output,
        options.split,
        augmentation,
        options.shard_size,
    )


if __name__ == "__main__":
    cli.main(run, Options, config="required", distributed=True, config_from="tokenizer")
