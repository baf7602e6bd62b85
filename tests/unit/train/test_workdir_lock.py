"""One run per workdir: a live holder refuses a second run; a dead or silent holder's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from titok_jax.train import workdir_lock


def _write_lock(workdir, host, pid, age_s=0.0):
    path = os.path.join(workdir, workdir_lock.LOCK_NAME)
    with open(path, "w") as f:
        json.dump({"host": host, "pid": pid, "started": "then"}, f)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid names no process (not even a zombie)
    return process.pid


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(tmp_path):
    with workdir_lock.hold(str(tmp_path)):
        with pytest.raises(workdir_lock.WorkdirLocked, match=rf"in use by another run \(pid {os.getpid()} on "):
            with workdir_lock.hold(str(tmp_path)):
                pass
        assert os.path.exists(tmp_path / "lock")  # the refusal leaves the holder's lock alone
    assert not os.path.exists(tmp_path / "lock")  # released at the end


def test_a_live_run_on_another_host_is_refused(tmp_path):
    _write_lock(str(tmp_path), "another-host", 12345, age_s=10)
    with pytest.raises(workdir_lock.WorkdirLocked, match="pid 12345 on another-host"):
        with workdir_lock.hold(str(tmp_path)):
            pass


@pytest.mark.parametrize(
    "host, pid, age_s",
    [(socket.gethostname(), None, 0.0), ("another-host", 12345, workdir_lock.STALE_S + 60)],
    ids=["dead pid on this host", "silent on another host"],
)
def test_a_stale_lock_is_taken_over(tmp_path, host, pid, age_s):
    _write_lock(str(tmp_path), host, _dead_pid() if pid is None else pid, age_s)
    with workdir_lock.hold(str(tmp_path)):
        with open(tmp_path / "lock") as f:
            assert json.load(f)["pid"] == os.getpid()


def test_the_heartbeat_keeps_a_long_run_fresh(tmp_path):
    with workdir_lock.hold(str(tmp_path), heartbeat_s=0.05):
        path = tmp_path / "lock"
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        time.sleep(0.5)
        assert time.time() - os.path.getmtime(path) < 5
