r"""Pretokenize a data set with a trained TiTok (VQ) tokenizer or the MaskGIT-VQGAN (its .bin / msgpack: the
official RAR's tokenizer, at config.data.image_size), for generator training (`python -m titok_jax.pretokenize`).

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
import ml_collections
import numpy as np
from absl import logging

from titok_jax import logs
from titok_jax import sharding as sh
from titok_jax.data import pipeline, tokens, transforms
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.inference.tokenizer import IDENTITY_KEYS, Tokenizer

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
    if tokenizer_lib.model_of(tokenizer_dir, config).quantize_mode == "vae":  # before reading any weights
        raise ValueError(f"A token generator needs a tokenizer of discrete codes; {tokenizer_dir!r} is a VAE.")
    tokenizer = Tokenizer.load(tokenizer_dir, config=config)
    identity = tokenizer.identity()
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
    for shard in logs.bar(range(process_index, num_shards, process_count), "pretokenize", unit="shard"):
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
                padded, real = sh.pad_batch(part, batch_size)
                codes.append(tokenizer.encode(padded)[:real])
            codes = np.concatenate(codes).reshape(len(chunk), num_views, -1).astype(np.int32)
            records += [
                {"tokens": codes[j], "label": int(record["label"]), "index": index}
                for j, (index, record) in enumerate(chunk)
            ]
        tokens.write_shard(path, records)
        logging.info("Wrote %s (%d examples).", path, len(kept))
    return metadata
