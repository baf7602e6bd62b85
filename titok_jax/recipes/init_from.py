"""Fine-tuning starts: a fresh run whose first weights come from a release or another run (`config.init_from`).

Like the official `experiment.init_weight`: weights only. The optimizer, schedule and step start fresh, and
the EMA starts at the loaded weights. A workdir that already holds checkpoints resumes instead, and the
source is not read at all then (so a resumed fine-tune does not need it any more).

Every shape change is explicit in the config and reported at start-up:
  init_from_skip     parameter patterns left at their fresh init (a new codebook, a new pixel head)
  init_from_resize   named rules the recipe offers for tables that follow a size (recipe.resize_rules):
                     the grid positions of a new image / patch size, a new token count, new classes
Anything else that does not fit (a key only one side has, a shape without a rule) is an error that lists
every offending key with both shapes, raised before anything compiles: nothing is silently left random.

Freezing (`trainable`, `frozen`: parameter patterns, see trees.matches) is the optimizer's business
(optim.frozen_mask); the patterns are checked here against the model's parameters, since a pattern that
matches nothing is a typo that would otherwise train (or freeze) everything silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from titok_jax import checkpoint, configs
from titok_jax import sharding as sh
from titok_jax.models import layer_stack
from titok_jax.trees import BLOCKS, TRANSFORMER, matches

# The config fields of a fine-tuning start, with their defaults (every recipe's config has them).
DEFAULTS = dict(
    init_from="",  # a training workdir, a titok_jax bundle, an official hub directory / generator checkpoint
    init_from_config="",  # the source's config when it has none of its own (file.py[:variant], config.json, .yaml)
    init_from_skip=(),  # parameter patterns left at their fresh init
    init_from_resize=(),  # names of the recipe's resize rules allowed to change a loaded table's shape
    trainable=(),  # when set, only the params matching these patterns train
    frozen=(),  # params matching these patterns do not train
)
PATTERN_FIELDS = ("init_from_skip", "trainable", "frozen")


@dataclasses.dataclass(frozen=True)
class Resize:
    """A recipe's rule for tables whose shape follows a model size: `apply(loaded, fresh) -> table` for the
    parameters matching `patterns`."""

    patterns: tuple[str, ...]
    apply: Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A source's parameters, flat ('/'-joined names below 'params', unscanned layout), and what it was."""

    params: dict[str, np.ndarray]
    description: str


def field(config: ml_collections.ConfigDict, name: str) -> Any:
    return config.get(name, DEFAULTS[name])


def validate(config: ml_collections.ConfigDict, rules: Mapping[str, Resize]) -> None:
    """Types of the fine-tuning fields and the names of the resize rules (no file is read)."""
    for name in ("init_from", "init_from_config"):
        if not isinstance(field(config, name), str):
            raise ValueError(f"config.{name} must be a path (a string), got {field(config, name)!r}.")
    for name in (*PATTERN_FIELDS, "init_from_resize"):
        value = field(config, name)
        if isinstance(value, str) or not all(isinstance(p, str) and p for p in value):
            raise ValueError(
                f"config.{name} must be a tuple of non-empty strings, got {value!r} "
                f"(e.g. --config.{name}='(\"decoder\",)')."
            )
    unknown = sorted(set(field(config, "init_from_resize")) - set(rules))
    if unknown:
        raise ValueError(
            f"config.init_from_resize names unknown rules {unknown}; this recipe has: {', '.join(rules) or 'none'}."
        )


def check_patterns(config: ml_collections.ConfigDict, params: Any) -> None:
    """Every skip / trainable / frozen pattern matches at least one of the model's parameters, and none
    names one ViT block of a model whose blocks are scanned (stacked into one array per leaf)."""
    names = flat_names(params)
    for name in PATTERN_FIELDS:
        for pattern in field(config, name):
            if not any(matches(n, [pattern]) for n in names):
                shown = ", ".join(sorted({n.split("/")[0] for n in names}))
                raise ValueError(
                    f"config.{name} pattern {pattern!r} matches no parameter of this model (top-level names: "
                    f"{shown}; patterns are globs or prefixes of '/'-joined names, e.g. 'decoder/*')."
                )
            if f"{TRANSFORMER}/block_" in pattern and any(f"{TRANSFORMER}/{BLOCKS}/" in n for n in names):
                raise ValueError(
                    f"config.{name} pattern {pattern!r} names single ViT blocks, but model.scan_layers=True stacks "
                    "all blocks into one array: set --config.model.scan_layers=False to freeze or skip blocks."
                )


