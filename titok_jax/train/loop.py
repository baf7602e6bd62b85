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
import json
import os
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
from titok_jax.train import guard, run_config, stop_signals, workdir_lock, writers
from titok_jax.train.progress import Progress, duration
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
        run_config.record_command(workdir)
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
    start_step = int(jax.device_get(state.step))
    if start_step >= config.total_steps:
        return _complete(workdir, start_step, config.total_steps)
    if jax.process_index() == 0:
        _write_parameter_overview(workdir, state.params)

    step_fns = make_step_fns(plan.recipe, shardings)
    writer = writers.make_writer(config, workdir)
    try:
        return _steps(config, workdir, plan, stop, manager, state, train_iter, frozen, step_fns, writer, start_step)
    finally:
        writer.close()  # TensorBoard flushed, the W&B run finished (also when the run stops on an error)


def _steps(config, workdir, plan, stop, manager, state, train_iter, frozen, step_fns, writer, start_step):
    recipe, mesh = plan.recipe, plan.mesh
    hooks = []
    if jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
    progress = Progress(config.total_steps, config.batch_size, start_step)
    logging.info(
        "Training %s from step %d to %d in %s.", type(recipe).__name__, start_step, config.total_steps, workdir
    )

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
                sums = jax.device_get(metric_sums)
                last_metrics = {k: float(v) / metric_count for k, v in sums.items() if np.ndim(v) == 0}
                window_scalars, window_images = plan.recipe.window_summaries(
                    {k: v for k, v in sums.items() if np.ndim(v) > 0}, metric_count
                )
                last_metrics.update(window_scalars)
                if window_images:
                    writer.write_images(done, window_images)
                elapsed = time.time() - window_start
                last_metrics["images_per_second_per_device"] = (
                    metric_count * config.batch_size / max(elapsed, 1e-9) / jax.device_count()
                )
                last_metrics["steps_per_second"] = metric_count / max(elapsed, 1e-9)
                writer.write_scalars(done, dict(last_metrics))
                logging.info("%s", progress.line(done, last_metrics, metric_count, elapsed))
                metric_sums, metric_count, window_start = None, 0, time.time()
            if done % plan.grid_every == 0 or last:
                last_metrics.update(_write_grid(recipe, state, plan.grid_batch, frozen, mesh, writer, done))
            for evaluator in plan.evaluators:
                if done % evaluator.every == 0 or last:
                    logging.info("Evaluating at step %d ...", done)
                    began = time.time()
                    results = {f"eval/{k}": v for k, v in evaluator.run(state, done).items()}
                    logging.info(
                        "Evaluation at step %d done in %s: %s", done, duration(time.time() - began),
                        ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in sorted(results.items())),
                    )  # fmt: skip
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
    return last_metrics


def _complete(workdir: str, step: int, total_steps: int) -> dict[str, Any]:
    """A rerun of a finished run: says so, and returns its last evaluation."""
    logging.info(
        "%s is complete at step %d (config.total_steps=%d): nothing to train. Raise --config.total_steps to "
        "train on.", workdir, step, total_steps,
    )  # fmt: skip
    summary: dict[str, Any] = {"complete": True, "step": step}
    path = os.path.join(workdir, "eval", f"step_{step}.json")
    if os.path.isfile(path):
        with open(path) as f:
            summary.update({f"eval/{k}": v for k, v in json.load(f).items()})
    return summary


PARAMETERS_FILE = "parameters.txt"


def _write_parameter_overview(workdir: str, params: Any) -> None:
    """The parameter table to WORKDIR/parameters.txt; one line on the console."""
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    arrays = len(jax.tree_util.tree_leaves(params))
    with files.atomic_write(os.path.join(workdir, PARAMETERS_FILE), "w") as f:
        f.write(parameter_overview.get_parameter_overview(params, include_stats=False) + "\n")
    logging.info("%s parameters in %d arrays (the table: %s).", f"{count:,}", arrays, PARAMETERS_FILE)


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
    """Writes the recipe's evaluation scalars (as eval/NAME), its image grid and the pictures it draws from them."""
    scalars, rows = evaluate(state, global_batch(grid_batch, mesh), frozen, recipe)
    host_scalars = {k: float(v) for k, v in sh.to_host(scalars).items()}
    results = {f"eval/{k}": v for k, v in host_scalars.items()}
    if results:
        writer.write_scalars(step, dict(results))
    pictures = {recipe.grid_name: images.readable_grid(sh.to_host(rows))[None]}
    writer.write_images(step, {**pictures, **recipe.evaluation_images(host_scalars)})
    return results
