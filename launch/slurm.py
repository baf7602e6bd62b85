r"""Multi-node GPU runs under SLURM: writes an sbatch script and submits it.

  python -m launch.slurm --nodes=4 --gpus_per_node=8 --partition=gpu --time=48:00:00 [--dry_run] -- \
      --config=experiments/titok_two_stage.py:l32 --workdir=/shared/runs/l32_stage1

One process per node drives all its GPUs. The script takes the first node of the
allocation as the JAX coordinator and passes every process the same address and
count and its own SLURM_PROCID, so the processes join one run. SLURM sends
SIGTERM before the time limit (`--signal`), on which the run saves a checkpoint
and exits; resubmitting the same script resumes it (`--requeue` does so itself
after a preemption). `--dry_run` prints the script and the sbatch command.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags

from launch import common


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    job_name: str = "titok_jax"
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 16
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    coordinator_port: int = common.DEFAULT_PORT
    program: str = common.DEFAULT_PROGRAM
    log_dir: str = "slurm_logs"
    setup: str = ""  # shell lines run before the program on every node (module load, venv activation)
    signal_seconds: int = 300  # SIGTERM this long before the time limit: time to save a checkpoint


def script(options: SlurmOptions, program_args: Sequence[str]) -> str:
    """The sbatch script text."""
    if options.nodes < 1 or options.gpus_per_node < 0:
        raise ValueError(f"nodes={options.nodes} must be >= 1 and gpus_per_node={options.gpus_per_node} >= 0.")
    directives = [
        f"--job-name={options.job_name}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={options.gpus_per_node}",
        f"--cpus-per-task={options.cpus_per_task}",
        f"--time={options.time}",
        f"--output={options.log_dir}/%x-%j.out",
        f"--signal=TERM@{options.signal_seconds}",
        "--requeue",
    ]
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.account:
        directives.append(f"--account={options.account}")
    command = [
        *common.program_command(options.program, program_args),
        *common.process_flags("$COORDINATOR_ADDRESS", "$SLURM_NTASKS", "$SLURM_PROCID"),
    ]
    # Single-quoted for srun's bash -c, so each task expands its own $SLURM_PROCID.
    task = " ".join(word if word.startswith("--") and "$" in word else shlex.quote(word) for word in command)
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in directives),
        "set -euo pipefail",
        *([options.setup] if options.setup else []),
        "# Process 0 (the first node of the allocation) hosts the JAX coordinator.",
        'COORDINATOR_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f'export COORDINATOR_ADDRESS="$COORDINATOR_HOST:{options.coordinator_port}"',
        "export PYTHONUNBUFFERED=1",
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
    ]
    return "\n".join(lines) + "\n"


def script_path(options: SlurmOptions) -> str:
    return os.path.join(options.log_dir, f"{options.job_name}.sbatch")


def define_flags() -> None:
    flags.DEFINE_string("job_name", "titok_jax", "SLURM job name (also names the script and the log).")
    flags.DEFINE_integer("nodes", 1, "Nodes; one process per node.")
    flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node.")
    flags.DEFINE_integer("cpus_per_task", 16, "CPU cores per node's process (data loading).")
    flags.DEFINE_string("time", "24:00:00", "Time limit.")
    flags.DEFINE_string("partition", None, "SLURM partition.")
    flags.DEFINE_string("account", None, "SLURM account.")
    flags.DEFINE_string("slurm_dir", "slurm_logs", "Where the script and the job's output go.")
    flags.DEFINE_string("setup", "", "Shell line(s) run first on every node, e.g. 'source ~/venv/bin/activate'.")


def options_from_flags() -> SlurmOptions:
    f = flags.FLAGS
    return SlurmOptions(
        job_name=f.job_name, nodes=f.nodes, gpus_per_node=f.gpus_per_node, cpus_per_task=f.cpus_per_task,
        time=f.time, partition=f.partition, account=f.account, coordinator_port=f.coordinator_port,
        program=f.program, log_dir=f.slurm_dir, setup=f.setup,
    )  # fmt: skip


def submit(options: SlurmOptions, program_args: Sequence[str], dry_run: bool) -> int:
    """Writes the script to its path and runs sbatch on it (dry run: prints both)."""
    text, path = script(options, program_args), script_path(options)
    if dry_run:
        print(f"# {path}\n{text}", end="")
    else:
        os.makedirs(options.log_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return common.run_shell_lines([shlex.join(["sbatch", path])], dry_run)


def main(argv: Sequence[str]) -> int:
    return submit(options_from_flags(), argv[1:], flags.FLAGS.dry_run)


if __name__ == "__main__":
    common.define_flags()
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
