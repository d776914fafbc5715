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

from gitstate.base import hostlock
from gitstate.base.hostlock import HostLock

_HOLDER = """
import sys, time, pathlib
from gitstate.base import hostlock
from gitstate.base.hostlock import HostLock
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


# -- the first waiter in line polls (HostLock(spin=...)) -----------------------------


def _release_later(done: Path, after: float) -> threading.Thread:
    releaser = threading.Timer(after, done.write_text, args=("",))
    releaser.start()
    return releaser


def _count_polls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the non-blocking attempts every lock in this process makes."""
    calls = [0]
    original = hostlock._Flock.try_acquire

    def counted(self: hostlock._Flock) -> bool:
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(hostlock._Flock, "try_acquire", counted)
    return calls


def test_first_in_line_polls_while_holds_are_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "writer.lock"
    proc, done = _hold(path, tmp_path, "a")
    lock = HostLock(path, spin=5.0)
    polls = _count_polls(monkeypatch)
    releaser = _release_later(done, 0.3)
    assert lock.acquire(30) is True
    releaser.join()
    proc.wait(30)
    # It took the lock by polling for it, not from a wake-up in the kernel.
    assert polls[0] > 10
    assert not _someone_else_can_lock(path)
    # The queue is free for the next waiter as soon as the lock is taken.
    assert _someone_else_can_lock(Path(f"{path}.queue"))
    lock.release()
    assert _someone_else_can_lock(path)


def test_only_the_main_thread_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread would poll in turns with its siblings for the GIL.
    path = tmp_path / "writer.lock"
    proc, done = _hold(path, tmp_path, "a")
    lock = HostLock(path, spin=5.0)
    polls = _count_polls(monkeypatch)
    releaser = _release_later(done, 0.3)
    assert _in_thread(lock.acquire, 30) is True
    releaser.join()
    proc.wait(30)
    assert polls[0] == 0
    assert not _someone_else_can_lock(path)
    lock.release()


def test_first_in_line_sleeps_when_this_process_holds_the_lock_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "writer.lock"
    lock = HostLock(path, spin=0.1)
    assert lock.acquire(1) is True
    time.sleep(0.3)  # a hold far longer than the lock is worth polling for
    lock.release()
    proc, done = _hold(path, tmp_path, "a")
    polls = _count_polls(monkeypatch)
    releaser = _release_later(done, 0.5)
    cpu = time.process_time()
    assert lock.acquire(30) is True
    spent = time.process_time() - cpu
    releaser.join()
    proc.wait(30)
    assert polls[0] == 1  # the one attempt on arrival; then it slept in flock()
    assert spent < 0.2  # a poll for the whole wait would have used about 0.5 s
    lock.release()


@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_first_in_line_times_out_and_leaves_the_queue(tmp_path: Path, where: str) -> None:
    path = tmp_path / "writer.lock"
    proc, done = _hold(path, tmp_path, "a")
    lock = HostLock(path, spin=0.05)
    attempt = lock.acquire if where == "main thread" else lambda t: _in_thread(lock.acquire, t)
    assert attempt(0.3) is False
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    assert _someone_else_can_lock(Path(f"{path}.queue"))
    done.write_text("")
    proc.wait(30)
    assert lock.acquire(30) is True
    lock.release()


_QUEUED = """
import sys, pathlib
from gitstate.base import hostlock
from gitstate.base.hostlock import HostLock
lock = HostLock(sys.argv[1], spin=60.0)
pathlib.Path(sys.argv[2]).write_text("queued")
lock.acquire(60)
"""


def test_a_killed_first_in_line_does_not_block_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "writer.lock"
    queue = Path(f"{path}.queue")
    holder, done = _hold(path, tmp_path, "a")
    started = tmp_path / "queued"
    first = subprocess.Popen([sys.executable, "-c", _QUEUED, str(path), str(started)])
    while not started.exists() or _someone_else_can_lock(queue):
        assert first.poll() is None
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    lock = HostLock(path, spin=0.05)
    releaser = _release_later(done, 0.2)
    assert lock.acquire(30) is True
    releaser.join()
    holder.wait(30)
    lock.release()


_INCREMENTS = """
import sys, pathlib
from gitstate.base import hostlock
from gitstate.base.hostlock import HostLock
counter = pathlib.Path(sys.argv[2])
lock = HostLock(sys.argv[1], spin=float(sys.argv[3]))
for _ in range(int(sys.argv[4])):
    assert lock.acquire(60)
    try:
        counter.write_text(str(int(counter.read_text()) + 1))
    finally:
        lock.release()
"""


@pytest.mark.parametrize("spin", [0.0, 0.002])
def test_processes_taking_turns_lose_no_increment(tmp_path: Path, spin: float) -> None:
    path, counter = tmp_path / "writer.lock", tmp_path / "counter"
    counter.write_text("0")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _INCREMENTS, str(path), str(counter), str(spin), "150"]
        )
        for _ in range(6)
    ]
    assert [proc.wait(120) for proc in procs] == [0] * 6
    assert counter.read_text() == "900"
