"""What every launcher shares: the program a run executes and how its command line is written."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from absl import flags

DEFAULT_PROGRAM = "titok_jax.main"
DEFAULT_PORT = 8476
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags() -> None:
    flags.DEFINE_bool("dry_run", False, "Print the exact commands (and scripts) instead of running them.")
    flags.DEFINE_string("program", DEFAULT_PROGRAM, "The python module every process runs (python -m PROGRAM).")
    flags.DEFINE_integer("coordinator_port", DEFAULT_PORT, "Port of the JAX coordinator on process 0's host.")


def program_command(program: str, program_args: Sequence[str], python: str = "python") -> list[str]:
    """argv of `python -m PROGRAM ARGS` (the command every process of a run executes)."""
    return [python, "-m", program, *program_args]


def process_flags(coordinator_address: str, num_processes: str | int, process_id: str | int) -> list[str]:
    """The flags that make a titok_jax process join its run (values may be shell variables, e.g. "$SLURM_PROCID")."""
    return [
        f"--coordinator_address={coordinator_address}",
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
    ]


def shell_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A copy-pasteable shell line: `VAR=value ... argv` with every word quoted as needed."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
    return " ".join([*assignments, shlex.join(argv)])


def run_shell_lines(lines: Sequence[str], dry_run: bool) -> int:
    """Prints each line; runs them in order unless `dry_run`, stopping at the first failure (its exit code)."""
    for line in lines:
        print(line, flush=True)
        if dry_run:
            continue
        code = subprocess.call(line, shell=True, executable="/bin/bash")
        if code:
            print(f"Command failed with exit code {code}: {line}", file=sys.stderr)
            return code
    return 0
