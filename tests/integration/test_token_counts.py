"""Variable-length tokenizers scored by how many tokens they decode: `evaluate --token_counts` (per-k metrics in
the JSON, the quality-vs-k plot, the k-grid; k = K equals the full evaluation, and each k equals decoding that
prefix through the Tokenizer), its refusals, and the in-training curve (scalars per k, grid rows, plot)."""

import json

import jax
import numpy as np
import pytest
from absl import app
from PIL import Image
from train_helpers import build_recipe, tiny_config, write_tokenizer

from titok_jax import Tokenizer, images, recipes
from titok_jax import evaluate as evaluate_command
from titok_jax import sharding as sh
from titok_jax.data import pipeline
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.train import loop
from titok_jax.train.state import create_train_state

METRICS = ("rfid", "codebook", "psnr", "ssim", "mse")
COUNTS = (1, 2, 4, 8, 16)


@pytest.fixture(scope="module")
def nested_workdir(tmp_path_factory):
    """A tiny_vq_nested workdir (16 tokens, uniform token dropout) as training leaves it, random weights."""
    config = tiny_config("single_stage:tiny_vq_nested")
    workdir = str(tmp_path_factory.mktemp("nested"))
    write_tokenizer(config, workdir)
    return config, workdir


def _rounded(pixels):
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0) / 255.0  # the evaluation protocol's uint8 round trip


def test_evaluate_token_counts_writes_each_prefix_the_plot_and_the_grid(nested_workdir):
    config, workdir = nested_workdir
    options = evaluate_command.Options(
        workdir=workdir, metrics=METRICS, max_images=8, token_counts=tuple(map(str, COUNTS))
    )
    summary = evaluate_command.run(config, options)
    with open(f"{workdir}/eval/step_2_token_counts.json") as f:
        saved = json.load(f)
    assert saved["step"] == 2 and saved["token_counts"] == list(COUNTS)
    assert saved["by_num_tokens"] == summary["by_num_tokens"] and sorted(saved["by_num_tokens"], key=int) == [
        str(k) for k in COUNTS
    ]
    by_k = {int(k): values for k, values in saved["by_num_tokens"].items()}
    for values in by_k.values():
        assert values["num_images"] == 8
        for name in ("psnr", "ssim", "mse", "rfid_random_inception", "codebook_usage"):
            assert np.isfinite(values[name]), (name, values)
    assert by_k[1]["mse"] != by_k[16]["mse"]  # the kept tokens matter
    # The codebook statistics count the k kept codes of each image: 8 images x 1 code use at most 8 codes.
    assert by_k[1]["codebook_usage"] * 256 <= 8 < by_k[16]["codebook_usage"] * 256

    # k = K is the normal full evaluation, the Inception path included.
    full = evaluate_command.run(config, evaluate_command.Options(workdir=workdir, metrics=METRICS, max_images=8))
    for name in ("mse", "psnr", "ssim", "rfid_random_inception", "codebook_usage", "dead_codes"):
        np.testing.assert_allclose(by_k[16][name], full[name], rtol=1e-5, err_msg=name)

    # Each k is what the Tokenizer decodes from the first k tokens of the same eval images.
    batch = next(iter(pipeline.make_eval_iterator(config.data, config.eval_batch_size)))
    originals = batch["image"][:8]
    tokenizer = Tokenizer.load(workdir, config=config)
    tokens = tokenizer.encode(originals)
    decoded = {}
    for k in COUNTS:
        decoded[k] = _rounded(tokenizer.decode(tokens[:, :k]))
        np.testing.assert_allclose(by_k[k]["mse"], np.mean((decoded[k] - originals) ** 2), rtol=1e-4, err_msg=k)

    plot = Image.open(summary["plot"])
    plot.load()
    assert plot.mode == "RGB" and plot.width > plot.height > 100
    assert len(np.unique(np.asarray(plot).reshape(-1, 3), axis=0)) > 10  # lines and text, not a blank canvas

    grid = np.asarray(Image.open(summary["grid"]))
    tile = 128  # 32 px images upscaled 4x
    header = images.header_height(tile)
    assert grid.shape == (header + 4 * tile, (1 + len(COUNTS)) * tile, 3)  # 4 images x (original + each k)
    for row in range(4):
        top = header + row * tile
        cell = grid[top : top + tile, :tile]
        np.testing.assert_array_equal(cell, images.upscale(images.to_uint8(originals[row]), 4))
        for column, k in enumerate(COUNTS, start=1):
            cell = grid[top : top + tile, column * tile : (column + 1) * tile].astype(int)
            expected = images.upscale(images.to_uint8(decoded[k][row]), 4).astype(int)
            assert np.abs(cell - expected).max() <= 1, (row, k)


