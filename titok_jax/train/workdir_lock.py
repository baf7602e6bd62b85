"""One training run per workdir: a lock file held by process 0 for the run's lifetime.

WORKDIR/lock holds {host, pid, started}; a heartbeat thread touches it every HEARTBEAT_S seconds. A second run
on the same workdir is refused while the holder lives. A lock is stale, and taken over with a warning, when its
pid is gone on this host, or when it was not touched for STALE_S seconds (its holder on another host was
preempted or killed: the run restarted elsewhere must not wait for a person).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

from absl import logging

LOCK_NAME = "lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class WorkdirLocked(RuntimeError):
    """Another live run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> Iterator[None]:
    """Holds WORKDIR/lock while the block runs (raises WorkdirLocked when a live run holds it)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    _acquire(path, mine, stale_s)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop, heartbeat_s), daemon=True, name="workdir-lock")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(FileNotFoundError):
            if _read(path) == mine:
                os.remove(path)


def _acquire(path: str, mine: dict, stale_s: float) -> None:
    for _ in range(2):  # a second try after removing a stale lock
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            why_stale = _stale(path, holder, stale_s)
            if why_stale is None:
                raise WorkdirLocked(
                    f"{os.path.dirname(path)} is in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')}): stop that run or choose another "
                    f"--workdir (if that run is gone, delete {path})."
                ) from None
            logging.warning("Taking over the stale lock %s (%s): %s", path, why_stale, holder)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(descriptor, "w") as f:
            json.dump(mine, f)
        return
    raise WorkdirLocked(f"{path} was taken by another run while this one started; choose another --workdir.")


def _stale(path: str, holder: dict, stale_s: float) -> str | None:
    """Why the lock at `path` is stale, or None while its holder may be alive."""
    if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
        return f"pid {holder.get('pid')} is not running"
    try:
        idle = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return "removed"
    if idle > stale_s:
        return f"not touched for {idle:.0f} s"
    if not holder and idle > 10:  # created, then killed before it was written (younger: being written now)
        return "empty"
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _heartbeat(path: str, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(OSError):
            os.utime(path)
