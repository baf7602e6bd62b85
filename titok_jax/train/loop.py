"""The one driver loop shared by every recipe (tokenizer stages and the MaskGIT generator).

flags -> validated config -> mesh -> grain iterator (this process's shard) ->
abstract state -> shardings -> jitted init or restore -> loop {global batch ->
jitted train_step -> metrics every log_every -> evaluation grid every
eval_every -> async checkpoint} -> final save.

A recipe gives `example_batch()`, `init(rng, batch)`, `generator_loss(...)`,
`gan_active(step)` and `evaluate(state, eval_batch, frozen) -> (scalars, grid rows)`.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from titok_jax import checkpoint, configs
from titok_jax import sharding as sh
from titok_jax.data.device_prefetch import DevicePrefetch
from titok_jax.evaluation import tokenizer_eval
from titok_jax.models import layer_stack
from titok_jax.train import build, recipes, stage2_init
from titok_jax.train.state import TrainState

# What a step or an evaluation reads from a batch (eval batches also carry e.g. "mask").
BATCH_KEYS = ("image", "label", "tokens")


def _global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global arrays sharded over (data, fsdp)."""
    return {
        k: jax.make_array_from_process_local_data(sh.batch_sharding(mesh, v.ndim), v)
        for k, v in local_batch.items()
        if k in BATCH_KEYS
    }


def create_train_state(recipe: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Any, Any, Any]:
    """-> (abstract state with shardings, init fn writing straight into them, shardings)."""
    batch = recipe.example_batch()
    rng = jax.random.PRNGKey(config.seed)
    boxed = jax.eval_shape(recipe.init, rng, batch)
    shardings = sh.logical_shardings(boxed, mesh)
    abstract = checkpoint.abstract_with_shardings(nn.meta.unbox(boxed), shardings)
    init = jax.jit(lambda: nn.meta.unbox(recipe.init(rng, batch)), out_shardings=shardings)
    return abstract, init, shardings


def make_step_fns(recipe: Any, shardings: Any) -> dict[bool, Any]:
    """{gan_active: jitted train step}: two compiled steps at most, without the GAN before its start
    step and with it after; the state is donated (updated in place)."""
    return {
        gan: jax.jit(
            functools.partial(recipes.train_step, recipe=recipe, gan_active=gan),
            in_shardings=(shardings, None, None),
            out_shardings=(shardings, None),
            donate_argnums=0,
        )
        for gan in (False, True)
    }


def restore_newest(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str
) -> tuple[Any, Any, TrainState, int] | None:
    """(recipe, frozen, state, step) of the newest checkpoint in `workdir` on `mesh`; None if there is none.

    The recipe is built from `config` in the layout the checkpoint was trained with (model.scan_layers):
    a run keeps its params in that layout, whatever the config naming it says (e.g. the plain config file
    of a tokenizer trained with --config.model.scan_layers=True). Callers that need the other layout
    convert the params (models.layer_stack.to_layout)."""
    manager = checkpoint.make_manager(workdir, save_every=1, keep=1_000_000)
    try:
        step = manager.latest_step()
        if step is None:
            return None
        config = _with_saved_layout(config, manager, step)
        recipe, frozen = build.build_recipe(config)
        abstract, _, _ = create_train_state(recipe, config, mesh)
        with jax.set_mesh(mesh):
            state = checkpoint.restore(manager, abstract, data_iterator=None, step=step)
        return recipe, frozen, state, step
    finally:
        manager.close()


def _saved_scan_layers(manager: Any, step: int) -> bool | None:
    """Whether checkpoint `step` holds scanned ViT blocks (see models.layer_stack); None when its params
    have no transformer (e.g. a generator's)."""
    return layer_stack.scanned_layout(checkpoint.saved_state(manager, step)["params"])


