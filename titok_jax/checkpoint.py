"""Orbax checkpointing of the train state together with the grain data iterator.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), so a kill -9 mid-save leaves the previous
checkpoints intact and the half-written one is ignored on restart. A resume reads
the newest step that reads back whole (`restore_newest_good`); a corrupt one is
moved aside to WORKDIR/corrupt_checkpoints/, never deleted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

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
        checkpoints_dir(workdir),
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
    return manager.restore(step, args=_restore_args(manager, abstract_state, data_iterator, step))[STATE]


def restore_newest_good(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    data_iterator: Any | None,
    check: Callable[[int], None],
    verify: Callable[[Any], str | None],
) -> Any:
    """Restores the newest step that reads back whole; an unreadable one is moved aside, not deleted.

    `check(step)` raises for a checkpoint this run must not resume (another model, another layout): that
    stops the run, nothing is moved. A step whose files fail to read (truncated, garbage) or whose restored
    state `verify` rejects (it returns why, e.g. non-finite parameters from flipped bits) is moved to
    WORKDIR/corrupt_checkpoints/ with a warning, and the step before it is tried.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        problem = _readable_metadata(manager, step)
        if problem is None:
            check(step)
            args = _restore_args(manager, abstract_state, data_iterator, step)
            try:
                state = manager.restore(step, args=args)[STATE]
                problem = verify(state)
            except Exception as err:
                problem = _one_line(err)
        if _agreed_ok(problem is None):
            return state
        aside = _move_aside(manager, step)
        logging.warning(
            "Checkpoint step %d is unreadable (%s); moved it to %s, trying the one before.", step, problem, aside
        )
    raise ValueError(
        f"No checkpoint in {manager.directory} reads back (each was moved to corrupt_checkpoints/ beside it); "
        "start over in a new --workdir, or restore the moved ones by hand."
    )


def _restore_args(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any | None, step: int):
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and DATA in manager.item_metadata(step):
        _check_data_positions(manager, step)
        items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    return ocp.args.Composite(**items)


def _readable_metadata(manager: ocp.CheckpointManager, step: int) -> str | None:
    try:
        manager.item_metadata(step)[STATE].tree  # noqa: B018 - reading it is the check
    except Exception as err:
        return _one_line(err)
    return None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _agreed_ok(ok: bool) -> bool:
    """Every process's verdict (all must read the step for anyone to use it)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Moves a step directory to WORKDIR/corrupt_checkpoints/STEP[-N] (process 0) and forgets it."""
    source = os.path.join(os.fspath(manager.directory), str(step))
    aside_root = os.path.join(os.path.dirname(os.fspath(manager.directory)), "corrupt_checkpoints")
    target, n = os.path.join(aside_root, str(step)), 1
    while os.path.exists(target):
        target, n = os.path.join(aside_root, f"{step}-{n}"), n + 1
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"corrupt checkpoint {step}: verdicts")
    if jax.process_index() == 0:
        os.makedirs(aside_root, exist_ok=True)
        os.replace(source, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"corrupt checkpoint {step}: moved")
    manager.reload()
    return target


CHECKPOINTS_DIR = "checkpoints"  # WORKDIR/checkpoints/STEP


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)


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
