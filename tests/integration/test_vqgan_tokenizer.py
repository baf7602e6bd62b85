"""The MaskGIT-VQGAN as a tokenizer (the official RAR's): Tokenizer.load of its port / msgpack, raster-order codes,
pretokenized shards, and a RAR trained on them that samples images the VQGAN decodes.

A small VQGAN of the official structure (random weights, 4x downsampling: 32 px -> an 8 x 8 grid of 64 tokens)
is written in the port's key layout as .safetensors (no torch here; tests/references/test_vqgan_tokenizer_port.py
checks the torch .bin) and as the flax msgpack python -m titok_jax.convert.vqgan writes.
"""

import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RAR_GENERATOR
from train_helpers import tiny_config, tiny_generator_config

from titok_jax import Generator, Tokenizer, configs, recipes
from titok_jax.convert import torch_layout as tl
from titok_jax.convert import vqgan as cv
from titok_jax.data import pipeline, transforms
from titok_jax.inference import pretokenize
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.models.vqgan import VQGAN
from titok_jax.tasks import export

SMALL_VQGAN = dict(filters=32, channel_multipliers=(1, 2, 2), num_res_blocks=1, embedding_dim=32, codebook_size=128)
IMAGE_SIZE, NUM_TOKENS = 32, 64  # 32 px / 4 = 8 x 8 codes


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory):
    """(VQGAN, its variables, port .safetensors path, msgpack path)."""
    root = tmp_path_factory.mktemp("vqgan")
    model = VQGAN(**SMALL_VQGAN)
    images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
    variables = jax.device_get(nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images)))
    state = tl.tree_to_state_dict(variables["params"], cv.vqgan_port_entries(**SMALL_VQGAN))
    port = str(root / "maskgit-vqgan.safetensors")
    tl.save_safetensors(state, port, {})
    msgpack = str(root / "vqgan.msgpack")
    with open(msgpack, "wb") as f:
        f.write(flax.serialization.msgpack_serialize({"params": tl.unflatten(tl.flatten(variables["params"]))}))
    return model, variables, port, msgpack


