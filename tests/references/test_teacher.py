"""The stage-1 teacher: loaded from the official maskgit msgpack layout, validated, or refused clearly."""

import flax.linen
import flax.serialization
import jax
import numpy as np
import pytest
from helpers import TWO_STAGE
from maskgit_reference import encode_decode, maskgit_vqgan

from titok_jax import configs
from titok_jax.models.vqgan import VQGAN
from titok_jax.recipes import teacher


def _teacher_config(**overrides):
    config = configs.load_config(f"{TWO_STAGE}:s128").teacher
    config.update(overrides)
    return config


def test_official_maskgit_checkpoint_restores_and_encodes_identically(tmp_path):
    images = jax.random.uniform(jax.random.PRNGKey(0), (1, 32, 32, 3))
    reference = maskgit_vqgan()
    variables = reference.init(jax.random.PRNGKey(1), images, method=encode_decode)
    path = tmp_path / "tokenizer_imagenet256_checkpoint"
    path.write_bytes(flax.serialization.to_bytes(variables))  # the published file's format

    module, loaded = teacher.load_teacher(_teacher_config(checkpoint=str(path)), image_size=32, seed=0)
    _, ref_codes = reference.apply(variables, images, method=encode_decode)
    np.testing.assert_array_equal(module.apply(loaded, images, method=VQGAN.encode), ref_codes)


def test_missing_teacher_weights_stop_with_a_clear_message(tmp_path):
    with pytest.raises(
        ValueError, match=r"set config.teacher.checkpoint .*tokenizer_imagenet256_checkpoint.*It is not set"
    ):
        teacher.check_teacher_weights(_teacher_config())
    with pytest.raises(FileNotFoundError, match=r"No file at '.*nope.msgpack'"):
        teacher.check_teacher_weights(_teacher_config(checkpoint=str(tmp_path / "nope.msgpack")))


def test_wrong_teacher_file_names_the_problem(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"Could not read .*junk\.ckpt.* as a flax msgpack checkpoint"):
        teacher.load_teacher(_teacher_config(checkpoint=str(junk)), image_size=32, seed=0)
    junk_torch = tmp_path / "junk.bin"  # .bin: the PyTorch port
    junk_torch.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"junk\.bin' is not a readable PyTorch state dict"):
        teacher.load_teacher(_teacher_config(checkpoint=str(junk_torch)), image_size=32, seed=0)

    small = VQGAN(filters=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, embedding_dim=32, codebook_size=64)
    variables = small.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    other = tmp_path / "other_model.msgpack"
    other.write_bytes(flax.serialization.to_bytes(flax.linen.meta.unbox(variables)))
    with pytest.raises(
        ValueError,
        match=r"does not fit the model: key params/decoder/Conv_0/bias has shape \(64,\), expected \(512,\); .* and \d+ more",
    ):
        teacher.load_teacher(_teacher_config(checkpoint=str(other)), image_size=32, seed=0)
