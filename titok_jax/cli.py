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
import difflib
import json
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from absl import app, flags

from titok_jax import configs, logs

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


# Mistakes a user makes (a bad path, a wrong model, an invalid value): one line, exit 2, no traceback (with
# --verbosity=0 or higher the traceback is shown, for bug reports).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
USAGE_EXIT = 2


def main(
    run: Callable[[Any, Any], Any],
    options_cls: type,
    config: str = "none",
    distributed: bool = False,
    config_default: str | None = None,
    config_from: str | None = None,
) -> None:
    """Defines the flags, then runs `run(config, options)` under absl and prints its summary as JSON.

    `config_from` names the option holding a training workdir whose recorded config (WORKDIR/run_config.json)
    stands in for a missing --config."""
    if distributed:
        from titok_jax import distributed as distributed_lib

        distributed_lib.define_flags()
    try:  # the experiment file is loaded (and --config.x=v applied) right here, by the config flag
        define_flags(options_cls, config, config_default)
    except Exception as err:  # any failure to build the config comes from its file or an override
        _exit_with(_config_error(err, config_default))
    if config != "none":
        flags.DEFINE_bool("print_config", False, "Print the resolved experiment config and exit.")

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logs.quiet_libraries()
        options = options_from_flags(options_cls)
        try:  # an explicit --config file is loaded, and its overrides applied, when first read
            experiment = flags.FLAGS.config if config != "none" else None
            if experiment is not None:
                experiment.keys()  # a lazily loaded file reports its errors on first use: here
        except Exception as err:  # its file or an override
            _exit_with(_config_error(err, config_default))
        source = getattr(options, config_from) if config_from else None
        if experiment is None and source:
            if not os.path.exists(source):
                _exit_with(f"--{config_from}={source} does not exist.")
            experiment = configs.read_run_config(source)
        if config == "required" and experiment is None:
            recorded = f", or --{config_from} a training workdir that recorded its config" if config_from else ""
            _exit_with(f"--config is required (an experiment config file[:variant]){recorded}.")
        if config != "none" and flags.FLAGS.print_config:
            print(experiment)
            return
        if distributed:
            from titok_jax import distributed as distributed_lib

            distributed_lib.initialize_from_flags()
        try:
            summary = run(experiment, options)
        except USER_ERRORS as err:
            if logs.shows_tracebacks():
                raise
            _exit_with(str(err))
        if summary is not None:
            print(json.dumps(summary, default=_jsonable, sort_keys=True))

    def _parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except Exception as err:  # a bad flag value, an unreadable --config file, an override of no field
            _exit_with(_config_error(err, config_default) + " (--helpshort lists the flags)")

    app.run(_main, flags_parser=_parse)


def _exit_with(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def _config_error(err: Exception, default_spec: str | None) -> str:
    """One line for a config that could not be built: the override naming an unknown field (with the nearest
    valid names), or the error's own first line."""
    for arg in sys.argv[1:]:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        path = arg.removeprefix("--config.").split("=", 1)[0].split(".")
        unknown = _unknown_field(_spec_from_argv() or default_spec, path)
        if unknown:
            return f"{arg.split('=', 1)[0]}: {unknown}"
    lines = [line.strip() for line in str(err).replace("\\n", "\n").splitlines() if line.strip()]
    # A config file that cannot be read (absl lists every path it tried) or whose get_config raised (its
    # traceback is in the message): the last line says why.
    text = lines[-1] if lines and ("Attempted" in str(err) or "Traceback" in str(err)) else " ".join(lines)
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # KeyError's repr quotes
    return text or type(err).__name__


def _spec_from_argv() -> str | None:
    for i, arg in enumerate(sys.argv[1:], start=1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return None


def _unknown_field(spec: str | None, path: list[str]) -> str | None:
    """'optimizer has no field "lerning_rate"; did you mean "learning_rate"?' when `path` leaves the config."""
    if not spec:
        return None
    try:
        node = configs.load_config(spec)
    except Exception:  # a broken config: its own error says more
        return None
    for depth, key in enumerate(path):
        if not hasattr(node, "keys") or key not in node.keys():
            if not hasattr(node, "keys"):
                return f"{'.'.join(path[:depth])} is a value, not a group of fields"
            valid = sorted(node.keys())
            near = difflib.get_close_matches(key, valid, n=3)
            where = ".".join(path[:depth]) or "the config"
            hint = f"did you mean {', '.join(repr(n) for n in near)}?" if near else f"valid: {', '.join(valid)}"
            return f"{where} has no field {key!r}; {hint}"
        node = node[key]
    return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)
