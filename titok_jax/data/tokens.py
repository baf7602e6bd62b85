"""grain pipeline over pretokenized shards (written by `titok_jax.pretokenize`) for generator training.

Each record holds the tokens of 1, 2 (flip) or 10 (ten-crop) views of one image; every
time an example is drawn one view is picked at random (grain seeds the pick by seed and
sample index, so it resumes exactly). Per-process sharding, shuffling and the saved
iterator state work as for images (`pipeline.DataIterator`).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import flax
import grain
import numpy as np
from array_record.python import array_record_module

from titok_jax.data import pipeline

METADATA = "metadata.json"
SHARD_PATTERN = "tokens-*-of-*.array_record"


def shard_name(index: int, count: int) -> str:
    return f"tokens-{index:05d}-of-{count:05d}.array_record"


def write_shard(path: str, records: list[dict[str, Any]]) -> None:
    """Writes records {"tokens": int32 (views, K), "label", "index"} to a temporary name, then renames:
    a shard that exists is complete."""
    tmp = path + ".tmp"  # the writer opens the path itself, so files.atomic_write (a file object) does not fit
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    for record in records:
        writer.write(flax.serialization.msgpack_serialize(record))
    writer.close()
    os.replace(tmp, path)


def read_shard(path: str) -> list[dict[str, Any]]:
    """All records of one shard, deserialised."""
    reader = array_record_module.ArrayRecordReader(path)
    try:
        return [flax.serialization.msgpack_restore(r) for r in reader.read_all()]
    finally:
        reader.close()


def write_metadata(tokens_dir: str, metadata: dict[str, Any]) -> None:
    with open(os.path.join(tokens_dir, METADATA), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)


def read_metadata(tokens_dir: str) -> dict[str, Any]:
    """The metadata of a pretokenized directory; errors name what is missing and how to make it."""
    path = os.path.join(tokens_dir, METADATA)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{tokens_dir!r} holds no {METADATA}: it is not a pretokenized directory. Make one with "
            "`python -m titok_jax.pretokenize --config=TOKENIZER_CONFIG --tokenizer=TOKENIZER_WORKDIR "
            f"--output={tokens_dir}`, or leave config.tokens_dir empty to tokenize on the fly."
        )
    with open(path) as f:
        return json.load(f)


def shard_paths(tokens_dir: str, metadata: dict[str, Any]) -> list[str]:
    """All shards the metadata announces; refuses a directory whose pretokenization is unfinished."""
    paths = sorted(glob.glob(os.path.join(tokens_dir, SHARD_PATTERN)))
    expected = metadata["num_shards"]
    if len(paths) != expected:
        raise FileNotFoundError(
            f"{tokens_dir!r} holds {len(paths)} of the {expected} token shards its metadata announces: the "
            "pretokenization is unfinished. Rerun the same `python -m titok_jax.pretokenize` command (on every "
            "process) to write the missing shards."
        )
    return paths


class DecodeTokens(grain.transforms.RandomMap):
    """msgpack record -> {"tokens": int32 (K,) of one random view, "label", "index"}; checks the label range."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def random_map(self, record: bytes, rng: np.random.Generator) -> dict[str, Any]:
        item = flax.serialization.msgpack_restore(record)
        views = np.asarray(item["tokens"], np.int32).reshape(-1, item["tokens"].shape[-1])
        label = int(item["label"])
        if not 0 <= label < self.num_classes:
            raise ValueError(
                f"Token record {item.get('index')} has label {label}, outside the generator's "
                f"num_classes={self.num_classes}: the shards come from another data set, or set "
                "config.model.num_classes to the data set's class count."
            )
        view = int(rng.integers(0, len(views)))
        return {"tokens": views[view], "label": np.int32(label), "index": np.int32(item["index"])}


def make_token_train_iterator(
    tokens_dir: str,
    global_batch_size: int,
    seed: int,
    num_classes: int,
    loader_config: Any,
    process_index: int | None = None,
    process_count: int | None = None,
) -> pipeline.DataIterator:
    """Infinite shuffled batches {"tokens": (b, K), "label": (b,)} of this process (global / process_count)."""
    index, count = pipeline.process_of(process_index, process_count)
    batch_size = pipeline.per_process_batch(global_batch_size, count)
    source = grain.sources.ArrayRecordDataSource(shard_paths(tokens_dir, read_metadata(tokens_dir)))
    if len(source) < count:
        raise ValueError(f"{tokens_dir!r} has {len(source)} examples, fewer than the {count} processes reading it.")
    shard_options = grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=shard_options, shuffle=True, num_epochs=None, seed=int(seed)
    )
    operations = [DecodeTokens(num_classes), grain.transforms.Batch(batch_size=batch_size, drop_remainder=True)]
    return pipeline.DataIterator(pipeline.data_loader(loader_config, source, sampler, operations, shard_options))
