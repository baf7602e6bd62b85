"""SIGTERM / SIGINT in a single-process run: finish the step, save it, exit 0.

A batch scheduler (SLURM, Kubernetes) sends SIGTERM before it kills a job; Ctrl-C sends SIGINT. Both only set a
flag that the loop reads after each step; a second SIGINT interrupts at once (KeyboardInterrupt), for a user
who does not want to wait for the save. Multi-process runs leave SIGTERM to jax.distributed's preemption
notice (every process then saves the same step), so the handlers are installed only for one process.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import jax
from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Catch:
    """Context manager: while active, `requested` turns True on SIGTERM / SIGINT (named by `name`)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.name is not None

    def __enter__(self) -> Catch:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, the newest complete checkpoint stays
        self.name = signal.Signals(signum).name
        logging.warning("%s received: finishing this step, then saving it and exiting.", self.name)
