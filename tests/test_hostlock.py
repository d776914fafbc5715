"""The per-host writer lock across real processes: timeouts, hand-over, death."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gitstate.hostlock import HostLock

_HOLDER = """
import sys, time, pathlib
from gitstate.hostlock import HostLock
lock = HostLock(sys.argv[1])
assert lock.acquire(30)
pathlib.Path(sys.argv[2]).write_text("held")
while not pathlib.Path(sys.argv[3]).exists():
    time.sleep(0.01)
lock.release()
"""


def _hold(path: Path, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    ready, done = tmp_path / f"{name}.ready", tmp_path / f"{name}.done"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(ready), str(done)])
    while not ready.exists():
        assert proc.poll() is None
        time.sleep(0.01)
    return proc, done


def _someone_else_can_lock(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _in_thread(fn, *args):
    """Run ``fn`` in a thread other than the main one (the helper-thread path)."""
    out = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)))
    worker.start()
    worker.join(60)
    return out[0]


@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_times_out_while_held_and_gets_it_once_released(tmp_path: Path, where: str) -> None:
    path = tmp_path / "writer.lock"
    proc, done = _hold(path, tmp_path, "a")
    lock = HostLock(path)
    attempt = lock.acquire if where == "main thread" else lambda t: _in_thread(lock.acquire, t)
    assert attempt(0.2) is False
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    done.write_text("")
    proc.wait(30)
    assert lock.acquire(30) is True
    assert not _someone_else_can_lock(path)
    lock.release()
    assert _someone_else_can_lock(path)


def test_abandoned_wait_never_releases_a_later_holder(tmp_path: Path) -> None:
    path = tmp_path / "writer.lock"
    proc, done = _hold(path, tmp_path, "a")
    lock = HostLock(path)
    # Give up (from a worker thread, as in gunicorn) while the helper thread
    # is still blocked in flock().
    assert _in_thread(lock.acquire, 0.1) is False
    done.write_text("")
    proc.wait(30)
    assert lock.acquire(30) is True
    # The helper's late success must not have dropped the lock we now hold.
    time.sleep(0.2)
    assert not _someone_else_can_lock(path)
    lock.release()


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    path = tmp_path / "writer.lock"
    proc, _done = _hold(path, tmp_path, "a")
    lock = HostLock(path)
    assert lock.acquire(0.1) is False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock.acquire(30) is True
    lock.release()
