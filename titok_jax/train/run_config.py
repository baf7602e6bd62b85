"""WORKDIR/run_config.json: the config a run started with (and WORKDIR/commands.txt: every command line that
started or resumed it), and the check that a resume fits its checkpoint.

A workdir reused with another model's config is refused before orbax reads anything, with the parameter
shapes that differ and the config fields that differ from the run that wrote the checkpoint.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from typing import Any

import jax
import ml_collections

from titok_jax import checkpoint, configs, files, trees

NAME = configs.RUN_CONFIG


def record(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes the config of a run that starts fresh (process 0; a resumed run keeps the first one)."""
    path = os.path.join(workdir, NAME)
    if jax.process_index() == 0 and not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        with files.atomic_write(path, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


COMMANDS = "commands.txt"


def record_command(workdir: str) -> None:
    """Appends this start's command line (with the UTC time) to WORKDIR/commands.txt (process 0): how each
    start and resume of the run was launched."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    with open(os.path.join(workdir, COMMANDS), "a") as f:
        f.write(f"{stamp}  {shlex.join([os.path.basename(sys.executable), *sys.argv])}\n")


def check_fits(workdir: str, step: int, abstract_state: Any, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when the parameters saved at `step` are not the ones `config` builds."""
    saved = checkpoint.saved_parts(workdir, step)["params"]
    try:
        trees.check_tree_matches(saved, abstract_state.params, f"Checkpoint step {step} in {workdir}")
    except ValueError as err:
        differences = config_differences(workdir, config)
        raise ValueError(
            f"{workdir} holds another model's checkpoint: {err} "
            f"Config fields that differ (that run -> this config): {differences or 'unknown (no ' + NAME + ')'}. "
            "Resume with that run's config, or choose another --workdir."
        ) from None


def config_differences(workdir: str, config: ml_collections.ConfigDict, limit: int = 12) -> str:
    """'model.width: 64 -> 128; ...' between WORKDIR/run_config.json and `config` ('' when unknown)."""
    try:
        with open(os.path.join(workdir, NAME)) as f:
            theirs = _flat(json.load(f))
    except (OSError, ValueError):
        return ""
    ours = _flat(json.loads(config.to_json_best_effort()))
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k, "<absent>") != ours.get(k, "<absent>"))
    shown = [f"{k}: {theirs.get(k, '<absent>')} -> {ours.get(k, '<absent>')}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
