"""The console: this project's own log lines, and only the warnings and errors of the libraries under it
(orbax, grain, absl and jax write INFO lines by the dozen). `--verbosity=0` (or higher) shows everything."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TypeVar

from absl import flags
from absl import logging as absl_logging

T = TypeVar("T")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class OwnLines(logging.Filter):
    """Passes this package's records at any level and other records from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(PACKAGE_DIR)


def quiet_libraries() -> None:
    """Installs OwnLines on absl's console handler (once), unless --verbosity was given."""
    if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        return
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, OwnLines) for f in handler.filters):
        handler.addFilter(OwnLines())


def shows_tracebacks() -> bool:
    """Whether the user asked for everything (--verbosity): then errors keep their tracebacks."""
    return "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present


def bar(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool = True
) -> Iterable[T]:
    """A tqdm progress bar with ETA over `iterable` for the long jobs outside training (pretokenize, sample,
    evaluate, tokenize) on process 0; other processes, and `enabled=False`, iterate silently."""
    import jax
    from tqdm import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    show = enabled and jax.process_index() == 0
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not show, mininterval=2.0, dynamic_ncols=True)
