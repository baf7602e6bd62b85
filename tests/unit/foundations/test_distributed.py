"""Multi-host start-up: inconsistent flags and unreachable coordinators fail fast with clear messages."""

import os
import socket
import subprocess
import sys
import time

import helpers
import pytest
from helpers import unused_port

from titok_jax import distributed
from titok_jax.distributed import DistributedOptions, DistributedSetupError

REPO = str(helpers.REPO)


@pytest.mark.parametrize(
    "options, message",
    [
        (DistributedOptions(num_processes=2, process_id=0), "missing --coordinator_address"),
        (
            DistributedOptions(coordinator_address="h:1", num_processes=2, process_id=2),
            r"--process_id=2 must be in \[0",
        ),
        (DistributedOptions(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes=0"),
        (DistributedOptions(coordinator_address="host", num_processes=2, process_id=1), "must be host:port"),
        (DistributedOptions(coordinator_address="h:99999", num_processes=2, process_id=1), "must be host:port"),
        (DistributedOptions(mode="off", coordinator_address="h:1", num_processes=2, process_id=1), "contradicts"),
        (DistributedOptions(timeout_s=0), "at least 1"),
    ],
)
def test_inconsistent_flags_are_refused_before_any_connection(options, message):
    with pytest.raises(DistributedSetupError, match=message):
        distributed.validate(options)


def test_single_process_needs_no_cluster(monkeypatch):
    for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_NUM_SLICES"):
        monkeypatch.delenv(variable, raising=False)
    distributed.initialize(DistributedOptions())  # auto, nothing detected: no-op
    distributed.initialize(DistributedOptions(coordinator_address="h:1", num_processes=1, process_id=0))
    assert distributed.detected_cluster({"SLURM_NTASKS": "1"}) is None
    assert distributed.detected_cluster({"SLURM_NTASKS": "4"}) == "SLURM"
    assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "TPU pod"


def test_unreachable_coordinator_fails_within_the_timeout():
    port = unused_port()
    options = DistributedOptions(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=1, timeout_s=2)
    start = time.monotonic()
    with pytest.raises(DistributedSetupError, match=f"127.0.0.1:{port} did not answer within 2 s.*Start process 0"):
        distributed.initialize(options)
    assert time.monotonic() - start < 10


def test_coordinator_port_in_use_is_named():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        options = DistributedOptions(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=0)
        with pytest.raises(DistributedSetupError, match=f"port {port}.*holds it"):
            distributed.initialize(options)


def _main(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_NUM_CPU_DEVICES": "1"}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "titok_jax.main", f"--workdir={tmp_path / 'run'}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result, time.monotonic() - start


def test_entry_point_with_wrong_process_count_fails_fast_and_writes_nothing(tmp_path):
    """Process 0 of a run said to have 2 processes, with no second one: it stops after the timeout."""
    result, seconds = _main(
        tmp_path, f"--coordinator_address=127.0.0.1:{unused_port()}", "--num_processes=2", "--process_id=0",
        "--distributed_timeout_s=3",
    )  # fmt: skip
    assert result.returncode != 0
    assert "fewer than 2 processes were started with this --coordinator_address and --num_processes=2" in result.stderr
    assert "DEADLINE_EXCEEDED" in result.stderr
    assert seconds < 60
    assert not (tmp_path / "run").exists()


def test_entry_point_refuses_a_process_id_out_of_range(tmp_path):
    result, _ = _main(tmp_path, "--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=5")
    assert result.returncode != 0
    assert "DistributedSetupError: --process_id=5 must be in [0, --num_processes=2)" in result.stderr
    assert not (tmp_path / "run").exists()
