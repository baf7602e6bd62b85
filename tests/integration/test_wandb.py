"""The optional W&B writer (config.logging.wandb): offline, it writes the scalar keys and image grids that
TensorBoard gets (with the codebook's dead codes and usage histogram of each log window), resumes into the same
W&B run, and a missing wandb package is a one-line install hint."""

import glob
import os
import struct

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util
from train_helpers import tiny_config

from titok_jax import recipes
from titok_jax.train import wandb_writer, writers

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32768  # the .wandb file: a 7-byte header, then leveldb-log style records in 32 KiB blocks
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: str):
    data = open(path, "rb").read()
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of a block
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


def wandb_history(run_file: str) -> dict[int, dict[str, str]]:
    """step -> {key: json value} of every history row in an offline run file."""
    rows: dict[int, dict[str, str]] = {}
    for data in _records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            rows.setdefault(int(items["_step"]), {}).update(items)
    return rows


def logged_scalars(accumulator, tag: str) -> dict[int, float]:
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)}


def test_wandb_offline_gets_the_tensorboard_scalars_and_grids_and_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = str(tmp_path / "run")
    config = tiny_config(**{"logging.wandb": True, "logging.wandb_project": "titok_test"})
    recipes.train(config, workdir)

    accumulator = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    tensorboard_images = {t for t in tags if accumulator.SummaryMetadata(t).plugin_data.plugin_name == "images"}
    tensorboard_scalars = set(tags) - tensorboard_images
    assert {"loss", "learning_rate", "grad_norm", "dead_codes", "window_codebook_usage"} <= tensorboard_scalars
    assert {"reconstructions", "codebook_usage_histogram"} <= tensorboard_images
    # Dead codes over each log window: the 256 codes less those the window's 2 x 8 x 16 ids used.
    dead = logged_scalars(accumulator, "dead_codes")
    usage = logged_scalars(accumulator, "window_codebook_usage")
    assert sorted(dead) == [2, 4] and all(dead[s] == 256 * (1 - usage[s]) and 0 < dead[s] < 256 for s in dead)

    (run_file,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    history = wandb_history(run_file)
    assert sorted(history) == [2, 4]  # log_every=2, total_steps=4
    logged = set().union(*history.values())
    wandb_scalars = {k for k in logged if not k.startswith("_") and "/_type" not in k and not _image_field(k)}
    assert wandb_scalars == tensorboard_scalars
    image_keys = {k.removesuffix("/_type") for k in logged if k.endswith("/_type")}
    assert image_keys == tensorboard_images and image_keys
    for key in tensorboard_scalars & set(history[4]):  # same numbers as TensorBoard at step 4
        assert float(history[4][key]) == pytest.approx(logged_scalars(accumulator, key)[4], rel=1e-6)

    run_id = open(os.path.join(workdir, wandb_writer.RUN_ID_FILE)).read().strip()
    assert run_file.endswith(f"run-{run_id}.wandb")
    recipes.train(tiny_config(**{"logging.wandb": True, "total_steps": 6}), workdir)  # resume: the same W&B run
    runs = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 2 and all(r.endswith(f"run-{run_id}.wandb") for r in runs)
    resumed = wandb_history(next(r for r in runs if r != run_file))
    assert sorted(resumed) == [6]


def _image_field(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in {"width", "height", "sha256", "size", "path", "format", "count", "filenames"}


def test_wandb_requested_without_the_package_names_the_install(monkeypatch):
    monkeypatch.setattr(writers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install wandb"):
        recipes.validate(tiny_config(**{"logging.wandb": True}))
    recipes.validate(tiny_config())  # off by default: nothing to install