def test_token_counts_are_refused_before_anything_is_read(monkeypatch, tmp_path):
    def no_restore(*args, **kwargs):
        raise AssertionError("the workdir was restored before the token counts were checked")

    monkeypatch.setattr(tokenizer_lib, "restore_workdir", no_restore)
    missing = str(tmp_path / "never_written")
    plain = tiny_config("single_stage:tiny_vq")
    options = evaluate_command.Options(workdir=missing, token_counts=("1", "2", "16"))
    with pytest.raises(ValueError, match=r"trained without token dropout .* drop --token_counts, or use a tokenizer"):
        evaluate_command.run(plain, options)
    with pytest.raises(ValueError, match="trained without token dropout"):  # even all K: nothing per k to say
        evaluate_command.run(plain, evaluate_command.Options(workdir=missing, token_counts=("16",)))
    nested = tiny_config("single_stage:tiny_vq_nested")
    for counts, message in (
        (("0", "4"), r"\[0\] lie outside 1..16 .* e.g. 1,2,4,8,16"),
        (("17",), r"\[17\] lie outside 1..16"),
        (("4", "eight"), "'eight' is not a whole number"),
    ):
        with pytest.raises(ValueError, match=message) as error:
            evaluate_command.run(nested, evaluate_command.Options(workdir=missing, token_counts=counts))
        assert "\n" not in str(error.value)  # one line
    with pytest.raises(app.UsageError, match="--token_counts scores a tokenizer workdir"):
        evaluate_command.run(None, evaluate_command.Options(samples="x.npz", token_counts=("4",)))


def test_in_training_evaluation_reports_the_curve_for_a_variable_length_tokenizer():
    config = tiny_config("single_stage:tiny_vq_nested")
    recipe, frozen = build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = create_train_state(recipe, config, mesh)
    grid_batch = recipes.lookup(config).make_data(config)[1]  # the held-out grid batch the loop evaluates

    class Writer:  # records what the loop writes
        scalars, pictures = {}, {}

        def write_scalars(self, step, values):
            self.scalars.update(values)

        def write_images(self, step, values):
            self.pictures.update(values)

    writer = Writer()
    with jax.set_mesh(mesh):
        state = init()
        results = loop._write_grid(recipe, state, grid_batch, jax.device_put(frozen, sh.replicated(mesh)), mesh,
                                   writer, 4)  # fmt: skip
    per_k = [results[f"eval/ema_reconstruction_mse_k{k}"] for k in COUNTS]
    assert all(np.isfinite(per_k)) and per_k[0] != per_k[-1]
    np.testing.assert_allclose(per_k[-1], results["eval/ema_reconstruction_mse"], rtol=1e-5)  # k = K: all tokens
    assert writer.scalars == results
    grid = writer.pictures["reconstructions"]  # originals, all K, then k = 1, 2, 4, 8: 6 rows of 128 px tiles
    assert grid.shape == (1, 6 * 128, 8 * 128, 3)
    plot = writer.pictures["reconstruction_mse_by_num_tokens"]
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == np.uint8

    plain = tiny_config("single_stage:tiny_vq")
    plain_recipe, _ = build_recipe(plain)
    assert plain_recipe.evaluation_images({"ema_reconstruction_mse": 0.1}) == {}  # no dropout: no curve
