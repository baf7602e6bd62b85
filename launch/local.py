r"""Starts N processes of one run on this machine, each with its own fake CPU devices.

For development and tests of the multi-host path: the processes form one JAX
run through a coordinator on 127.0.0.1, exactly as the hosts of a pod do.

  python -m launch.local --num_processes=2 --devices_per_process=2 [--dry_run] -- \
      --config=experiments/titok_single_stage.py:tiny_vq --workdir=/tmp/titok_2proc --config.mesh.fsdp=2

Everything after `--` goes to the program (default titok_jax.main). Output lines
are prefixed with the process index; when one process fails the others are
stopped and its exit code is returned.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from absl import app, flags

from launch import common


@dataclasses.dataclass(frozen=True)
class LocalOptions:
    num_processes: int = 2
    devices_per_process: int = 2
    coordinator_port: int = common.DEFAULT_PORT
    program: str = common.DEFAULT_PROGRAM
    python: str = "python"
    timeout_s: int = 120  # --distributed_timeout_s of every process


def process_env(options: LocalOptions) -> dict[str, str]:
    """The environment that gives each process `devices_per_process` CPU devices (overriding XLA_FLAGS counts)."""
    return {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(options.devices_per_process)}


def commands(options: LocalOptions, program_args: Sequence[str]) -> list[tuple[dict[str, str], list[str]]]:
    """(environment, argv) of every process."""
    if options.num_processes < 1 or options.devices_per_process < 1:
        raise ValueError(
            f"num_processes={options.num_processes} and devices_per_process={options.devices_per_process} "
            "must be at least 1."
        )
    return [
        (
            process_env(options),
            [
                *common.program_command(options.program, program_args, options.python),
                *common.process_flags(f"127.0.0.1:{options.coordinator_port}", options.num_processes, index),
                f"--distributed_timeout_s={options.timeout_s}",
            ],
        )
        for index in range(options.num_processes)
    ]


def shell_lines(options: LocalOptions, program_args: Sequence[str]) -> list[str]:
    """The copy-pasteable command line of every process."""
    return [common.shell_line(argv, env) for env, argv in commands(options, program_args)]


def _forward(prefix: str, stream, sink) -> None:
    for line in iter(stream.readline, ""):
        sink.write(f"{prefix}{line}")
        sink.flush()


def run(options: LocalOptions, program_args: Sequence[str], grace_s: float = 10.0) -> int:
    """Runs all processes to the end; returns 0, or the exit code of the first process that failed."""
    processes, threads = [], []
    for index, (env, argv) in enumerate(commands(options, program_args)):
        process = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        thread = threading.Thread(target=_forward, args=(f"[{index}] ", process.stdout, sys.stdout), daemon=True)
        thread.start()
        processes.append(process)
        threads.append(thread)
    failed = 0
    while any(p.poll() is None for p in processes):
        codes = [p.poll() for p in processes]
        if not failed and any(c for c in codes if c is not None):
            failed = next(c for c in codes if c)
            deadline = time.monotonic() + grace_s  # the others may still be writing; then stop them
            while time.monotonic() < deadline and any(p.poll() is None for p in processes):
                time.sleep(0.1)
            for p in processes:
                if p.poll() is None:
                    p.terminate()
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=5)
    return failed or next((p.returncode for p in processes if p.returncode), 0)


def define_flags() -> None:
    flags.DEFINE_integer("num_processes", 2, "Processes to start.")
    flags.DEFINE_integer("devices_per_process", 2, "Fake CPU devices of each process.")


def options_from_flags() -> LocalOptions:
    f = flags.FLAGS
    return LocalOptions(
        num_processes=f.num_processes,
        devices_per_process=f.devices_per_process,
        coordinator_port=f.coordinator_port,
        program=f.program,
        python=sys.executable,
    )


def main(argv: Sequence[str]) -> int:
    options = options_from_flags()
    if flags.FLAGS.dry_run:
        print("\n".join(shell_lines(options, argv[1:])))
        return 0
    return run(options, argv[1:])


if __name__ == "__main__":
    common.define_flags()
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
