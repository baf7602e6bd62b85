"""The memory tool: per-device state bytes from the driver's shardings, XLA's compiled estimate."""

import os
import subprocess
import sys

import helpers
import jax
import numpy as np
import pytest
from helpers import TWO_STAGE
from train_helpers import tiny_config

from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.tasks import memory

REPO = str(helpers.REPO)


def test_fsdp_cuts_l32_state_per_device_by_at_least_6x():
    config = configs.load_config(f"{TWO_STAGE}:l32")  # stage 1: the ViTs + adam moments + EMA
    config.mesh.update(data=8, fsdp=1, tensor=1)
    replicated = memory.state_memory(config, sh.make_mesh(**config.mesh))
    config.mesh.update(data=1, fsdp=8, tensor=1)
    sharded = memory.state_memory(config, sh.make_mesh(**config.mesh))

    # 610,314,252 trainable stage-1 parameters: the released 641,054,735 less the frozen
    # pixel_quantize + pixel_decoder of stage 2.
    assert sharded["num_parameters"] == replicated["num_parameters"] == 610_314_252
    params_bytes = 4 * 610_314_252
    # Replicated: every device holds params, EMA and two adam moments in fp32.
    assert replicated["per_device_bytes"]["params"] == params_bytes
    assert replicated["per_device_bytes"]["total"] == pytest.approx(4 * params_bytes, rel=1e-3)
    assert replicated["reduction_vs_replicated"] == 1.0
    assert sharded["replicated_bytes"] == replicated["per_device_bytes"]
    assert sharded["reduction_vs_replicated"] >= 6.0
    assert sharded["per_device_bytes"]["total"] * 6 <= replicated["per_device_bytes"]["total"]


def test_compiled_estimate_covers_the_state_and_counts_donation_once():
    config = tiny_config("single_stage:tiny_vq", **{"mesh.fsdp": 4})
    mesh = sh.make_mesh(**config.mesh)
    state = memory.state_memory(config, mesh)
    compiled = memory.compiled_memory(config, mesh)
    batch_bytes = config.batch_size // 8 * 32 * 32 * 3 * 4  # this device's image rows
    state_bytes = state["per_device_bytes"]["total"]
    assert state_bytes + batch_bytes <= compiled["arguments"] <= state_bytes + batch_bytes + 64 * 1024
    assert compiled["aliased"] >= 0.9 * state_bytes  # the donated state is updated in place
    assert compiled["peak_estimate"] == (
        compiled["arguments"] + compiled["outputs"] - compiled["aliased"] + compiled["temporaries"]
    )
    assert compiled["temporaries"] > 0


def test_cli_fakes_the_devices_of_a_bigger_mesh(tmp_path):
    out = tmp_path / "memory.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    subprocess.run(
        [sys.executable, "-m", "titok_jax.memory", f"--config={TWO_STAGE}:tiny", "--num_devices=16",
         "--config.mesh.data=1", "--config.mesh.fsdp=16", f"--out={out}"],
        cwd=REPO, env={**env, "PYTHONPATH": REPO}, check=True, capture_output=True, text=True,
    )  # fmt: skip
    import json

    report = json.loads(out.read_text())
    assert report["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1}
    assert report["reduction_vs_replicated"] > 4
    assert np.isclose(sum(v for k, v in report["per_device_bytes"].items() if k != "total"),
                      report["per_device_bytes"]["total"])  # fmt: skip
    assert jax.device_count() == 8  # the test process is untouched