def _images(count, seed=0):
    return np.random.RandomState(seed).uniform(size=(count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def test_encode_gives_the_vqgans_raster_codes_and_decode_its_clamped_pixels(vqgan):
    model, variables, port, msgpack = vqgan
    size = {"image_size": IMAGE_SIZE}
    from_port, from_msgpack = Tokenizer.load(port, config=size), Tokenizer.load(msgpack, config=size)
    images = _images(5)
    codes = from_port.encode(images)
    assert codes.shape == (5, NUM_TOKENS) and codes.dtype == np.int32
    np.testing.assert_array_equal(codes, from_msgpack.encode(images))
    assert from_port.identity() | {"tokenizer_workdir": ""} == from_msgpack.identity() | {"tokenizer_workdir": ""}

    # Raster order: the VQGAN's (B, h, w) grid flattened row by row.
    grid = np.asarray(model.apply(variables, images, method=VQGAN.encode))
    assert grid.shape == (5, 8, 8)
    np.testing.assert_array_equal(codes, grid.reshape(5, -1))
    assert len(np.unique(codes)) > 4  # not one code everywhere

    # decode = the VQGAN's decoding of that grid, clamped to [0, 1]; the grid itself decodes the same.
    expected = np.clip(np.asarray(model.apply(variables, grid, method=VQGAN.decode_codes)), 0.0, 1.0)
    decoded = from_port.decode(codes)
    assert decoded.shape == (5, IMAGE_SIZE, IMAGE_SIZE, 3) and 0.0 <= decoded.min() and decoded.max() <= 1.0
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    np.testing.assert_array_equal(from_port.decode(grid), decoded)

    # What the generators check, read off the file's shapes (no weights): sizes, VQ, no token dropout, pixels.
    tok = tokenizer_lib.model_of(port, size)
    assert (tok.num_latent_tokens, tok.codebook_size, tok.image_size) == (NUM_TOKENS, 128, IMAGE_SIZE)
    assert (tok.quantize_mode, tok.token_dropout, tok.decodes_to_pixels) == ("vq", "none", True)
    assert tokenizer_lib.is_exported_tokenizer(port) and tokenizer_lib.is_exported_tokenizer(msgpack)
    assert cv.read_fields(port) == cv.read_fields(msgpack) == {**SMALL_VQGAN}
    assert "8x8 grid in raster order" in repr(from_port)
    # Without config: the official 256 px, a 64 x 64 grid of this f4 VQGAN.
    assert tokenizer_lib.model_of(msgpack).num_latent_tokens == (256 // 4) ** 2


def test_refusals_name_the_fix(vqgan):
    _, _, port, _ = vqgan
    with pytest.raises(ValueError, match=r"codebook_size=1024 \(the file: 128\); drop those fields"):
        Tokenizer.load(port, config={"codebook_size": 1024})
    with pytest.raises(ValueError, match="must be a positive multiple of 4"):
        tokenizer_lib.model_of(port, {"image_size": 30})
    tok = Tokenizer.load(port, config={"image_size": IMAGE_SIZE})
    with pytest.raises(ValueError, match=r"Token ids must lie in \[0, 128\)"):
        tok.decode(np.full((1, NUM_TOKENS), 500))
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 32, 32, 3\)"):
        tok.encode(np.zeros((1, 64, 64, 3), np.float32))


@pytest.fixture(scope="module")
def shards(vqgan, tmp_path_factory):
    """(pretokenize config, tokens dir of 64 images written by the port VQGAN, its metadata)."""
    _, _, port, _ = vqgan
    config = tiny_config("single_stage:tiny_vq")  # its data: 32 px synthetic images, 10 classes
    config.data.num_examples = 64
    tokens_dir = str(tmp_path_factory.mktemp("vqgan_tokens"))
    metadata = pretokenize.pretokenize(config, port, tokens_dir, shard_size=32, batch_size=16)
    return config, tokens_dir, metadata


def test_pretokenize_writes_the_vqgans_codes(vqgan, shards):
    _, _, port, _ = vqgan
    config, tokens_dir, metadata = shards
    tok = Tokenizer.load(port, config=config)  # an experiment config: its data's image size
    assert (metadata["num_tokens"], metadata["codebook_size"]) == (NUM_TOKENS, 128)
    assert metadata["codebook_sha256"] == tok.identity()["codebook_sha256"]
    records = [
        r for i in range(2) for r in pretokenize.read_shard(os.path.join(tokens_dir, pretokenize.shard_name(i, 2)))
    ]
    source = pipeline.make_source(config.data, train=True)
    decode, crop = transforms.DecodeImage(), transforms.ResizeCenterCrop(IMAGE_SIZE)
    images = np.stack([crop.map(decode.map(source[i]))["image"] for i in range(16)])
    np.testing.assert_array_equal(np.stack([r["tokens"][0] for r in records[:16]]), tok.encode(images))


def _rar_config(port, tokens_dir, **overrides):
    """The tiny RAR over the small VQGAN's shards: its file named by workdir, no tokenizer experiment config."""
    vocabulary = {"tokenizer.config": "", "model.codebook_size": 128, "model.num_tokens": NUM_TOKENS}
    return tiny_generator_config(port, tokens_dir, experiment=RAR_GENERATOR, **{**vocabulary, **overrides})


def test_rar_trains_on_vqgan_shards_and_samples_images_it_decodes(vqgan, shards, tmp_path):
    _, _, port, _ = vqgan
    _, tokens_dir, _ = shards
    config = _rar_config(port, tokens_dir)
    recipes.validate(config)
    workdir = str(tmp_path / "rar")
    metrics = recipes.train(config, workdir)  # 8 fake devices
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["token_accuracy"] <= 1.0

    generator = Generator.load(workdir)  # its recorded config names the VQGAN file
    assert type(generator.tokenizer.model).__name__ == "VQGANTokenizer"
    images, tokens = generator.generate(np.arange(6), seed=1)
    assert images.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    assert tokens.shape == (6, NUM_TOKENS) and 0 <= tokens.min() and tokens.max() < 128
    pixels = Tokenizer.load(port, config={"image_size": IMAGE_SIZE}).decode(tokens)
    np.testing.assert_array_equal(images, np.round(pixels * 255).astype(np.uint8))

    # A bundle carries the VQGAN as its tokenizer and samples the same.
    bundle = str(tmp_path / "bundle")
    export.export(config, workdir, bundle)
    loaded = Generator.load(bundle)
    np.testing.assert_array_equal(loaded.generate(np.arange(6), seed=1)[1], tokens)
    assert loaded.tokenizer.identity()["codebook_sha256"] == generator.tokenizer.identity()["codebook_sha256"]

    # Named alone, the file is read at the official 256 px: 4096 tokens of this f4 VQGAN, and the hint says so.
    with pytest.raises(ValueError, match=r"makes 4096: pass the tokenizer.*config=\{'image_size': S\}"):
        Generator.load(workdir, tokenizer=port)


def test_a_generator_of_another_vocabulary_or_grid_is_refused(vqgan, shards):
    _, _, port, _ = vqgan
    _, tokens_dir, _ = shards
    with pytest.raises(ValueError, match=r"codebook_size = 1024 but the tokenizer '.*maskgit-vqgan\.safetensors'"):
        recipes.validate(_rar_config(port, tokens_dir, **{"model.codebook_size": 1024}))
    with pytest.raises(ValueError, match=r"num_tokens \(the tokenizer's num_latent_tokens\) = 256 but .* has 64"):
        recipes.validate(_rar_config(port, "", **{"model.num_tokens": 256}))
    # The VQGAN's shards under a generator over another tokenizer (the tiny TiTok: 256 codes x 16 tokens).
    with pytest.raises(ValueError, match="have codebook_size=128 but the generator expects 256"):
        recipes.validate(tiny_generator_config("", tokens_dir, experiment=RAR_GENERATOR))


def test_rar_published_sizes_default_to_the_vqgan():
    config = configs.load_config(f"{RAR_GENERATOR}:b")
    assert dict(config.tokenizer) == {"config": "", "workdir": "maskgit-vqgan-imagenet-f16-256.bin"}
    assert (config.model.codebook_size, config.model.num_tokens, config.data.image_size) == (1024, 256, 256)
    with pytest.raises(ValueError, match=r"does not exist: download the MaskGIT-VQGAN .*--config\.tokenizer\.workdir"):
        recipes.validate(config)
    other = configs.load_config(f"{RAR_GENERATOR}:l,tokenizer=titok_two_stage.py:l32,stage=2")
    assert other.tokenizer.config.endswith("titok_two_stage.py:l32,stage=2") and other.model.num_tokens == 32


def test_benchmarks_size_it_off_the_file_with_random_weights(vqgan, shards):
    """random_frozen (benchmark / memory): the VQGAN's shapes from its file, weights drawn, nothing read."""
    from train_helpers import build_recipe

    _, _, port, _ = vqgan
    _, tokens_dir, _ = shards
    recipe, frozen = build_recipe(_rar_config(port, tokens_dir), random_frozen=True)
    assert type(recipe.tokenizer).__name__ == "VQGANTokenizer" and recipe.tokenizer.num_latent_tokens == NUM_TOKENS
    assert frozen["tokenizer"]["params"]["quantizer"]["codebook"].shape == (128, 32)
