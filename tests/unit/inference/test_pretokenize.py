"""Pretokenization: tokens equal the tokenizer's own encoding, shards split over processes, resume, refusals."""

import json
import os

import jax
import numpy as np
import pytest
from train_helpers import tiny_config, write_tokenizer

from titok_jax import Tokenizer
from titok_jax.data import pipeline, transforms
from titok_jax.inference import pretokenize


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tokenizer"))
    config = tiny_config("single_stage:tiny_vq")
    config.data.num_examples = 40
    write_tokenizer(config, workdir)
    return config, workdir


def _all_records(output):
    names = sorted(n for n in os.listdir(output) if n.endswith(".array_record"))
    return names, [r for n in names for r in pretokenize.read_shard(os.path.join(output, n))]


def test_tokens_match_the_tokenizer_and_shards_split_over_processes(tokenizer, tmp_path):
    config, workdir = tokenizer
    output = str(tmp_path / "tokens")
    for process in range(2):  # two processes, each writes its shards (0, 2) and (1)
        metadata = pretokenize.pretokenize(
            config,
            workdir,
            output,
            augmentation="flip",
            shard_size=16,
            batch_size=8,
            process_index=process,
            process_count=2,
        )
    names, records = _all_records(output)
    assert names == [pretokenize.shard_name(i, 3) for i in range(3)]
    assert [r["index"] for r in records] == list(range(40))
    assert metadata["num_tokens"] == 16 and metadata["codebook_size"] == 256 and metadata["checkpoint_step"] == 2
    with open(os.path.join(output, pretokenize.METADATA)) as f:
        assert json.load(f)["codebook_sha256"] == metadata["codebook_sha256"]

    # The same tokens as encoding the center-cropped images directly with the EMA params, in the same
    # batches of 8 (near-tied codes can flip with another batch shape), through the one encode path.
    tok = Tokenizer.load(workdir, config)
    source = pipeline.make_source(config.data, train=True)
    decode, crop = transforms.DecodeImage(), transforms.ResizeCenterCrop(32)
    images = np.stack([crop.map(decode.map(source[i]))["image"] for i in range(40)])
    expected = np.concatenate([tok.encode(images[i : i + 8]) for i in range(0, 40, 8)])
    flipped = np.concatenate([tok.encode(np.ascontiguousarray(images[i : i + 8, :, ::-1])) for i in range(0, 40, 8)])
    np.testing.assert_array_equal(np.stack([r["tokens"][0] for r in records]), np.asarray(expected))
    np.testing.assert_array_equal(np.stack([r["tokens"][1] for r in records]), flipped)
    np.testing.assert_array_equal([r["label"] for r in records], [source[i]["label"] for i in range(40)])
    assert len(np.unique(expected)) > 16  # real token variety, not one code per position


def test_rerun_skips_finished_shards_and_redoes_missing_ones(tokenizer, tmp_path):
    config, workdir = tokenizer
    output = str(tmp_path / "tokens")
    pretokenize.pretokenize(config, workdir, output, shard_size=16, batch_size=8)
    first, second = (os.path.join(output, pretokenize.shard_name(i, 3)) for i in (0, 1))
    stamp = os.stat(first).st_mtime_ns
    os.remove(second)
    with open(second + ".tmp", "wb") as f:  # an interrupted write
        f.write(b"partial")
    pretokenize.pretokenize(config, workdir, output, shard_size=16, batch_size=8)
    assert os.stat(first).st_mtime_ns == stamp
    assert len(pretokenize.read_shard(second)) == 16


def test_refuses_another_tokenizers_output_and_vae_tokenizers(tokenizer, tmp_path):
    config, workdir = tokenizer
    output = str(tmp_path / "tokens")
    pretokenize.pretokenize(config, workdir, output, shard_size=16, batch_size=8)
    other = config.copy_and_resolve_references()
    other.seed = 7
    other_dir = str(tmp_path / "other_tokenizer")
    write_tokenizer(other, other_dir)
    with pytest.raises(ValueError, match="another tokenizer"):
        pretokenize.pretokenize(other, other_dir, output, shard_size=16, batch_size=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretokenize.pretokenize(config, str(tmp_path / "nothing"), str(tmp_path / "t2"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        pretokenize.pretokenize(config, str(tmp_path / "empty"), str(tmp_path / "t2"))
    vae = tiny_config("single_stage:tiny_vae")
    with pytest.raises(ValueError, match="needs a tokenizer of discrete codes"):
        pretokenize.pretokenize(vae, workdir, str(tmp_path / "t3"))
    assert jax.device_count() == 8


def test_ten_crop_records_hold_ten_views(tokenizer, tmp_path):
    config, workdir = tokenizer
    output = str(tmp_path / "tokens")
    metadata = pretokenize.pretokenize(config, workdir, output, augmentation="ten_crop", shard_size=64, batch_size=8)
    _, records = _all_records(output)
    assert metadata["views"] == 10 and [r["tokens"].shape for r in records] == [(10, 16)] * 40
    # View 4 is the center 32 px of the 35 px (1.1x) center crop.
    tok = Tokenizer.load(workdir, config)
    source = pipeline.make_source(config.data, train=True)
    full = transforms.to_unit_float(
        transforms.resize_shorter_side(transforms.DecodeImage().map(source[0])["image"], 35)
    )
    center = full[2:34, 2:34][None]
    batch = np.concatenate([center, np.zeros((7, 32, 32, 3), np.float32)])
    np.testing.assert_array_equal(records[0]["tokens"][4], tok.encode(batch)[0])
