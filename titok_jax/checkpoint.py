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
from etils import epath

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
        _check_data_positions(manager, step)
        items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE]


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def newest_step(workdir: str) -> int | None:
    """The newest complete checkpoint step of `workdir`; None when it has none. Creates nothing."""
    directory = checkpoints_dir(workdir)
    if not os.path.isdir(directory):
        return None
    manager = ocp.CheckpointManager(directory, item_handlers={STATE: ocp.PyTreeCheckpointHandler()})
    try:
        return manager.latest_step()
    finally:
        manager.close()


def saved_parts(workdir: str, step: int) -> Any:
    """The saved state of `step` as {part: tree of orbax array metadata} (no values read)."""
    manager = ocp.CheckpointManager(checkpoints_dir(workdir), item_handlers={STATE: ocp.PyTreeCheckpointHandler()})
    try:
        return manager.item_metadata(step)[STATE].tree
    finally:
        manager.close()


def restore_parts(workdir: str, step: int, abstract_parts: dict[str, Any]) -> dict[str, Any]:
    """Reads only the named parts of a saved state (e.g. {"ema_params": abstract tree}) into the shardings of
    their abstract trees: no optimizer state or other part is read, and no training object is needed."""
    manager = ocp.CheckpointManager(checkpoints_dir(workdir), item_handlers={STATE: ocp.PyTreeCheckpointHandler()})
    try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_parts)
        args = ocp.args.PyTreeRestore(abstract_parts, restore_args=restore_args, partial_restore=True)
        return manager.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE]
    finally:
        manager.close()


def saved_state(manager: ocp.CheckpointManager, step: int) -> Any:
    """The saved state of `step` as a tree of orbax array metadata (names, shapes, dtypes; no values read)."""
    return manager.item_metadata(step)[STATE].tree


def _check_data_positions(manager: ocp.CheckpointManager, step: int) -> None:
    """Each process resumes its own data-iterator position, so a run resumes with the process count it had."""
    data_dir = epath.Path(manager.directory) / str(step) / DATA
    mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not (data_dir / mine).exists():
        written = sorted(p.name for p in data_dir.glob("process_*.json"))
        counts = sorted({name.rsplit("-of-", 1)[-1].removesuffix(".json") for name in written})
        raise ValueError(
            f"Checkpoint step {step} in {manager.directory} holds the data positions of a run of "
            f"{' / '.join(counts) or 'unknown'} process(es) ({', '.join(written) or 'none'}), but this run has "
            f"{jax.process_count()}; each process resumes its own position. Resume with the same number of "
            "processes (the weights alone restore onto any mesh and process count, e.g. for export or sampling)."
        )


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
