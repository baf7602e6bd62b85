"""grain pipelines: config -> per-process train / eval batch iterators.

Train: every process reads its own contiguous shard of the source (grain
`ShardOptions(process_index, process_count, drop_remainder=True)`), shuffled
with the seed, repeated forever, decoded (bad images dropped by a filter, so
batches stay full), augmented, batched with drop_remainder. Its state (bytes)
saves and restores exactly, by hand or with orbax's grain handler.

Eval: one pass in order. The source is padded up to a multiple of the global
batch with placeholder examples, so every process runs the same number of
steps; a batch carries `mask` (False on padding and on images that failed to
decode), so summing over `mask` counts each real example exactly once.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from titok_jax.data import transforms
from titok_jax.data.image_list import ImageList
from titok_jax.data.sources import LABEL_MODES, ImageFolder, folder_layout, list_class_names, tfds_source
from titok_jax.data.synthetic import SHAPE_KINDS, VARIATIONS, SyntheticShapes

SOURCES = ("synthetic", "image_folder", "image_list", "tfds")


def default_data_config() -> ml_collections.ConfigDict:
    """The built-in synthetic data set; other sources fill in their own fields."""
    return ml_collections.ConfigDict(
        dict(
            source="synthetic",
            image_size=32,
            # synthetic: the eval set is drawn with synthetic_seed + 1, so it holds different images.
            num_examples=10_000,
            eval_num_examples=1_000,
            num_classes=10,
            synthetic_seed=0,
            # "full": random position, size, geometry and gradient background; "centered": one large
            # centred shape per class on a flat background (colours still random), learnable in minutes on CPU.
            synthetic_variation="full",
            # image_folder: root/<class_name>/<image>; eval_root uses root's class names for its labels.
            root=config_dict.placeholder(str),
            eval_root=config_dict.placeholder(str),
            # image_folder labels: "folders" (class subfolders), "none" (every image below root, label 0) or
            # "auto" (class subfolders when root has any, else the images directly in root, label 0).
            labels="auto",
            # image_list: one image path per line (relative to the list's folder), optionally followed by
            # whitespace or a comma and an integer label on every line; without labels every label is 0.
            list_file=config_dict.placeholder(str),
            eval_list_file=config_dict.placeholder(str),
            # tfds (array_record, read without TensorFlow); data_dir None means $TFDS_DATA_DIR or ~/tensorflow_datasets.
            name="imagenet2012",
            split="train",
            eval_split="validation",
            data_dir=config_dict.placeholder(str),
            # loader: worker_count > 0 decodes in grain worker processes (needs absl.app.run).
            worker_count=0,
            worker_buffer_size=2,
            # Threads reading records ahead (per worker). grain's default buffer of 500 costs more than it
            # saves: its prefetcher scans the whole buffer for every element.
            read_threads=8,
            read_buffer_size=64,
            # Images with a shorter side below this many pixels are skipped and counted.
            min_image_size=8,
            # Train augmentation: random crop (tokenizer recipes) or center crop (generator recipe), + random flip.
            random_crop=True,
            # Global batches placed on the devices ahead of the train step (data.device_prefetch); 0: none.
            device_prefetch=2,
        )
    )


def _positive_int(config: ml_collections.ConfigDict, key: str, minimum: int = 1) -> None:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"data.{key} must be an int >= {minimum}, got {value!r}.")


def validate_data_config(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a data config; returns it completed with the defaults of missing fields.

    Raises ValueError (FileNotFoundError for a missing folder) naming the field.
    """
    defaults = default_data_config()
    unknown = sorted(set(data_config.keys()) - set(defaults.keys()))
    if unknown:
        raise ValueError(f"Unknown data config fields {unknown}; valid fields: {', '.join(sorted(defaults.keys()))}.")
    config = defaults
    for key in data_config.keys():  # item by item: ConfigDict.update refuses placeholder fields
        config[key] = data_config[key]
    if config.source not in SOURCES:
        raise ValueError(f"Unknown data.source {config.source!r}; valid sources: {', '.join(SOURCES)}.")
    _positive_int(config, "image_size")
    _positive_int(config, "min_image_size")
    _positive_int(config, "worker_count", minimum=0)
    _positive_int(config, "worker_buffer_size")
    _positive_int(config, "read_threads", minimum=0)
    _positive_int(config, "read_buffer_size", minimum=0)
    _positive_int(config, "device_prefetch", minimum=0)
    if not isinstance(config.random_crop, bool):
        raise ValueError(f"data.random_crop must be True or False, got {config.random_crop!r}.")
    if config.labels not in LABEL_MODES:
        raise ValueError(f"Unknown data.labels {config.labels!r}; valid: {', '.join(LABEL_MODES)}.")
    if config.source == "synthetic":
        _positive_int(config, "num_examples")
        _positive_int(config, "eval_num_examples")
        _positive_int(config, "synthetic_seed", minimum=0)
        _positive_int(config, "num_classes")
        if not 1 <= config.num_classes <= len(SHAPE_KINDS):
            raise ValueError(f"data.num_classes must be in [1, {len(SHAPE_KINDS)}] for synthetic shapes.")
        if config.synthetic_variation not in VARIATIONS:
            raise ValueError(
                f"data.synthetic_variation must be one of {', '.join(VARIATIONS)}, got {config.synthetic_variation!r}."
            )
        if config.image_size < 8:
            raise ValueError(f"Synthetic shapes need data.image_size >= 8, got {config.image_size}.")
    elif config.source == "image_folder":
        if not config.root:
            raise ValueError(
                "data.source='image_folder' needs data.root (a folder of root/<class_name>/<image>, or of images)."
            )
        for key in ("root", "eval_root"):
            if config[key] and not os.path.isdir(config[key]):
                raise FileNotFoundError(f"data.{key}={config[key]!r} does not exist or is not a directory.")
    elif config.source == "image_list":
        if not config.list_file:
            raise ValueError("data.source='image_list' needs data.list_file (a text file of one image path per line).")
        for key in ("list_file", "eval_list_file"):
            if config[key] and not os.path.isfile(config[key]):
                raise FileNotFoundError(f"data.{key}={config[key]!r} does not exist or is not a file.")
    elif config.source == "tfds":
        if not config.name or not isinstance(config.name, str):
            raise ValueError(f"data.source='tfds' needs data.name (e.g. 'imagenet2012'), got {config.name!r}.")
    return config


