"""A per-host writer lock: ``flock`` with a deadline and a prompt hand-over.

Writers of one repository on one host queue on an ``flock`` of a sidecar
file rather than racing for the ref's ``.lock`` (libgit2 does not wait for a
held ref lock, so optimistic retries storm once writers outnumber cores).
The kernel releases an ``flock`` when its holder dies, so a killed writer
never blocks the others.

``flock`` has no timeout. Polling with ``LOCK_NB`` gives one, but leaves the
lock idle between the holder's release and the next poll, which with many
waiters costs as much as the work. So an uncontended acquire is one
non-blocking call, and a contended one hands the blocking call to a helper
thread (``flock`` releases the GIL) that the caller waits on with a timeout:
the kernel wakes the next waiter the moment the lock is free. If the caller
gives up, the helper releases the lock as soon as it gets it.

A lock held for well under a millisecond at a time (the state branch's)
can also hand over without any wake-up at all: waiters line up on a second
``flock`` (the queue), and the one at its head polls the lock itself until
the holder lets go (see :class:`HostLock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gitstate.errors import GitStateError

_IDLE, _WANTED, _HELD, _ABANDONED = "idle", "wanted", "held", "abandoned"


class _Expired(Exception):
    """The interval timer bounding a blocking ``flock`` went off."""


class _Flock:
    """An exclusive ``flock`` on ``path`` for one process, taken with a deadline.

    Not re-entrant, and meant to be used by one thread at a time (callers
    serialise their own threads first, since an ``flock`` is shared by all
    threads of a process). Create it after ``fork``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._cond = threading.Condition()
        self._state = _IDLE
        self._helper: threading.Thread | None = None

    def acquire(self, timeout: float) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds; return success."""
        until = time.monotonic() + timeout
        with self._cond:
            # While a helper is still blocked in an abandoned flock call, the
            # fd must not be locked again here: its late success would
            # otherwise release our lock.
            if not self._cond.wait_for(lambda: self._state == _IDLE, timeout):
                return False
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._state = _HELD
                return True
            except BlockingIOError:
                pass
            if self._blocking_in_main_thread(until):
                self._state = _HELD
                return True
            if threading.current_thread() is threading.main_thread() and self._alarm_free():
                return False  # the main thread waited its whole timeout
            self._state = _WANTED
            if self._helper is None or not self._helper.is_alive():
                self._helper = threading.Thread(
                    target=self._wait_forever, name="hostlock", daemon=True
                )
                self._helper.start()
            self._cond.notify_all()
            remaining = max(0.0, until - time.monotonic())
            if self._cond.wait_for(lambda: self._state == _HELD, remaining):
                return True
            self._state = _ABANDONED
            return False

    def try_acquire(self) -> bool:
        """Take the lock if it is free now; never wait."""
        with self._cond:
            if self._state != _IDLE:
                return False
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._state = _HELD
            return True

    @staticmethod
    def _alarm_free() -> bool:
        return signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)

    def _blocking_in_main_thread(self, until: float) -> bool:
        """Wait in ``flock`` itself, bounded by SIGALRM, when that is possible.

        In the main thread (deploy workers, the CLI, a sync gunicorn worker)
        a blocking ``flock`` is woken by the kernel the moment the lock is
        free, with no thread hand-over; an interval timer bounds the wait.
        Returns True when the lock was taken; False when this path was not
        possible or the time ran out (the caller can tell which by
        :meth:`_alarm_free` in the main thread).
        """
        if threading.current_thread() is not threading.main_thread() or not self._alarm_free():
            return False
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False

        def expire(signum: int, frame: object) -> None:
            raise _Expired

        signal.signal(signal.SIGALRM, expire)
        try:
            signal.setitimer(signal.ITIMER_REAL, remaining)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            return True
        except _Expired:
            return False
        finally:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)

    def release(self) -> None:
        """Give the lock up."""
        with self._cond:
            self._state = _IDLE
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._cond.notify_all()

    def _wait_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._state == _WANTED)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._cond:
                if self._state == _ABANDONED:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._state = _IDLE
                else:
                    self._state = _HELD
                self._cond.notify_all()

    def close(self) -> None:
        """Close the file (the helper thread, if any, is a daemon)."""
        os.close(self._fd)


class HostLock:
    """An exclusive per-host lock on ``path``, for one process.

    Without ``spin`` it is a plain :class:`_Flock`. With it, a waiter first
    takes a second ``flock`` on ``<path>.queue``, so that one waiter at a
    time is first in line. That one does not sleep in the kernel: it polls
    the lock, yielding its CPU between polls, and takes it within
    microseconds of its release.

    Why: a waiter the kernel wakes needs a CPU, and gets either one that
    was idle (on a virtual machine, slow to wake) or the releaser's own,
    which it then shares with whatever the releaser does next. With 16
    writers on two cores the lock stood idle 70-100 µs per hand-over; with
    the first in line polling, sixteen writers on one counter went from
    76.8 to 84.5 % of the raw loop's rate in alternating pairs
    (docs/benchmarks.md).

    Only a process's main thread polls (a sync gunicorn worker, a deploy
    worker, the CLI); other threads wait in ``flock`` as before.

    Polling is worth it only while the lock is held briefly. The first in
    line polls for at most twice the time this process has lately held the
    lock (a moving average; ``spin`` before it has held it), and not at all
    when twice that is longer than ``spin`` seconds: with fsync on a slow
    disk the waiters sleep in the kernel as before, still in line.

    Not re-entrant, and meant to be used by one thread at a time. Create it
    after ``fork``.
    """

    def __init__(self, path: str | os.PathLike[str], *, spin: float = 0.0) -> None:
        self.path = Path(path)
        self.spin = spin
        self._lock = _Flock(self.path)
        self._queue = _Flock(self.path.with_name(self.path.name + ".queue")) if spin > 0 else None
        self._held_since = 0.0
        self._typical_hold: float | None = None

    def acquire(self, timeout: float) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds; return success."""
        queue = self._queue
        if queue is None or threading.current_thread() is not threading.main_thread():
            # A thread among others would poll in turns with them for the
            # GIL, and could leave the lock idle for a switch interval (5 ms)
            # after its release; a blocked flock() takes it without the GIL.
            return self._took(self._lock.acquire(timeout))
        if self._lock.try_acquire():
            return self._took(True)
        until = time.monotonic() + timeout
        if not queue.acquire(timeout):
            return False
        try:
            if self._poll(until):
                return self._took(True)
            return self._took(self._lock.acquire(max(0.0, until - time.monotonic())))
        finally:
            queue.release()

    def _poll(self, until: float) -> bool:
        """Poll for the lock while that is likely to pay (queue held); return success."""
        budget = self.spin if self._typical_hold is None else 2 * self._typical_hold
        if budget > self.spin:
            return False
        stop = min(until, time.monotonic() + budget)
        while True:
            if self._lock.try_acquire():
                return True
            if time.monotonic() >= stop:
                return False
            os.sched_yield()

    def _took(self, taken: bool) -> bool:
        if taken:
            self._held_since = time.monotonic()
        return taken

    def release(self) -> None:
        """Give the lock up."""
        held = time.monotonic() - self._held_since
        self._lock.release()
        typical = self._typical_hold
        self._typical_hold = held if typical is None else 0.8 * typical + 0.2 * held

    def close(self) -> None:
        """Close the files."""
        self._lock.close()
        if self._queue is not None:
            self._queue.close()


