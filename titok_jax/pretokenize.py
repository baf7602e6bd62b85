r"""Pretokenize a data set with a trained TiTok (VQ) tokenizer, for generator training.

  python -m titok_jax.pretokenize --config=experiments/titok_single_stage.py:tiny_vq \
      --tokenizer=/tmp/titok_tiny --output=/tmp/titok_tiny_tokens [--flip] [--split=train]

Images get the eval transform (shorter side to size, center crop); `--flip` also stores
the tokens of the mirrored image. Output: `tokens-IIIII-of-NNNNN.array_record` shards
(records: msgpack {"tokens": int32 (K,), "flipped_tokens"?, "label", "index"}) and
`metadata.json` naming the tokenizer (config, checkpoint step, codebook hash), the token
count and codebook size. Shard i belongs to process i % process_count; a shard is written
to a temporary name and renamed when complete, so rerunning skips finished shards and
redoes an interrupted one. Undecodable images are left out of their shard and counted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from array_record.python import array_record_module
from ml_collections import config_flags

from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.data import pipeline, transforms
from titok_jax.models.titok import TiTok
from titok_jax.train import build
from titok_jax.train.loop import restore_newest

METADATA = "metadata.json"


@functools.partial(jax.jit, static_argnames="model")
def encode_indices(model: TiTok, params: Any, images: jax.Array) -> jax.Array:
    """Code indices (B, K) of the deterministic encoding (module-level: one compile per model and shape)."""
    return model.apply(params, images, sample_posterior=False, method=TiTok.encode)[1]["indices"]


def shard_name(index: int, count: int) -> str:
    return f"tokens-{index:05d}-of-{count:05d}.array_record"


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> tuple[TiTok, Any, dict[str, Any]]:
    """(model, EMA params, identity) of the newest checkpoint of a tokenizer training workdir."""
    configs.validate_config(config)
    model_config = config.model
    if model_config.quantize_mode != "vq":
        raise ValueError("Pretokenizing needs a VQ tokenizer (discrete codes); this config is a VAE.")
    recipe, _ = build.build_recipe(config)
    restored = restore_newest(recipe, config, sh.make_mesh(**config.mesh), workdir)
    if restored is None:
        raise FileNotFoundError(f"--tokenizer={workdir!r} holds no checkpoint (expected a training workdir).")
    state, step = restored
    params = jax.device_get(state.ema_params)
    codebook = np.asarray(params["params"]["quantize"]["codebook"])
    identity = {
        "tokenizer_workdir": os.path.abspath(workdir),
        "checkpoint_step": int(step),
        "variant": config.get("variant", ""),
        "num_tokens": int(model_config.num_latent_tokens),
        "codebook_size": int(model_config.codebook_size),
        "codebook_sha256": hashlib.sha256(codebook.astype(np.float32).tobytes()).hexdigest(),
    }
    return recipe.model, params, identity


def _check_metadata(output_dir: str, metadata: dict[str, Any]) -> None:
    path = os.path.join(output_dir, METADATA)
    if not os.path.exists(path):
        return
    with open(path) as f:
        existing = json.load(f)
    keys = ("codebook_sha256", "num_tokens", "codebook_size", "split", "num_shards", "num_examples", "flip")
    differing = [k for k in keys if existing.get(k) != metadata.get(k)]
    if differing:
        raise ValueError(
            f"{output_dir!r} already holds tokens from another tokenizer or data set (differs in {differing}); "
            "pick a new --output or delete the old one."
        )


def pretokenize(
    config: ml_collections.ConfigDict,
    tokenizer_dir: str,
    output_dir: str,
    split: str = "train",
    flip: bool = False,
    shard_size: int = 1024,
    batch_size: int = 64,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict[str, Any]:
    """Writes this process's missing shards; returns the metadata."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    model, params, identity = load_tokenizer(config, tokenizer_dir)
    source = pipeline.make_source(config.data, train=split == "train")
    num_shards = -(-len(source) // shard_size)
    metadata = {**identity, "split": split, "flip": flip, "num_examples": len(source), "num_shards": num_shards}
    os.makedirs(output_dir, exist_ok=True)
    _check_metadata(output_dir, metadata)
    if process_index == 0:
        with open(os.path.join(output_dir, METADATA), "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)

    decode = transforms.DecodeImage(config.data.min_image_size, drop_failures=False)
    crop = transforms.ResizeCenterCrop(config.data.image_size)
    for shard in range(process_index, num_shards, process_count):
        path = os.path.join(output_dir, shard_name(shard, num_shards))
        if os.path.exists(path):
            logging.info("Shard %s exists: skipped.", path)
            continue
        indices = list(range(shard * shard_size, min(len(source), (shard + 1) * shard_size)))
        records = [crop.map(decode.map(source[i])) for i in indices]
        kept = [(i, r) for i, r in zip(indices, records, strict=True) if r[transforms.MASK]]
        if len(kept) < len(indices):
            logging.warning("Shard %d: %d undecodable images left out.", shard, len(indices) - len(kept))
        tmp = path + ".tmp"
        writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
        for start in range(0, len(kept), batch_size):
            chunk = kept[start : start + batch_size]
            images = np.stack([r["image"] for _, r in chunk])
            padded = np.concatenate([images, np.zeros((batch_size - len(chunk), *images.shape[1:]), images.dtype)])
            tokens = np.asarray(encode_indices(model, params, jnp.asarray(padded)))[: len(chunk)]
            flipped = None
            if flip:
                flipped = np.asarray(encode_indices(model, params, jnp.asarray(padded[:, :, ::-1])))[: len(chunk)]
            for j, (index, record) in enumerate(chunk):
                item = {"tokens": tokens[j].astype(np.int32), "label": int(record["label"]), "index": index}
                if flip:
                    item["flipped_tokens"] = flipped[j].astype(np.int32)
                writer.write(flax.serialization.msgpack_serialize(item))
        writer.close()
        os.replace(tmp, path)
        logging.info("Wrote %s (%d examples).", path, len(kept))
    return metadata


def read_shard(path: str) -> list[dict[str, Any]]:
    """All records of one shard, deserialised."""
    reader = array_record_module.ArrayRecordReader(path)
    try:
        return [flax.serialization.msgpack_restore(r) for r in reader.read_all()]
    finally:
        reader.close()


_CONFIG = config_flags.DEFINE_config_file("config", None, "The tokenizer's experiment config file[:variant].")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "The tokenizer's training workdir.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the token shards.", required=True)
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "eval"], "Which split of config.data.")
_FLIP = flags.DEFINE_bool("flip", False, "Also store the tokens of the horizontally flipped image.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 1024, "Examples per shard.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    metadata = pretokenize(_CONFIG.value, _TOKENIZER.value, _OUTPUT.value, _SPLIT.value, _FLIP.value, _SHARD_SIZE.value)
    print(json.dumps(metadata, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
