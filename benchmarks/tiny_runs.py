"""Shared by the tiny-run benchmarks: run a README command on one CPU device and keep finished runs' results."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKENIZERS = REPO / "experiments" / "titok_single_stage.py"


def run(*args: str) -> dict:
    """`python -m ARGS` in the repository on one CPU device -> its last stdout line (the run's final metrics)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_tokenizer(workdir: str, variant: str, seed: int, *overrides: str) -> dict:
    """The README's tokenizer command for `titok_single_stage.py:VARIANT` -> the end-of-run metrics."""
    metrics = run(
        "titok_jax.main",
        f"--config={TOKENIZERS}:{variant}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *overrides,
    )
    if metrics.get("complete"):
        raise SystemExit(f"{workdir} finished before without a results.json entry: delete it and rerun.")
    return metrics


class Results:
    """ROOT/results.json: a finished run's row is computed once and read back on a rerun."""

    def __init__(self, root: str):
        os.makedirs(root, exist_ok=True)
        self.path = os.path.join(root, "results.json")
        self.rows = json.load(open(self.path)) if os.path.isfile(self.path) else {}

    def remember(self, key: str, make: Callable[[], dict]) -> dict:
        if key not in self.rows:
            self.rows[key] = make()
            with open(self.path, "w") as f:
                json.dump(self.rows, f, indent=2)
        return self.rows[key]

    def __getitem__(self, key: str) -> dict:
        return self.rows[key]


def report(failures: list[str]) -> int:
    """Print each failed claim -> the script's exit status (1 when any failed)."""
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0
