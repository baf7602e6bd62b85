"""Orbax checkpointing of the train state together with the grain data iterator.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), so a kill -9 mid-save leaves the previous
checkpoints intact and the half-written one is ignored on restart.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

STATE = "state"
DATA = "data"


def make_manager(workdir: str, save_every: int, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=save_every,
        enable_async_checkpointing=True,
        create=True,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), DATA: grain.checkpoint.CheckpointHandler()},
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any | None, force: bool = False) -> bool:
    """Saves when `step` is on the save interval (or `force`); returns whether it started a save."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    data_iterator: Any | None,
    step: int | None = None,
) -> Any:
    """Restores the newest (or given) step into the shardings of `abstract_state`.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with `.sharding` set, so
    a checkpoint written on one mesh restores onto any other. The data
    iterator, when given, is restored in place.
    """
    step = manager.latest_step() if step is None else step
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and DATA in manager.item_metadata(step):
        items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE]


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
