"""Export of a trained tokenizer (bundle / official layout) and the Tokenizer inference API on it."""

import json
import os

import jax
import numpy as np
import pytest
from train_helpers import build_recipe, restore_state, tiny_config, tiny_generator_config, write_tokenizer

from titok_jax import Tokenizer, recipes
from titok_jax.data import synthetic
from titok_jax.images import to_uint8
from titok_jax.inference import bundle
from titok_jax.inference.folders import detokenize, tokenize_folder
from titok_jax.tasks.export import export as export_tokenizer


def _ema_unlike_params(state):
    """EMA weights that differ from the raw ones, so the test can tell which were exported."""
    return state.replace(ema_params=jax.tree.map(lambda x: x * 0.9 + 0.01, state.ema_params))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = tiny_config()
    workdir = str(tmp_path_factory.mktemp("tokenizer") / "run")
    write_tokenizer(config, workdir, step=3, edit=_ema_unlike_params)
    return config, workdir


@pytest.fixture(scope="module")
def images():
    shapes = synthetic.SyntheticShapes(num_examples=6, image_size=32, seed=7)
    return np.stack([shapes[i]["image"] for i in range(6)])


def _restored(config, workdir):
    recipe, state, step = restore_state(config, workdir)
    return recipe.model, jax.device_get(state.ema_params), jax.device_get(state.params), step


def _assert_trees_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))


def test_bundle_reproduces_the_ema_model_exactly(trained, images, tmp_path):
    config, workdir = trained
    summary = export_tokenizer(config, workdir, str(tmp_path / "bundle"))
    assert summary["step"] == 3 and summary["ema"] is True
    model, ema, raw, _ = _restored(config, workdir)

    loaded = Tokenizer.load(str(tmp_path / "bundle"))
    assert loaded.model == model  # every field round-trips through the JSON
    _assert_trees_bitwise_equal(jax.device_get(loaded.variables), {"params": ema["params"]})
    reference = Tokenizer(model, ema)  # the training-time EMA model, same inference path
    tokens = loaded.encode(images)
    assert tokens.shape == (6, model.num_latent_tokens) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, reference.encode(images))
    np.testing.assert_array_equal(loaded.decode(tokens), reference.decode(tokens))
    # uint8 and float [0, 1] inputs are the same images; a ragged batch (6 over 8 devices) is padded.
    np.testing.assert_array_equal(loaded.encode(images.astype(np.float32) / 255), tokens)
    np.testing.assert_array_equal(loaded.encode(images[:1]), tokens[:1])

    # --ema=false exports the raw weights, which encode differently here.
    export_tokenizer(config, workdir, str(tmp_path / "raw"), ema=False)
    raw_loaded = Tokenizer.load(str(tmp_path / "raw"))
    _assert_trees_bitwise_equal(jax.device_get(raw_loaded.variables), {"params": raw["params"]})
    header = json.load(open(tmp_path / "raw" / bundle.BUNDLE_FILE))
    assert header["metadata"]["ema"] is False and header["kind"] == "tokenizer"


def test_bfloat16_bundle_stores_half_and_loads_as_float32(trained, tmp_path):
    config, workdir = trained
    export_tokenizer(config, workdir, str(tmp_path / "bf16"), dtype="bfloat16")
    size_bf16 = os.path.getsize(tmp_path / "bf16" / bundle.PARAMS_FILE)
    export_tokenizer(config, workdir, str(tmp_path / "f32"))
    assert size_bf16 < 0.55 * os.path.getsize(tmp_path / "f32" / bundle.PARAMS_FILE)
    loaded = bundle.load_bundle(str(tmp_path / "bf16"))
    _, ema, _, _ = _restored(config, workdir)
    kernel = loaded.variables["params"]["encoder"]["patch_embed"]["kernel"]
    assert kernel.dtype == np.float32
    expected = np.asarray(ema["params"]["encoder"]["patch_embed"]["kernel"]).astype(jax.numpy.bfloat16)
    np.testing.assert_array_equal(kernel, expected.astype(np.float32))


