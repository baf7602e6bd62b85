"""The one absl prologue of every command (`python -m titok_jax.X`).

A command is an options dataclass (its fields are its flags: `option(default, help)`), an optional
experiment config flag, and a pure function `run(config, options) -> summary` that makes library calls
only. `main(run, Options, ...)` defines the flags, checks usage, joins the multi-host run when asked,
calls `run` and prints its summary as JSON:

    @dataclasses.dataclass(frozen=True)
    class Options:
        workdir: str = cli.option(None, "The generator's training workdir.", required=True)
        num_images: int = cli.option(50_000, "How many images.")

    def run(config, options: Options) -> dict: ...

    if __name__ == "__main__":
        cli.main(run, Options, config="required", distributed=True)
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from typing import Any

from absl import app, flags

CONFIG_MODES = ("required", "optional", "none")


def option(default: Any, help: str, required: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that is also a flag of the same name (a list default becomes a tuple: a list flag)."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"help": help, "required": required, "choices": choices})


def define_flags(options_cls: type, config: str = "none", config_default: str | None = None) -> None:
    """Defines one flag per field of `options_cls`, plus --config (an experiment file[:variant], with
    --config.a.b=v overrides) unless `config` is "none"."""
    if config not in CONFIG_MODES:
        raise ValueError(f"config must be one of {CONFIG_MODES}, got {config!r}.")
    if config != "none":
        from ml_collections import config_flags

        config_flags.DEFINE_config_file("config", config_default, "Experiment config file[:variant,args].")
    hints = typing.get_type_hints(options_cls)
    for field in dataclasses.fields(options_cls):
        kind, meta = hints[field.name], field.metadata
        if meta.get("choices"):
            flags.DEFINE_enum(field.name, field.default, meta["choices"], meta["help"])
        elif kind in (bool, "bool"):
            flags.DEFINE_bool(field.name, field.default, meta["help"])
        elif kind in (int, "int") or kind == (int | None):
            flags.DEFINE_integer(field.name, field.default, meta["help"])
        elif kind in (float, "float") or kind == (float | None):
            flags.DEFINE_float(field.name, field.default, meta["help"])
        elif kind in (tuple[str, ...], "tuple[str, ...]"):
            flags.DEFINE_list(field.name, list(field.default), meta["help"])
        else:
            flags.DEFINE_string(field.name, field.default, meta["help"])
        if meta.get("required"):
            flags.mark_flag_as_required(field.name)


def options_from_flags(options_cls: type) -> Any:
    values = {field.name: flags.FLAGS[field.name].value for field in dataclasses.fields(options_cls)}
    return options_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def main(
    run: Callable[[Any, Any], Any],
    options_cls: type,
    config: str = "none",
    distributed: bool = False,
    config_default: str | None = None,
) -> None:
    """Defines the flags, then runs `run(config, options)` under absl and prints its summary as JSON."""
    if distributed:
        from titok_jax import distributed as distributed_lib

        distributed_lib.define_flags()
    define_flags(options_cls, config, config_default)

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        experiment = flags.FLAGS.config if config != "none" else None
        if config == "required" and experiment is None:
            raise app.UsageError("--config is required (an experiment config file[:variant]).")
        if distributed:
            from titok_jax import distributed as distributed_lib

            distributed_lib.initialize_from_flags()
        summary = run(experiment, options_from_flags(options_cls))
        if summary is not None:
            print(json.dumps(summary, default=_jsonable, sort_keys=True))

    app.run(_main)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)
