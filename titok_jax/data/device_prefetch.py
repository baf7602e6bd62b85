"""Device prefetch: global batches are placed on the devices a few steps ahead of the train step.

The host builds and transfers batch k+1.. while the device runs step k, so the input transfer is off
the step's critical path. The wrapped iterator's position is checkpointed with the train state, and
prefetching moves it ahead of the step; `get_state` therefore returns the position right after the last
batch *handed out* (not the last one read), so a resume continues with exactly the batch the
interrupted run would have trained on next (the kill -9 resume test in tests/test_train_driver.py
runs with prefetch on).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any


class DevicePrefetch:
    """Wraps a grain-style iterator (`__next__`, `get_state`, `set_state`, `start_prefetch`).

    `to_device` turns a host batch into device arrays (e.g. sharded global arrays); `size` batches are
    kept in flight beyond the one returned (0: no prefetch, each batch is read when asked for).
    """

    def __init__(self, iterator: Iterator[Any], to_device: Callable[[Any], Any], size: int):
        if size < 0:
            raise ValueError(f"Device prefetch size must be >= 0, got {size}.")
        self._iterator = iterator
        self._to_device = to_device
        self._size = size
        self._ahead: collections.deque[tuple[Any, Any]] = collections.deque()  # (device batch, position after it)
        self._position = iterator.get_state()

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> Any:
        while len(self._ahead) <= self._size:
            batch = self._to_device(next(self._iterator))
            self._ahead.append((batch, self._iterator.get_state()))
        batch, self._position = self._ahead.popleft()
        return batch

    def get_state(self) -> Any:
        """The wrapped iterator's position right after the last batch returned by `__next__`."""
        return self._position

    def set_state(self, state: Any) -> None:
        self._ahead.clear()
        self._iterator.set_state(state)
        self._position = state

    def start_prefetch(self) -> None:
        self._iterator.start_prefetch()
