"""The config mechanism: variant args and loading of ml_collections experiment files.

Experiment files live in experiments/ and define `get_config(arg)`. The arg is
`variant[,key=value...]`, e.g. `experiments/titok_two_stage.py:s128,stage=2`. What a config
means is its recipe's business: `titok_jax.recipes.validate(config)` checks it (common fields,
then the recipe module's own checks); shared defaults live in `titok_jax.recipes.defaults`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_arg(arg: str | None, variants: Mapping[str, Any], **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `variant[,key=value,...]` into a ConfigDict with `variant` set.

    The first bare word is the variant and must be one of `variants`; keys must
    be among `defaults`. Errors list the valid choices.
    """
    parsed = dict(defaults)
    parsed["variant"] = defaults.get("variant")
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in defaults:
                raise ValueError(f"Unknown config arg {key!r} in {arg!r}; valid args: {', '.join(sorted(defaults))}.")
            parsed[key] = _parse_value(value)
        else:
            parsed["variant"] = part
    if parsed["variant"] not in variants:
        raise ValueError(
            f"Unknown variant {parsed['variant']!r}; valid variants: {', '.join(variants)}. "
            "Pick one with --config=experiments/FILE.py:VARIANT."
        )
    return ml_collections.ConfigDict(parsed)


def load_module(path: str) -> Any:
    """Imports an experiment file (`get_config`, optionally `get_sweep`)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/file.py[:arg]` the way absl's config_flags does."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    return module.get_config(arg) if arg else module.get_config()


# A training workdir's copy of the config its run started with (written by the driver loop).
RUN_CONFIG = "run_config.json"


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs use (model fields must stay hashable)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def read_run_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a training workdir's run started with (WORKDIR/run_config.json), or None without one."""
    import json

    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(_tuples(json.load(f)))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); pass the run's experiment config instead.") from None
