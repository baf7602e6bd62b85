"""The one driver loop shared by every recipe; it knows none of them by name.

validated config -> Plan (recipe, frozen weights, data, evaluators, hooks; made by the recipe's module) ->
abstract state -> shardings -> jitted init (+ warm start) or restore -> loop {global batch -> jitted
train_step of the step's phase -> metrics every log_every -> image grid every grid_every -> evaluators ->
async checkpoint} -> final save. Guarded: one run per workdir (lock), no non-finite state saved, SIGTERM /
SIGINT / preemption save the current step and return, a corrupt newest checkpoint falls back to the one before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from titok_jax import checkpoint, files, images
from titok_jax import sharding as sh
from titok_jax.data.device_prefetch import DevicePrefetch
from titok_jax.train import guard, run_config, stop_signals, workdir_lock
from titok_jax.train.state import TrainState, create_train_state
from titok_jax.train.step import make_step_fns

# What a step or an evaluation reads from a batch ("mask": False on padding and undecodable images).
BATCH_KEYS = ("image", "label", "tokens", "mask")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Runs every `every` steps and at the end: `run(state, step) -> {metric: value}` (written as eval/NAME to
    the summaries and WORKDIR/eval/step_S.json)."""

    every: int
    run: Callable[[TrainState, int], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the loop runs, made by a recipe module's `prepare`."""

    recipe: Any  # recipes.Recipe
    frozen: dict[str, Any]  # frozen weights (host or device); replicated by the loop
    mesh: jax.sharding.Mesh
    train_iter: Any  # this process's numpy batches; checkpointable (grain)
    grid_batch: dict[str, np.ndarray]  # this process's part of the batch `recipe.evaluate` reads
    grid_every: int
    evaluators: Sequence[Evaluator] = ()
    warm_start: Callable[[TrainState], TrainState] | None = None  # a fresh state -> its starting point
    check_resume: Callable[[str, int], None] | None = None  # (workdir, step) -> raises when it cannot resume


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global arrays sharded over (data, fsdp)."""
    return {
        k: jax.make_array_from_process_local_data(sh.batch_sharding(mesh, v.ndim), v)
        for k, v in local_batch.items()
        if k in BATCH_KEYS
    }


def train(config: ml_collections.ConfigDict, workdir: str, plan: Plan) -> dict[str, float]:
    """Trains (or resumes) `plan` in `workdir`; returns the last logged metrics.

    Safe to stop at any time: SIGTERM / SIGINT (one process) or a preemption notice (multi-host) finish the
    step, save it and return; a non-finite loss, gradient norm or parameter stops the run (NonFiniteError)
    without saving it; an unreadable newest checkpoint is moved aside and the previous one resumed.
    """
    lock = workdir_lock.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, stop_signals.Catch() as stop:
        return _train(config, workdir, plan, stop)


def _train(config: ml_collections.ConfigDict, workdir: str, plan: Plan, stop: stop_signals.Catch) -> dict[str, float]:
    recipe, mesh = plan.recipe, plan.mesh
    frozen = jax.device_put(plan.frozen, sh.replicated(mesh))
    # Restored (below) and checkpointed through the wrapper: it reports the position of the last batch used.
    train_iter = DevicePrefetch(
        plan.train_iter, functools.partial(global_batch, mesh=mesh), config.data.device_prefetch
    )

    abstract, init, shardings = create_train_state(recipe, config, mesh)
    manager = checkpoint.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints)
    try:
        with jax.set_mesh(mesh):
            state = _restore_or_init(manager, abstract, train_iter, workdir, config, plan, init)
        return _loop(config, workdir, plan, stop, manager, state, train_iter, frozen, shardings)
    finally:
        manager.wait_until_finished()  # a save in flight completes before any exit
        manager.close()


def _restore_or_init(manager, abstract, train_iter, workdir, config, plan, init) -> TrainState:
    if manager.latest_step() is None:
        run_config.record(workdir, config)
        state = init()
        return plan.warm_start(state) if plan.warm_start is not None else state

    def check(step: int) -> None:
        if plan.check_resume is not None:
            plan.check_resume(workdir, step)
        run_config.check_fits(workdir, step, abstract, config)

    def verify(state: TrainState) -> str | None:
        finite = guard.all_finite({"params": state.params, "ema_params": state.ema_params})
        return None if finite else "non-finite parameters"

    state = checkpoint.restore_newest_good(manager, abstract, train_iter, check=check, verify=verify)
    logging.info("Resumed from checkpoint step %d in %s", int(jax.device_get(state.step)), workdir)
    return state


def _loop(config, workdir, plan, stop, manager, state, train_iter, frozen, shardings) -> dict[str, float]:
    recipe, mesh = plan.recipe, plan.mesh
    start_step = int(jax.device_get(state.step))
    if jax.process_index() == 0:
        logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(state.params))

    step_fns = make_step_fns(recipe, shardings)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    hooks = []
    if jax.process_index() == 0:
        hooks += [
            periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer),
            periodic_actions.Profile(num_profile_steps=5, logdir=workdir),
        ]

    last_metrics: dict[str, float] = {}
    metric_sums, metric_count, window_start, tracker = None, 0, time.time(), None
    with jax.set_mesh(mesh):
        for step in range(start_step, config.total_steps):
            batch = next(train_iter)
            state, metrics = step_fns[recipe.phase(step)](state, batch, frozen)
            done = step + 1
            # Sum and guard on device; the host only syncs every log_every steps and before saves.
            metric_sums = metrics if metric_sums is None else jax.tree.map(jnp.add, metric_sums, metrics)
            tracker = guard.track(guard.start(metrics) if tracker is None else tracker, metrics, done)
            metric_count += 1
            last = done == config.total_steps
            for hook in hooks:
                hook(done)
            stopping = stop.requested or manager.reached_preemption(done)
            saving = last or stopping or manager.should_save(done)
            if done % config.log_every == 0 or last or saving:
                guard.check(tracker, manager.latest_step(), workdir)
            if done % config.log_every == 0 or last:
                last_metrics = {k: float(v) / metric_count for k, v in jax.device_get(metric_sums).items()}
                elapsed = time.time() - window_start
                last_metrics["images_per_second_per_device"] = (
                    metric_count * config.batch_size / max(elapsed, 1e-9) / jax.device_count()
                )
                writer.write_scalars(done, dict(last_metrics))
                metric_sums, metric_count, window_start = None, 0, time.time()
            if done % plan.grid_every == 0 or last:
                last_metrics.update(_write_grid(recipe, state, plan.grid_batch, frozen, mesh, writer, done))
            for evaluator in plan.evaluators:
                if done % evaluator.every == 0 or last:
                    results = {f"eval/{k}": v for k, v in evaluator.run(state, done).items()}
                    writer.write_scalars(done, dict(results))
                    files.write_eval_results(workdir, done, {k.removeprefix("eval/"): v for k, v in results.items()})
                    last_metrics.update(results)
            if saving:
                if not guard.all_finite(state.params):
                    guard.refuse_to_save(done, manager.latest_step(), workdir)
                checkpoint.save(manager, done, state, train_iter, force=True)
            if stopping:
                manager.wait_until_finished()
                logging.warning(
                    "%s at step %d: saved checkpoint %d in %s; rerun the same command to resume.",
                    stop.name or "Preemption notice",
                    done,
                    done,
                    workdir,
                )
                break
    writer.flush()
    return last_metrics


@functools.partial(jax.jit, static_argnames=("recipe",))
def evaluate(state: TrainState, grid_batch: dict[str, jax.Array], frozen: dict[str, Any], recipe: Any):
    """The recipe's evaluation: (scalars, grid rows (R, C, H, W, 3) in [0, 1])."""
    return recipe.evaluate(state, grid_batch, frozen)


def _write_grid(
    recipe: Any,
    state: TrainState,
    grid_batch: dict[str, np.ndarray],
    frozen: dict[str, Any],
    mesh: jax.sharding.Mesh,
    writer: metric_writers.MetricWriter,
    step: int,
) -> dict[str, float]:
    """Writes the recipe's evaluation scalars (as eval/NAME) and its image grid."""
    scalars, rows = evaluate(state, global_batch(grid_batch, mesh), frozen, recipe)
    results = {f"eval/{k}": float(v) for k, v in sh.to_host(scalars).items()}
    if results:
        writer.write_scalars(step, dict(results))
    writer.write_images(step, {recipe.grid_name: images.readable_grid(sh.to_host(rows))[None]})
    return results
