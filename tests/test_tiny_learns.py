"""The README's commands, in order: the tiny tokenizer learns, its tokens pretokenize, the tiny generator
learns them, and the sampler writes the evaluator's layout.

Tokenizer: held-out reconstructions end far better than at init and than the mean image.

The run is the README command itself (`python -m titok_jax.main --workdir=DIR`, one CPU
device, tiny_vq, 600 steps) in a subprocess. (tiny_vae, measured the same way at 300 steps:
0.283 -> 0.056; left out to keep the suite under 15 minutes.) Two references on the held-out batch it evaluates:
- the model at init, which draws noise around 0.5 (what "learning" starts from);
- the best latent-independent output, the per-pixel mean of that batch: a decoder that
  ignores its tokens cannot beat it, so ending clearly below it shows the tokens carry
  the image. (Before the tiny init_std / VQ settings the run sat exactly on it.)
- each image's own mean colour: before the identity start of the pixel head's last conv
  (pixel_conv_init) the run lost red and green and ended at twice this (0.053 vs 0.026).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import EXPERIMENTS, GENERATOR, SINGLE_STAGE
from PIL import Image

from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.data import tokens as token_data
from titok_jax.train import build, loop


def _init_mse(config, images):
    recipe, frozen = build.build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = loop.create_train_state(recipe, config, mesh)
    with jax.set_mesh(mesh):
        scalars, _ = loop.evaluate(init(), {"image": jnp.asarray(images)}, frozen, recipe)
    return float(scalars["ema_reconstruction_mse"])


def _run(*args):
    """A README command (python -m ...) on one CPU device, as a user runs it; -> its last stdout line as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, "-m", *args]
    result = subprocess.run(command, cwd=EXPERIMENTS.parent, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _per_position_mode_accuracy(tokens_dir):
    """The best context-free guess of a masked token: the most frequent code at its position."""
    names = sorted(n for n in os.listdir(tokens_dir) if n.endswith(".array_record"))
    codes = np.stack([r["tokens"][0] for n in names for r in token_data.read_shard(os.path.join(tokens_dir, n))])
    modes = np.array([np.bincount(column).argmax() for column in codes.T])
    return float(np.mean(codes == modes))


@pytest.mark.slow
def test_readme_pipeline_learns(tmp_path):
    config = configs.load_config(f"{SINGLE_STAGE}:tiny_vq")  # the default of titok_jax.main
    images = build.make_data(config)[1]["image"]
    mean_image_mse = float(np.mean(np.square(images - images.mean(axis=0, keepdims=True))))
    flat_colour_mse = float(np.mean(np.square(images - images.mean(axis=(1, 2), keepdims=True))))
    init_mse = _init_mse(config, images)
    tokenizer_dir, tokens_dir, generator_dir = (str(tmp_path / d) for d in ("tokenizer", "tokens", "generator"))

    metrics = _run("titok_jax.main", f"--workdir={tokenizer_dir}")

    final_mse = metrics["eval/ema_reconstruction_mse"]
    print(
        f"tiny_vq: held-out MSE at init {init_mse:.4f}, mean image {mean_image_mse:.4f}, "
        f"flat colour {flat_colour_mse:.4f}, final {final_mse:.4f}"
    )
    assert init_mse > 0.2
    assert os.path.isdir(os.path.join(tokenizer_dir, "checkpoints", str(config.total_steps)))
    assert final_mse < init_mse / 3
    assert final_mse < 0.85 * mean_image_mse
    assert final_mse < 1.1 * flat_colour_mse
    # The run reports its end-of-training evaluation (32 held-out images, random Inception: labelled).
    assert metrics["eval/num_images"] == 32 and np.isfinite(metrics["eval/rfid_random_inception"])
    assert 0 < metrics["eval/codebook_usage"] <= 1 and metrics["eval/codebook_entropy_bits"] > 1

    # The README's export and tokenize commands: a bundle, then images -> tokens -> reconstructions.
    export_dir, images_dir = str(tmp_path / "export"), tmp_path / "images"
    exported = _run(
        "titok_jax.export", f"--config={SINGLE_STAGE}:tiny_vq", f"--workdir={tokenizer_dir}", f"--output={export_dir}"
    )
    assert exported["step"] == config.total_steps and exported["format"] == "bundle"
    images_dir.mkdir()
    for i, image in enumerate(np.round(images[:16] * 255).astype(np.uint8)):
        Image.fromarray(image).save(images_dir / f"{i}.png")
    tokenized = _run(
        "titok_jax.tokenize", f"--tokenizer={export_dir}", f"--images={images_dir}", f"--output={tmp_path / 'tok'}"
    )
    assert tokenized["tokens"] == [16, config.model.num_latent_tokens]
    assert tokenized["mse"] < 0.85 * mean_image_mse  # the exported EMA model reconstructs as in training

    metadata = _run(
        "titok_jax.pretokenize",
        f"--config={SINGLE_STAGE}:tiny_vq",
        f"--tokenizer={tokenizer_dir}",
        f"--output={tokens_dir}",
        "--flip",
    )
    assert metadata["num_examples"] == config.data.num_examples and metadata["views"] == 2

    # The generator's README command (a third of its steps, for time) over those tokens.
    generator = [f"--config={GENERATOR}:tiny", f"--config.tokenizer.workdir={tokenizer_dir}"]
    generator.append(f"--config.tokens_dir={tokens_dir}")
    metrics = _run("titok_jax.main", *generator, f"--workdir={generator_dir}", "--config.total_steps=200")
    baseline = _per_position_mode_accuracy(tokens_dir)
    accuracy = metrics["masked_token_accuracy"]
    print(f"tiny generator: masked-token accuracy {accuracy:.3f}; per-position mode {baseline:.3f}; chance 1/256")
    assert accuracy > max(2 * baseline, 100 / 256)

    summary = _run("titok_jax.sample", *generator, f"--workdir={generator_dir}", "--num_images=20")
    samples = np.load(os.path.join(summary["output_dir"], "samples.npz"))
    assert samples["arr_0"].shape == (20, 32, 32, 3) and samples["arr_0"].dtype == np.uint8
    assert samples["tokens"].shape == (20, 16) and samples["tokens"].max() < 256
