r"""Pretokenize a data set with a trained TiTok (VQ) tokenizer, for generator training.

  python -m titok_jax.pretokenize --config=experiments/titok_single_stage.py:tiny_vq \
      --tokenizer=/tmp/titok_tiny --output=/tmp/titok_tiny_tokens [--flip | --ten_crop] [--split=train]

Views per image, as the official script offers: the center crop (shorter side to size);
`--flip` adds the mirrored center crop; `--ten_crop` stores torchvision's TenCrop of a
1.1x center crop instead (4 corners + center, and the same of the mirrored image). The
generator's data pipeline picks one view per example at random. Output:
`tokens-IIIII-of-NNNNN.array_record` shards (records: msgpack {"tokens": int32 (views, K),
"label", "index"}) and `metadata.json` naming the tokenizer (config, checkpoint step,
codebook hash), the token count, codebook size and views. Shard i belongs to process
i % process_count; a shard is written to a temporary name and renamed when complete, so
rerunning skips finished shards and redoes an interrupted one. Undecodable images are
left out of their shard and counted.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from titok_jax import distributed
from titok_jax.data import pipeline, tokens, transforms
from titok_jax.train.frozen_tokenizer import IDENTITY_KEYS, encode_indices, load_tokenizer

METADATA = tokens.METADATA
shard_name, read_shard = tokens.shard_name, tokens.read_shard  # the shard format lives in data/tokens.py


def _check_metadata(output_dir: str, metadata: dict[str, Any]) -> None:
    path = os.path.join(output_dir, METADATA)
    if not os.path.exists(path):
        return
    with open(path) as f:
        existing = json.load(f)
    keys = (*IDENTITY_KEYS, "split", "num_shards", "num_examples", "views")
    differing = [k for k in keys if existing.get(k) != metadata.get(k)]
    if differing:
        raise ValueError(
            f"{output_dir!r} already holds tokens from another tokenizer, data set or view setting (differs in "
            f"{differing}); pick a new --output or delete the old one."
        )


def ten_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision TenCrop of a square (S, S, 3) image: corners tl, tr, bl, br, center, then those of the mirror."""
    full = image.shape[0]
    middle = round((full - size) / 2.0)
    corners = ((0, 0), (0, full - size), (full - size, 0), (full - size, full - size), (middle, middle))
    crops = [view[y : y + size, x : x + size] for view in (image, image[:, ::-1]) for y, x in corners]
    return np.stack(crops)


def _views(image: np.ndarray, size: int, augmentation: str) -> np.ndarray:
    """uint8-or-float decoded image -> (views, size, size, 3) float in [0, 1]."""
    if augmentation == "ten_crop":
        crop_size = int(size * 1.1)  # as officially (LlamaGen's recipe)
        full = transforms.to_unit_float(
            transforms.center_crop(transforms.resize_shorter_side(image, crop_size), crop_size)
        )
        return ten_crop(full, size)
    center = transforms.to_unit_float(transforms.center_crop(transforms.resize_shorter_side(image, size), size))
    return np.stack([center, center[:, ::-1]] if augmentation == "flip" else [center])


AUGMENTATIONS = {"center": 1, "flip": 2, "ten_crop": 10}


def pretokenize(
    config: ml_collections.ConfigDict,
    tokenizer_dir: str,
    output_dir: str,
    split: str = "train",
    augmentation: str = "center",
    shard_size: int = 1024,
    batch_size: int = 64,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict[str, Any]:
    """Writes this process's missing shards; returns the metadata.

    `augmentation`: "center" (1 view), "flip" (center + mirror) or "ten_crop" (10 views).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {augmentation!r}; valid: {', '.join(AUGMENTATIONS)}.")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    model, params, identity = load_tokenizer(config, tokenizer_dir)
    source = pipeline.make_source(config.data, train=split == "train")
    num_shards = -(-len(source) // shard_size)
    metadata = {
        **identity,
        "split": split,
        "augmentation": augmentation,
        "views": AUGMENTATIONS[augmentation],
        "num_examples": len(source),
        "num_shards": num_shards,
    }
    os.makedirs(output_dir, exist_ok=True)
    _check_metadata(output_dir, metadata)
    if process_index == 0:
        tokens.write_metadata(output_dir, metadata)

    decode = transforms.DecodeImage(config.data.min_image_size, drop_failures=False)
    size, num_views = config.data.image_size, AUGMENTATIONS[augmentation]
    for shard in range(process_index, num_shards, process_count):
        path = os.path.join(output_dir, shard_name(shard, num_shards))
        if os.path.exists(path):
            logging.info("Shard %s exists: skipped.", path)
            continue
        indices = list(range(shard * shard_size, min(len(source), (shard + 1) * shard_size)))
        decoded = [(i, decode.map(source[i])) for i in indices]
        kept = [(i, r) for i, r in decoded if r[transforms.MASK]]
        if len(kept) < len(indices):
            logging.warning("Shard %d: %d undecodable images left out.", shard, len(indices) - len(kept))
        records = []
        for start in range(0, len(kept), batch_size):
            chunk = kept[start : start + batch_size]
            views = np.concatenate([_views(r["image"], size, augmentation) for _, r in chunk])  # (n * V, S, S, 3)
            codes = []  # encoded in fixed batches of batch_size (one compile)
            for begin in range(0, len(views), batch_size):
                part = views[begin : begin + batch_size]
                padded = np.concatenate([part, np.zeros((batch_size - len(part), *part.shape[1:]), part.dtype)])
                codes.append(np.asarray(encode_indices(model, params, jnp.asarray(padded)))[: len(part)])
            codes = np.concatenate(codes).reshape(len(chunk), num_views, -1).astype(np.int32)
            records += [
                {"tokens": codes[j], "label": int(record["label"]), "index": index}
                for j, (index, record) in enumerate(chunk)
            ]
        tokens.write_shard(path, records)
        logging.info("Wrote %s (%d examples).", path, len(kept))
    return metadata


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (the library imports this module)."""
    distributed.define_flags()
    config_flags.DEFINE_config_file("config", None, "The tokenizer's experiment config file[:variant].")
    flags.DEFINE_string("tokenizer", None, "The tokenizer's training workdir.", required=True)
    flags.DEFINE_string("output", None, "Directory for the token shards.", required=True)
    flags.DEFINE_enum("split", "train", ["train", "eval"], "Which split of config.data.")
    flags.DEFINE_bool("flip", False, "Also store the tokens of the horizontally mirrored center crop.")
    flags.DEFINE_bool("ten_crop", False, "Store the 10 TenCrop views of a 1.1x center crop instead.")
    flags.DEFINE_integer("shard_size", 1024, "Examples per shard.")


def main(argv):
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()
    if FLAGS.config is None:
        raise app.UsageError("--config is required (an experiment config file[:variant]).")
    if FLAGS.flip and FLAGS.ten_crop:
        raise app.UsageError("--flip and --ten_crop exclude each other (ten-crop views already include mirrors).")
    augmentation = "ten_crop" if FLAGS.ten_crop else "flip" if FLAGS.flip else "center"
    metadata = pretokenize(FLAGS.config, FLAGS.tokenizer, FLAGS.output, FLAGS.split, augmentation, FLAGS.shard_size)
    print(json.dumps(metadata, sort_keys=True))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