def make_source(data_config: ml_collections.ConfigDict, train: bool) -> Any:
    """The random-access source of the train or eval split."""
    config = validate_data_config(data_config)
    if config.source == "synthetic":
        num_examples = config.num_examples if train else config.eval_num_examples
        seed = config.synthetic_seed + (0 if train else 1)
        return SyntheticShapes(
            num_examples, config.image_size, config.num_classes, seed=seed, variation=config.synthetic_variation
        )
    if config.source == "image_folder":
        if train:
            return ImageFolder(config.root, labels=config.labels)
        if not config.eval_root:
            raise ValueError("Evaluating an image_folder data set needs data.eval_root.")
        return _eval_image_folder(config)
    if config.source == "image_list":
        if train:
            return ImageList(config.list_file)
        if not config.eval_list_file:
            raise ValueError("Evaluating an image_list data set needs data.eval_list_file.")
        return ImageList(config.eval_list_file)
    return tfds_source(config.name, config.split if train else config.eval_split, config.data_dir)


def class_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The class names (label i is names[i]) where the data has them, for labelling pictures: the synthetic
    shape kinds, or an image folder's class subfolders while the folder is still there; None where labels are
    bare ids (tfds, image lists, folders without classes)."""
    source = data_config.get("source", "synthetic")
    if source == "synthetic":
        return SHAPE_KINDS[: data_config.get("num_classes", len(SHAPE_KINDS))]
    root = data_config.get("root")
    if source != "image_folder" or not root or not os.path.isdir(root) or data_config.get("labels") == "none":
        return None
    return tuple(list_class_names(root)) or None


def _eval_image_folder(config: ml_collections.ConfigDict) -> ImageFolder:
    """The eval folder, labelled like the train folder: by its class names, or all 0 for data without classes."""
    layout = folder_layout(config.root, config.labels)
    if layout == "folders":
        return ImageFolder(config.eval_root, class_names=list_class_names(config.root))
    if layout == "recursive":
        return ImageFolder(config.eval_root, labels="none")
    # Train images lie directly in root: eval images must too, else eval labels would not be train's single 0.
    if folder_layout(config.eval_root, "auto") == "folders":
        raise ValueError(
            f"data.eval_root={config.eval_root!r} has subfolders but data.root={config.root!r} holds its images "
            "directly (no classes): lay eval_root out the same way, or set data.labels='none' to read every image "
            "below both with label 0."
        )
    return ImageFolder(config.eval_root, labels="auto")


class DataIterator:
    """Per-process numpy batches from a grain DataLoader, plus skip accounting.

    Yields `{"image": float32 (b, S, S, 3) in [0, 1], "label": int32 (b,)}` (eval
    batches add `"mask": bool (b,)`). `num_skipped` counts the images this
    process's pipeline skipped since the iterator was made (workers included).
    `num_classes`: labels lie in [0, num_classes) (1 for data without classes); None where the source
    does not say (TFDS).
    `get_state` / `set_state` / `start_prefetch` are grain's, so orbax's grain
    handler (`grain.checkpoint.CheckpointSave` / `CheckpointRestore`) accepts it.
    """

    def __init__(self, loader: grain.DataLoader, num_batches: int | None = None, num_classes: int | None = None):
        self._loader = loader
        self._iterator = iter(loader)
        self.num_batches = num_batches  # None: infinite
        self.num_classes = num_classes
        self.num_skipped = 0

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.num_skipped += int(np.sum(batch.pop(transforms.NUM_SKIPPED, 0)))
        return batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("The train iterator is infinite; it has no length.")
        return self.num_batches

    def get_state(self) -> bytes:
        return self._iterator.get_state()

    def set_state(self, state: bytes) -> None:
        self._iterator.set_state(state)

    def start_prefetch(self) -> None:
        self._iterator.start_prefetch()


def process_of(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    # Resolved at call time (not as default arguments) so that importing this module never starts jax.
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} must be in [0, process_count={count}).")
    return index, count


def per_process_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the process count {process_count}."
        )
    return global_batch_size // process_count


def data_loader(
    config: ml_collections.ConfigDict,
    source: Any,
    sampler: grain.samplers.IndexSampler,
    operations: list[Any],
    shard_options: grain.sharding.ShardOptions,
) -> grain.DataLoader:
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=config.worker_count,
        worker_buffer_size=config.worker_buffer_size,
        shard_options=shard_options,
        read_options=grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer_size),
    )


def make_train_iterator(
    data_config: ml_collections.ConfigDict,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataIterator:
    """Infinite, shuffled, augmented train batches of this process (global_batch_size / process_count each).

    process_index / process_count default to jax's. The order and the
    augmentation depend only on (data, seed, process_index, process_count).
    """
    config = validate_data_config(data_config)
    index, count = process_of(process_index, process_count)
    batch_size = per_process_batch(global_batch_size, count)
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"The data seed must be an int in [0, 2**32) (grain's sampler), got {seed!r}.")
    source = make_source(config, train=True)
    if len(source) < count:
        raise ValueError(f"The train set has {len(source)} examples, fewer than the {count} processes reading it.")
    shard_options = grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=shard_options, shuffle=True, num_epochs=None, seed=int(seed)
    )
    operations = [
        transforms.DecodeImage(config.min_image_size, drop_failures=True),
        transforms.KeepDecoded(),
        transforms.RandomCropFlip(config.image_size, random_crop=config.random_crop),
        grain.transforms.Batch(batch_size=batch_size, drop_remainder=True),
    ]
    loader = data_loader(config, source, sampler, operations, shard_options)
    return DataIterator(loader, num_classes=getattr(source, "num_classes", None))


class PaddedSource:
    """`source` followed by placeholder records up to `length`, so the eval set splits into whole batches."""

    def __init__(self, source: Any, length: int):
        self._source = source
        self._num_real = len(source)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Any:
        if index < self._num_real:
            return self._source[index]
        if index < self._length:
            return {transforms.PADDING: True, "label": 0}
        raise IndexError(f"PaddedSource index {index} out of range [0, {self._length}).")

    def __repr__(self) -> str:
        return f"PaddedSource({self._source!r}, length={self._length})"


def make_eval_iterator(
    data_config: ml_collections.ConfigDict,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataIterator:
    """One ordered pass over the eval split; `len()` batches per process, the same on every process.

    The set is padded to ceil(N / global_batch_size) * global_batch_size examples;
    process p reads the p-th contiguous slice of that. Use `batch["mask"]` to
    weight per-example metrics: padding and undecodable images have mask False.
    """
    config = validate_data_config(data_config)
    index, count = process_of(process_index, process_count)
    batch_size = per_process_batch(global_batch_size, count)
    source = make_source(config, train=False)
    num_batches = -(-len(source) // global_batch_size)
    padded = PaddedSource(source, num_batches * global_batch_size)
    shard_options = grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(padded), shard_options=shard_options, shuffle=False, num_epochs=1
    )
    operations = [
        transforms.DecodeImage(config.min_image_size, drop_failures=False),
        transforms.ResizeCenterCrop(config.image_size),
        grain.transforms.Batch(batch_size=batch_size, drop_remainder=True),
    ]
    loader = data_loader(config, padded, sampler, operations, shard_options)
    return DataIterator(loader, num_batches=num_batches, num_classes=getattr(source, "num_classes", None))