def flat_names(params: Any) -> list[str]:
    """'/'-joined names (below 'params') of a {"params": ...} tree's leaves."""
    return list(traverse_util.flatten_dict(dict(params["params"]), sep="/"))


@dataclasses.dataclass(frozen=True)
class Transfer:
    """Where each parameter of the fresh model comes from: `how` is loaded | resized | filled | fresh."""

    source: str
    how: dict[str, str]
    loaded: dict[str, np.ndarray]  # loaded (or filled) values, before any resize
    rules: dict[str, Resize]  # the rule of each resized parameter

    def report(self) -> str:
        counts = {kind: sum(h == kind for h in self.how.values()) for kind in ("loaded", "resized", "filled", "fresh")}
        lines = [
            f"init_from {self.source}: {counts['loaded']} parameters loaded, {counts['resized']} resized, "
            f"{counts['filled']} filled, {counts['fresh']} left at their fresh init."
        ]
        for kind in ("resized", "filled", "fresh"):
            names = sorted(n for n, h in self.how.items() if h == kind)
            if names:
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                lines.append(f"  {kind}: {shown}")
        return "\n".join(lines)

    def apply(self, state: Any) -> Any:
        """A fresh train state with the transferred params, and an EMA equal to them."""
        fresh = layer_stack.unstack_blocks(sh.to_host(state.params))
        flat = traverse_util.flatten_dict(fresh["params"], sep="/")
        for name, how in self.how.items():
            if how in ("loaded", "filled"):
                flat[name] = np.asarray(self.loaded[name], flat[name].dtype)
            elif how == "resized":
                flat[name] = np.asarray(self.rules[name].apply(self.loaded[name], flat[name]), flat[name].dtype)
        params = {"params": traverse_util.unflatten_dict(flat, sep="/")}
        scanned = layer_stack.scanned_layout(state.params)
        if scanned:
            params = layer_stack.stack_blocks(params)
        shardings = jax.tree.map(lambda x: x.sharding, state.params)
        params = jax.device_put(params, shardings)
        # Separate buffers: the train step donates the state, and a buffer donated twice is freed twice.
        return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))


def plan(
    target: Mapping[str, Any],
    loaded: Loaded,
    skip: Sequence[str] = (),
    rules: Mapping[str, Resize] | None = None,
    fill: Callable[[], dict[str, np.ndarray]] | None = None,
    fill_patterns: Sequence[str] = (),
    offered: Sequence[str] = (),
) -> Transfer:
    """Matches a source's parameters to the target's (flat name -> shape-bearing leaf) and raises one error
    naming every key that does not fit. `rules` are the allowed resize rules (`offered`: the names of all the
    recipe has, for the message); `fill()` gives the values of parameters matching `fill_patterns` that the
    source lacks (read only when needed)."""
    rules = rules or {}
    how: dict[str, str] = {}
    values = dict(loaded.params)
    applied: dict[str, Resize] = {}
    problems: list[str] = []
    missing = [n for n in target if n not in values and not matches(n, skip)]
    if any(matches(n, fill_patterns) for n in missing) and fill is not None:
        filled = fill()
        for name in missing:
            if name in filled:
                values[name] = filled[name]
                how[name] = "filled"
    for name, leaf in target.items():
        want = tuple(leaf.shape)
        if matches(name, skip):
            how[name] = "fresh"
        elif name in how:
            if tuple(np.shape(values[name])) != want:
                problems.append(f"{name}: filled {np.shape(values[name])}, model {want}")
        elif name not in values:
            problems.append(f"{name}: missing from the source, model {want}")
        elif tuple(np.shape(values[name])) == want:
            how[name] = "loaded"
        else:
            rule = next((r for r in rules.values() if matches(name, r.patterns)), None)
            if rule is None:
                problems.append(f"{name}: source {tuple(np.shape(values[name]))}, model {want}")
            else:
                how[name], applied[name] = "resized", rule
    for name in sorted(set(values) - set(target)):
        if not matches(name, skip):
            problems.append(f"{name}: only in the source {tuple(np.shape(values[name]))}")
    if problems:
        raise ValueError(
            f"config.init_from={loaded.description} does not fit this model in {len(problems)} parameter(s): "
            + "; ".join(problems)
            + ". Leave them at their fresh init with config.init_from_skip, allow a resize with "
            f"config.init_from_resize ({', '.join(offered or rules) or 'this recipe has none'}), or start from weights of "
            "this model."
        )
    # Resizes are checked now (before anything compiles) on stand-ins of the fresh tables.
    for name, rule in applied.items():
        rule.apply(values[name], np.zeros(target[name].shape, np.float32))
    return Transfer(source=loaded.description, how=how, loaded=values, rules=applied)


