"""Atomic file writes: a file appears under its name only when it is complete."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary sibling of `path` and renames it onto `path` when the block ends without error:
    an interrupted write never leaves a partial file under the real name (a failed one leaves nothing)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def eval_path(workdir: str | os.PathLike, step: int, suffix: str = ".json") -> str:
    """WORKDIR/eval/step_S{suffix}: where the evaluation of step S writes (step_S.json, step_S_token_counts.png)."""
    return os.path.join(os.fspath(workdir), "eval", f"step_{step}{suffix}")


def write_eval_results(workdir: str | os.PathLike, step: int, results: dict, suffix: str = ".json") -> str:
    """WORKDIR/eval/step_S{suffix} (default step_S.json; atomically, by process 0 only); returns the path."""
    import jax

    path = eval_path(workdir, step, suffix)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return path