def test_export_refusals_write_nothing(trained, tmp_path):
    config, workdir = trained
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not empty.*--overwrite"):
        export_tokenizer(config, workdir, str(occupied))
    assert os.listdir(occupied) == ["notes.txt"]
    with pytest.raises(ValueError, match="must not be the training workdir"):
        export_tokenizer(config, workdir, workdir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_tokenizer(config, str(tmp_path / "nowhere"), str(tmp_path / "out1"))
    # Generators export too (tests/integration/test_generator_api.py); a generator config does not read a
    # tokenizer's checkpoint.
    with pytest.raises(ValueError, match="holds another model than the config describes"):
        export_tokenizer(tiny_generator_config(workdir), workdir, str(tmp_path / "out2"))
    with pytest.raises(ValueError, match="bfloat16 is for bundles"):
        export_tokenizer(config, workdir, str(tmp_path / "out3"), file_format="pytorch", dtype="bfloat16")
    # The tiny ViT (width 64) is not a size the official code can build: refused, pointing at bundles.
    with pytest.raises(ValueError, match=r"only builds ViTs of the named sizes.*--format=bundle"):
        export_tokenizer(config, workdir, str(tmp_path / "out4"), file_format="pytorch")
    assert not any((tmp_path / f"out{i}").exists() for i in range(1, 5))


def test_tokenizer_input_errors_name_the_fix(trained, tmp_path, images):
    config, workdir = trained
    export_tokenizer(config, workdir, str(tmp_path / "bundle"))
    tok = Tokenizer.load(str(tmp_path / "bundle"))
    with pytest.raises(ValueError, match=r"channels-first\? transpose to NHWC"):
        tok.encode(images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"Resize / center-crop to 32 px"):
        tok.encode(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*divide 0..255 floats by 255"):
        tok.encode(images.astype(np.float32))
    with pytest.raises(ValueError, match=rf"Token ids must lie in \[0, {tok.codebook_size}\).*another tokenizer"):
        tok.decode(np.full((1, tok.num_tokens), tok.codebook_size))
    with pytest.raises(FileNotFoundError, match="No tokenizer at"):
        Tokenizer.load(str(tmp_path / "missing"))
    with pytest.raises(
        ValueError, match=r"neither a titok_jax bundle \(titok_jax_bundle.json\) nor an official tokenizer directory"
    ):
        Tokenizer.load(str(tmp_path))
    with pytest.raises(ValueError, match="generator bundle, not a tokenizer"):
        bundle.save_bundle(str(tmp_path / "gen"), "generator", {"architecture": "vit"}, {"params": {"w": np.ones(2)}})
        Tokenizer.load(str(tmp_path / "gen"))


def test_tokenize_folder_and_back(trained, tmp_path, images):
    config, workdir = trained
    export_tokenizer(config, workdir, str(tmp_path / "bundle"))
    tok = Tokenizer.load(str(tmp_path / "bundle"))
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    from PIL import Image

    for i, image in enumerate(images[:3]):
        Image.fromarray(np.kron(image, np.ones((2, 2, 1), np.uint8))).save(folder / f"im{i}.png")  # 64 px
    summary = tokenize_folder(tok, str(tmp_path / "images"), str(tmp_path / "out"))
    data = np.load(tmp_path / "out" / "tokens.npz")
    assert list(data["files"]) == ["sub/im0.png", "sub/im1.png", "sub/im2.png"]
    assert summary["images"] == 3 and 0 < summary["mse"] < 0.5
    detokenize(tok, str(tmp_path / "out" / "tokens.npz"), str(tmp_path / "back"))
    first = np.asarray(Image.open(tmp_path / "back" / "reconstructions" / "sub" / "im0.png"))
    np.testing.assert_array_equal(first, to_uint8(tok.decode(data["tokens"][:1]))[0])
    assert (tmp_path / "out" / "grid.png").exists()

    assert summary["skipped"] == 0 and summary["resized"]["from"] == {"64x64": 3}

    (folder / "broken.png").write_bytes(b"not a png")  # skipped and listed, as training skips it
    summary = tokenize_folder(tok, str(tmp_path / "images"), str(tmp_path / "out2"))
    assert summary["images"] == 3 and summary["skipped_files"][0]["file"] == "sub/broken.png"
    assert (tmp_path / "out2" / "skipped.txt").read_text().startswith("sub/broken.png\tundecodable (")


def test_generators_take_an_exported_tokenizer(trained, tmp_path):
    """config.tokenizer.workdir may be a bundle: its own config replaces config.tokenizer.config, and it
    is the same tokenizer (same identity, so the workdir's token shards stay valid)."""

    config, workdir = trained
    export_tokenizer(config, workdir, str(tmp_path / "bundle"))
    generator = tiny_generator_config(str(tmp_path / "bundle"))
    generator.tokenizer.config = ""
    recipes.validate(generator)
    recipe, _ = build_recipe(generator)
    from_workdir = Tokenizer.load(workdir, config).identity()
    from_bundle = Tokenizer.load(str(tmp_path / "bundle")).identity()
    assert from_bundle["codebook_sha256"] == from_workdir["codebook_sha256"]
    assert from_bundle["checkpoint_step"] == 3 and recipe.tokenizer.num_latent_tokens == generator.model.num_tokens
    generator.model.num_tokens += 1
    with pytest.raises(ValueError, match=r"num_tokens .* but the tokenizer '.*bundle' has"):
        recipes.validate(generator)
