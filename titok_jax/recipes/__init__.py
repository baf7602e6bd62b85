"""What is trained: the Recipe protocol, and a registry from `config.recipe` to the module that owns it.

A recipe module owns its config validation, its build (model, losses, optimizer, frozen networks), its
data, its evaluators and its optional hooks (extra updates such as the GAN discriminator step, clustering-VQ
revival, a warm start). The driver loop (`train/`) runs any of them and knows none by name.

A new recipe is one module with the `RecipeModule` functions and one line in `REGISTRY`.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import jax
import ml_collections
import optax
from absl import logging

from titok_jax import optim
from titok_jax import sharding as sh
from titok_jax.data.pipeline import validate_data_config
from titok_jax.recipes import init_from
from titok_jax.train import writers

if TYPE_CHECKING:  # the loop imports clu and orbax: loading an experiment config should not
    from titok_jax.train.loop import Plan
    from titok_jax.train.state import TrainState

# config.recipe -> the module that owns it.
REGISTRY = {
    "two_stage_1": "titok_jax.recipes.tokenizer",
    "two_stage_2": "titok_jax.recipes.tokenizer",
    "single_stage": "titok_jax.recipes.tokenizer",
    "maskgit": "titok_jax.recipes.maskgit",
    "rar": "titok_jax.recipes.rar",
}
# Old names that still load, with a deprecation message.
DEPRECATED = {"generator": "maskgit"}

# What a trained run of a recipe is (RecipeModule.ARTIFACT): readers branch on this, never on a recipe name.
TOKENIZER = "tokenizer"
GENERATOR = "generator"


class Recipe(Protocol):
    """What the driver loop and `train.step.train_step` may use of a built recipe (a frozen dataclass, so it
    can be a static argument of jit)."""

    grid_name: str  # the name of the image grid `evaluate` returns
    seed: int
    grad_accum_steps: int
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    ema_decay: float
    ema_warmup: bool
    phases: tuple[Hashable, ...]  # one compiled train step per phase (e.g. without / with the GAN)

    def example_batch(self) -> dict[str, jax.Array]:
        """A one-example batch of the right shapes and dtypes (init and abstract state)."""

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        """The initial train state (traced under jit: created straight into its shardings)."""

    def phase(self, step: int) -> Hashable:
        """Which of `phases` step `step` runs (a host int: the loop picks the compiled step)."""

    def step_context(self, state: TrainState, frozen: dict[str, Any], phase: Hashable) -> dict[str, Any]:
        """What `loss` reads besides params and batch: frozen weights, the step, live auxiliary params."""

    def loss(
        self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, context: dict[str, Any]
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
        """-> (loss, (metrics, per-example outputs or None)) of one (micro-)batch."""

    def before_apply(
        self, state: TrainState, params: Any, metrics: dict[str, jax.Array]
    ) -> tuple[TrainState, Any, dict[str, jax.Array]]:
        """Edits the params before the optimizer's update is applied (e.g. dead-code revival)."""

    def extra_updates(
        self, state: TrainState, batch: dict[str, jax.Array], outputs: Any, phase: Hashable
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """Updates after the main one (e.g. the discriminator's) and their metrics."""

    def evaluate(
        self, state: TrainState, eval_batch: dict[str, jax.Array], frozen: dict[str, Any]
    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """(scalars, image grid rows (R, C, H, W, 3) in [0, 1]) every `Plan.grid_every` steps."""

    def window_summaries(self, sums: dict[str, Any], steps: int) -> tuple[dict[str, float], dict[str, Any]]:
        """The step metrics that are vectors (e.g. per-code counts), summed over a log window of `steps` steps
        -> (scalars, images (1, H, W, 3)) to log for that window."""

    def evaluation_images(self, scalars: dict[str, float]) -> dict[str, Any]:
        """Pictures drawn on the host from `evaluate`'s scalars (e.g. a quality-vs-k plot) -> images
        (1, H, W, 3) written beside the grid."""


class RecipeModule(Protocol):
    """The functions of a recipe module."""

    ARTIFACT: str  # what a trained run is: "tokenizer" or "generator"

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """The recipe's own checks (common fields are checked by `validate`); reads no weights."""

    def build(self, config: ml_collections.ConfigDict, random_frozen: bool = False) -> tuple[Recipe, dict[str, Any]]:
        """(recipe, frozen weights on the host); `random_frozen` draws frozen networks instead of reading them."""

    def make_data(self, config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
        """(this process's train iterator, its part of the grid batch)."""

    def prepare(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str) -> Plan:
        """Everything the loop runs: recipe, frozen weights, data, evaluators, hooks (the init_from warm start)."""

    def resize_rules(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """{name: init_from.Resize} of the tables whose shape follows a model size (config.init_from_resize)."""


def recipe_name(config: ml_collections.ConfigDict) -> str:
    """config.recipe, with deprecated names mapped to their new ones (and a message saying so)."""
    if "recipe" not in config:
        raise ValueError(f"Config is missing the top-level field 'recipe'; valid recipes: {', '.join(REGISTRY)}.")
    name = config.recipe
    if name in DEPRECATED:
        logging.warning("config.recipe=%r is deprecated; use %r.", name, DEPRECATED[name])
        name = DEPRECATED[name]
    if name not in REGISTRY:
        raise ValueError(f"Unknown recipe {name!r}; valid recipes: {', '.join(REGISTRY)}.")
    return name


def lookup(config: ml_collections.ConfigDict) -> RecipeModule:
    """The module that owns config.recipe."""
    return importlib.import_module(REGISTRY[recipe_name(config)])


# Counts and periods every loop divides by or counts down (keep_checkpoints=0 would keep no checkpoint).
POSITIVE_COUNTS = (
    "batch_size",
    "grad_accum_steps",
    "total_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "image_every",
    "sample_every",
)


def validate(config: ml_collections.ConfigDict) -> RecipeModule:
    """Checks a config before anything compiles (common fields, then its recipe's own); returns its module."""
    for key in ("seed", "mesh", "model", "recipe"):
        if key not in config:
            raise ValueError(f"Config is missing the top-level field {key!r}.")
    mesh_keys = set(config.mesh.keys())
    if mesh_keys != {"data", "fsdp", "tensor"}:
        raise ValueError(f"config.mesh must have exactly data, fsdp and tensor; got {sorted(mesh_keys)}.")
    for axis, size in config.mesh.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"config.mesh.{axis} must be a positive int or -1 (fill), got {size!r}.")
    validate_data_config(config.data)
    for key in POSITIVE_COUNTS:
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1):
            raise ValueError(f"config.{key} must be a positive integer, got {config[key]!r}.")
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f"batch_size={config.batch_size} does not split into grad_accum_steps={config.grad_accum_steps} micro-batches."
        )
    writers.validate(config)
    module = lookup(config)
    init_from.validate(config, module.resize_rules(config))
    module.validate(config)
    return module


def frozen_params(config: ml_collections.ConfigDict, always: Sequence[str] = ()) -> Callable[[Any], Any] | None:
    """The optimizer's frozen-parameter mask from config.frozen / config.trainable plus the recipe's `always`
    frozen patterns (None when everything trains)."""
    frozen = (*always, *init_from.field(config, "frozen"))
    trainable = tuple(init_from.field(config, "trainable"))
    if not frozen and not trainable:
        return None
    return functools.partial(optim.frozen_mask, frozen=frozen, trainable=trainable)


def stop_reasons() -> tuple[type[Exception], ...]:
    """The errors that end a run for a reason their one-line message names (divergence, a workdir in use)."""
    from titok_jax.train import guard, workdir_lock

    return guard.NonFiniteError, workdir_lock.WorkdirLocked


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Validates `config`, prepares its recipe and runs the driver loop in `workdir`; returns the last metrics."""
    from titok_jax.train import loop

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir={workdir} is a file; give a directory for the run's checkpoints and logs.")
    module = validate(config)
    mesh = sh.make_mesh(**config.mesh)
    plan = module.prepare(config, mesh, workdir)  # reads weight files: fails before any compile
    return loop.train(config, workdir, plan)