def resolve_source(path: str, artifact: str) -> str:
    """The path to read: a training workdir named by itself or by its checkpoints/ folder, refused when its
    run recorded another kind of model than `artifact` (recipes.TOKENIZER / GENERATOR); other paths as given."""
    from titok_jax import recipes  # the registry imports this module

    workdir = os.path.abspath(path)
    if os.path.basename(workdir) == checkpoint.CHECKPOINTS_DIR:
        workdir = os.path.dirname(workdir)
    if not os.path.isdir(checkpoint.checkpoints_dir(workdir)):
        return path
    recorded = configs.read_run_config(workdir)
    if recorded is not None and "recipe" in recorded:
        kind = recipes.lookup(recorded).ARTIFACT
        if kind != artifact:
            raise ValueError(f"config.init_from={path!r} holds a {kind} ({recorded.recipe} run), not a {artifact}.")
    return workdir


def source_config(config: ml_collections.ConfigDict) -> str | None:
    return field(config, "init_from_config") or None


def warm_start(
    config: ml_collections.ConfigDict,
    workdir: str,
    abstract_params: Any,
    load: Callable[[str, str | None], Loaded],
    rules: Mapping[str, Resize],
    fill: Callable[[], dict[str, np.ndarray]] | None = None,
    fill_patterns: Sequence[str] = (),
) -> Callable[[Any], Any] | None:
    """The Plan's warm start for `config.init_from` (None without one, or when `workdir` resumes). Reads the
    source and checks every parameter now: call it before anything compiles."""
    check_patterns(config, abstract_params)
    source = field(config, "init_from")
    if not source:
        return None
    if checkpoint.newest_step(workdir) is not None:
        logging.info("%s holds checkpoints: resuming from them; config.init_from=%s is not read.", workdir, source)
        return None
    if not os.path.exists(source):
        raise FileNotFoundError(f"config.init_from={source!r} does not exist.")
    loaded = load(source, source_config(config))
    target = traverse_util.flatten_dict(dict(layer_stack.unstack_blocks(abstract_params)["params"]), sep="/")
    allowed = {name: rules[name] for name in field(config, "init_from_resize")}
    transfer = plan(target, loaded, field(config, "init_from_skip"), allowed, fill, fill_patterns, tuple(rules))
    logging.info("%s", transfer.report())
    return transfer.apply


def abstract_params(recipe: Any, seed: int) -> Any:
    """The recipe's parameters as shapes (nothing is initialised or compiled)."""
    boxed = jax.eval_shape(recipe.init, jax.random.PRNGKey(seed), recipe.example_batch())
    return nn.meta.unbox(boxed).params


def flat_host_params(params: Any) -> dict[str, np.ndarray]:
    """A {"params": ...} tree (any layout, host or device) -> flat unscanned host arrays."""
    host = layer_stack.unstack_blocks(sh.to_host(dict(params)))
    return traverse_util.flatten_dict(dict(host["params"]), sep="/")
