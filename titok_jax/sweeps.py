"""Sweeps declared in experiment files: `get_sweep(arg)` returns a list of override dicts.

Each dict maps config field paths to values (`{"optimizer.learning_rate": 3e-4}`);
the key `arg` replaces the config file's variant argument (`{"arg": "tiny_vae"}`).
`product` and `zipped` build the lists, `+` concatenates them:

    def get_sweep(arg):
        return sweeps.product(
            arg=["tiny_vq", "tiny_vae"], **{"optimizer.learning_rate": [1e-3, 3e-3]}
        ) + sweeps.zipped(**{"seed": [1, 2], "batch_size": [8, 16]})

`expand` turns a sweep into runs, each with its own validated config, the
override flags for the entry point and a readable, distinct workdir.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from titok_jax import configs

ARG_KEY = "arg"


def product(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the values of every axis (the last axis varies fastest)."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(axes[n] for n in names))]


def zipped(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The i-th values of all axes together; all axes must have the same length."""
    lengths = {name: len(values) for name, values in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zipped axes need equal lengths, got {lengths}.")
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in zip(*(axes[n] for n in names), strict=True)]


@dataclasses.dataclass(frozen=True)
class Run:
    group: str  # the experiment and its variant, e.g. "titok_single_stage_tiny_vq"
    name: str  # readable and distinct within the group, e.g. "learning_rate=0.001,seed=2"
    config_spec: str  # path:arg
    overrides: dict[str, Any]  # config field path -> value
    workdir: str
    config: ml_collections.ConfigDict

    def program_args(self) -> list[str]:
        """The entry point's flags of this run."""
        return [
            f"--config={self.config_spec}",
            f"--workdir={self.workdir}",
            *(f"--config.{key}={_flag_value(value)}" for key, value in self.overrides.items()),
        ]


def _flag_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _word(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", _flag_value(value)).strip("_") or "_"


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """The last path component of each key, or the whole path where two keys share a last component."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last, strict=True)}


def load_sweep(config_spec: str) -> list[dict[str, Any]]:
    """Calls `get_sweep(arg)` of the experiment file of `config_spec` (path[:arg])."""
    path, _, arg = config_spec.partition(":")
    module = configs.load_module(path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} declares no sweep: add `def get_sweep(arg)` returning a list of override dicts.")
    sweep = module.get_sweep(arg or None)
    if not isinstance(sweep, list) or not sweep or not all(isinstance(o, dict) for o in sweep):
        raise ValueError(f"get_sweep of {path} must return a non-empty list of dicts, got {sweep!r}.")
    return sweep


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Sets dotted field paths; an unknown path is an error naming it (as --config.a.b=v would be)."""
    for key, value in overrides.items():
        target, *parents, leaf = [config, *key.split(".")]
        for parent in parents:
            if not isinstance(target, ml_collections.ConfigDict) or parent not in target:
                raise KeyError(f"Sweep key {key!r}: the config has no field {parent!r} there.")
            target = target[parent]
        if not isinstance(target, ml_collections.ConfigDict) or leaf not in target:
            raise KeyError(f"Sweep key {key!r}: the config has no field {leaf!r} there.")
        target[leaf] = value
    return config


def expand(
    config_spec: str,
    root: str,
    sweep: list[dict[str, Any]] | None = None,
    validate: Callable[[ml_collections.ConfigDict], Any] | None = None,
) -> list[Run]:
    """The runs of a sweep (default: the experiment file's own), each config loaded and checked by `validate`
    (the launcher passes `recipes.validate`: every run is checked before any is launched).

    Workdirs are ROOT/EXPERIMENT_ARG/NAME with NAME from the swept values, e.g.
    /runs/titok_single_stage_tiny_vq/learning_rate=0.001,seed=2.
    """
    path, _, base_arg = config_spec.partition(":")
    sweep = load_sweep(config_spec) if sweep is None else sweep
    keys = list(dict.fromkeys(k for overrides in sweep for k in overrides))
    short = _short_names(keys)
    experiment = os.path.splitext(os.path.basename(path))[0]
    runs = []
    for overrides in sweep:
        arg = str(overrides.get(ARG_KEY, base_arg))
        fields = {k: v for k, v in overrides.items() if k != ARG_KEY}
        spec = f"{path}:{arg}" if arg else path
        config = apply_overrides(configs.load_config(spec), fields)
        if validate is not None:
            validate(config)
        group = f"{experiment}_{_word(arg)}" if arg else experiment
        name = ",".join(f"{short[k]}={_word(v)}" for k, v in fields.items()) or "base"
        runs.append(Run(group, name, spec, fields, os.path.join(root, group, name), config))
    workdirs = [run.workdir for run in runs]
    repeated = sorted({w for w in workdirs if workdirs.count(w) > 1})
    if repeated:
        raise ValueError(f"The sweep has repeated runs (same values twice): {', '.join(repeated)}.")
    return runs
