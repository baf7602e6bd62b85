"""The entry point: flag parsing, config overrides, validation before anything runs."""

import json
import os
import subprocess
import sys

import numpy as np
from helpers import EXPERIMENTS

REPO = EXPERIMENTS.parent


def _run(tmp_path, *args):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "titok_jax.main", f"--workdir={tmp_path}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_main_trains_the_configured_variant_with_overrides_in_bf16(tmp_path):
    result = _run(
        tmp_path,
        f"--config={EXPERIMENTS / 'titok_single_stage.py'}:tiny_vae",
        "--config.model.num_latent_tokens=8",
        "--config.model.dtype=bfloat16",  # bf16 compute, fp32 params / quantizer / losses
        "--config.mesh.fsdp=4",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        "--config.data.eval_num_examples=8",
        "--config.total_steps=2",
        "--config.log_every=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["kl_loss"] > 0 and metrics["reconstruction_loss"] > 0
    # The end-of-run evaluation (tiny default: random Inception, labelled so) over the 8 held-out images.
    assert metrics["eval/num_images"] == 8 and np.isfinite(metrics["eval/rfid_random_inception"])
    assert 0 < metrics["eval/ssim"] < 1 and metrics["eval/psnr"] > 0
    assert "eval/codebook_usage" not in metrics  # a VAE has no codes
    assert os.path.isdir(tmp_path / "checkpoints" / "2")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_main_rejects_an_unknown_override(tmp_path):
    result = _run(tmp_path, f"--config={EXPERIMENTS / 'titok_two_stage.py'}:tiny", "--config.model.num_tokens=8")
    assert result.returncode != 0
    assert "num_tokens" in result.stderr
    assert not (tmp_path / "checkpoints").exists()
