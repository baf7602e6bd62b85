"""The README's main job learns: held-out reconstructions end far better than at init and than the mean image.

The run is the README command itself (`python -m titok_jax.main --workdir=DIR`, one CPU
device, tiny_vq, 600 steps) in a subprocess. (tiny_vae, measured the same way at 300 steps:
0.283 -> 0.056; left out to keep the suite under 15 minutes.) Two references on the held-out batch it evaluates:
- the model at init, which draws noise around 0.5 (what "learning" starts from);
- the best latent-independent output, the per-pixel mean of that batch: a decoder that
  ignores its tokens cannot beat it, so ending clearly below it shows the tokens carry
  the image. (Before the tiny init_std / VQ settings the run sat exactly on it.)
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import EXPERIMENTS, SINGLE_STAGE

from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.train import build, loop


def _init_mse(config, images):
    recipe, frozen = build.build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = loop.create_train_state(recipe, config, mesh)
    with jax.set_mesh(mesh):
        state = init()
        reconstructions = loop._reconstruct(state.ema_params, jnp.asarray(images), frozen, recipe)
    return float(jnp.mean(jnp.square(reconstructions - images)))


@pytest.mark.slow
def test_readme_run_learns(tmp_path):
    config = configs.load_config(f"{SINGLE_STAGE}:tiny_vq")  # the default of titok_jax.main
    images = loop._held_out_batch(config)["image"]
    mean_image_mse = float(np.mean(np.square(images - images.mean(axis=0, keepdims=True))))
    init_mse = _init_mse(config, images)

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as the README run
    command = [sys.executable, "-m", "titok_jax.main", f"--workdir={tmp_path}"]
    result = subprocess.run(command, cwd=EXPERIMENTS.parent, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])

    final_mse = metrics["eval/ema_reconstruction_mse"]
    print(f"tiny_vq: held-out MSE at init {init_mse:.4f}, mean image {mean_image_mse:.4f}, final {final_mse:.4f}")
    assert init_mse > 0.2
    assert os.path.isdir(tmp_path / "checkpoints" / str(config.total_steps))
    assert final_mse < init_mse / 3
    assert final_mse < 0.85 * mean_image_mse