def environment_lock_path(lockdir: Path, environment: str) -> Path:
    """Return the lock file that one build or rollback of ``environment`` holds."""
    return lockdir / f"{environment}.lock"


class LockTimeout(GitStateError, TimeoutError):
    """Another process held a lock file for longer than the caller would wait."""

    def __init__(self, path: Path, waited: float) -> None:
        self.path = path
        self.waited = waited
        super().__init__(f"{path} was held by another process for {waited:.1f}s")


@contextlib.contextmanager
def flocked(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed), waiting for it.

    Each call opens the file anew, so threads of one process exclude each
    other too (an ``flock`` belongs to an open file, not to a process).

    Args:
        path: the lock file.
        timeout: seconds to wait at most (through a :class:`HostLock`);
            None waits as long as it takes.

    Raises:
        LockTimeout: ``timeout`` passed with the lock still held elsewhere.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if timeout is not None:
        lock = HostLock(path)
        try:
            started = time.monotonic()
            if not lock.acquire(timeout):
                raise LockTimeout(path, time.monotonic() - started)
            try:
                yield
            finally:
                lock.release()
        finally:
            lock.close()
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


#: Age after which a ref's ``.lock`` file is taken to be a dead writer's.
STALE_REF_LOCK = 5.0


def break_stale_ref_locks(repo: Path, ref: str, older_than: float = STALE_REF_LOCK) -> list[Path]:
    """Remove ``ref``'s and ``packed-refs``' ``.lock`` files older than ``older_than`` s.

    A writer killed between taking a ref's lock and renaming it leaves the
    ``.lock`` behind, and every later update of the ref fails until it is
    gone. Call this only while holding the lock that serialises gitstate's
    writers of that ref on this host: then no gitstate writer can own the
    file, and a foreign git holds such a lock for milliseconds, so an old
    one belongs to a process that died.

    Returns the files removed.
    """
    removed = []
    for lock in (repo / f"{ref}.lock", repo / "packed-refs.lock"):
        try:
            age = time.time() - lock.stat().st_mtime
            if age >= older_than:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:
            continue
    return removed
