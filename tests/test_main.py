"""The entry point: flag parsing, config overrides, the smoke job."""

import json
import os
import subprocess
import sys

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
        timeout=300,
    )


def test_main_runs_the_configured_variant_with_overrides(tmp_path):
    result = _run(
        tmp_path,
        f"--config={EXPERIMENTS / 'titok_single_stage.py'}:tiny_vq",
        "--config.model.num_latent_tokens=8",
        "--config.mesh.fsdp=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "smoke_summary.json").read_text())
    assert summary["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert summary["latent_shape"] == [8, 8, 8]
    assert summary["decoded_shape"] == [8, 32, 32, 3]
    assert len(summary["first_image_tokens"]) == 8


def test_main_rejects_an_unknown_override(tmp_path):
    result = _run(tmp_path, f"--config={EXPERIMENTS / 'titok_two_stage.py'}:tiny", "--config.model.num_tokens=8")
    assert result.returncode != 0
    assert "num_tokens" in result.stderr
    assert not (tmp_path / "smoke_summary.json").exists()