def _with_saved_layout(config: ml_collections.ConfigDict, manager: Any, step: int) -> ml_collections.ConfigDict:
    """`config`, or a copy whose model.scan_layers is the layout of checkpoint `step`."""
    if config.recipe == "generator":
        return config
    saved = _saved_scan_layers(manager, step)
    if saved is None or saved == config.model.get("scan_layers", False):
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.scan_layers = saved
    return config


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str, hint: str) -> tuple[Any, ...]:
    """(recipe, frozen, mesh, state, step) of the newest checkpoint in `workdir`; a missing one raises
    FileNotFoundError ending with `hint` (what to do instead). The recipe's model has the checkpoint's
    scan_layers layout (see restore_newest), which may differ from `config`'s."""
    mesh = sh.make_mesh(**config.mesh)
    restored = restore_newest(config, mesh, workdir)
    if restored is None:
        raise FileNotFoundError(f"--workdir={workdir!r} holds no checkpoint; {hint}")
    return restored[0], restored[1], mesh, *restored[2:]


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the configured recipe in `workdir`; returns the last logged metrics."""
    configs.validate_config(config)
    recipe, frozen = build.build_recipe(config)  # reads weight files: fails before any compile
    mesh = sh.make_mesh(**config.mesh)
    frozen = jax.device_put(frozen, sh.replicated(mesh))

    train_iter, eval_batch = build.make_data(config)
    # Restored (below) and checkpointed through the wrapper: it reports the position of the last batch used.
    train_iter = DevicePrefetch(train_iter, functools.partial(_global_batch, mesh=mesh), config.data.device_prefetch)
    eval_every = build.eval_every(config)
    evaluation = config.get("evaluation")  # tokenizers: the full eval-split metrics
    if evaluation is not None and evaluation.every:
        inception_vars, real_inception = tokenizer_eval.load_inception(evaluation.inception_weights)  # fails early
        inception_vars = jax.device_put(inception_vars, sh.replicated(mesh))

    abstract, init, shardings = create_train_state(recipe, config, mesh)
    manager = checkpoint.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints)
    with jax.set_mesh(mesh):
        if manager.latest_step() is not None:
            _check_resume_layout(config, manager, workdir)
            logging.info("Resuming from checkpoint step %d in %s", manager.latest_step(), workdir)
            state = checkpoint.restore(manager, abstract, train_iter)
        else:
            state = init()
            if config.get("init_from"):
                state = stage2_init.init_from_stage1(state, config, mesh)
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
    metric_sums, metric_count, window_start = None, 0, time.time()
    with jax.set_mesh(mesh):
        for step in range(start_step, config.total_steps):
            batch = next(train_iter)
            state, metrics = step_fns[recipe.gan_active(step)](state, batch, frozen)
            # Sum on device; the host only syncs every log_every steps.
            metric_sums = metrics if metric_sums is None else jax.tree.map(jnp.add, metric_sums, metrics)
            metric_count += 1
            done = step + 1
            for hook in hooks:
                hook(done)
            if done % config.log_every == 0 or done == config.total_steps:
                last_metrics = {k: float(v) / metric_count for k, v in jax.device_get(metric_sums).items()}
                elapsed = time.time() - window_start
                last_metrics["images_per_second_per_device"] = (
                    metric_count * config.batch_size / max(elapsed, 1e-9) / jax.device_count()
                )
                writer.write_scalars(done, last_metrics)
                metric_sums, metric_count, window_start = None, 0, time.time()
            if done % eval_every == 0 or done == config.total_steps:
                last_metrics.update(_evaluate_and_write_images(recipe, state, eval_batch, frozen, mesh, writer, done))
            if (
                evaluation is not None
                and evaluation.every
                and (done % evaluation.every == 0 or done == config.total_steps)
            ):
                results = tokenizer_eval.evaluate_tokenizer(
                    recipe, state.ema_params, frozen, config.data, config.eval_batch_size, mesh,
                    inception_vars, real_inception, evaluation.metrics, evaluation.max_images,
                )  # fmt: skip
                writer.write_scalars(done, {f"eval/{k}": v for k, v in results.items()})
                tokenizer_eval.save_results_json(workdir, done, results)
                last_metrics.update({f"eval/{k}": v for k, v in results.items()})
            checkpoint.save(manager, done, state, train_iter, force=done == config.total_steps)
            if manager.reached_preemption(done):
                logging.warning("Preemption signal at step %d: saving and exiting.", done)
                checkpoint.save(manager, done, state, train_iter, force=True)
                break
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    return last_metrics


def _check_resume_layout(config: ml_collections.ConfigDict, manager: Any, workdir: str) -> None:
    """Refuses to resume with another scan_layers than the checkpoints have (their optimizer state is in
    that layout too) before orbax fails on the tree structure."""
    if config.recipe == "generator":
        return
    saved, wanted = _saved_scan_layers(manager, manager.latest_step()), config.model.get("scan_layers", False)
    if saved is not None and saved != wanted:
        raise ValueError(
            f"The checkpoints in {workdir!r} hold {'scanned' if saved else 'unscanned'} ViT blocks, but "
            f"config.model.scan_layers={wanted}: resume with --config.model.scan_layers={saved}."
        )


@functools.partial(jax.jit, static_argnames=("recipe",))
def evaluate(state: TrainState, eval_batch: dict[str, jax.Array], frozen: dict[str, Any], recipe: Any):
    """The recipe's evaluation: (scalars, grid rows (R, C, H, W, 3) in [0, 1])."""
    return recipe.evaluate(state, eval_batch, frozen)


def _evaluate_and_write_images(
    recipe: Any,
    state: TrainState,
    eval_batch: dict[str, np.ndarray],
    frozen: dict[str, Any],
    mesh: jax.sharding.Mesh,
    writer: metric_writers.MetricWriter,
    step: int,
) -> dict[str, float]:
    """Writes the recipe's evaluation scalars (as eval/NAME) and its image grid."""
    scalars, rows = evaluate(state, _global_batch(eval_batch, mesh), frozen, recipe)
    results = {f"eval/{k}": float(v) for k, v in sh.to_host(scalars).items()}
    if results:
        writer.write_scalars(step, results)
    writer.write_images(step, {recipe.grid_name: image_grid(sh.to_host(rows))[None]})
    return results


def image_grid(rows: np.ndarray) -> np.ndarray:
    """(R, C, H, W, 3) in [0, 1] -> one uint8 (R*H, C*W, 3) image."""
    tiled = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return (np.clip(tiled, 0, 1) * 255).round().astype(np.uint8)
