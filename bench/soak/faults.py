"""Faults injected during the run, and the ref-lock sampler.

:class:`FaultInjector` SIGKILLs a gunicorn worker, a deploy worker or a
file-sync client (the supervisor, or gunicorn's master, must start a new
one) and plants stale ``refs/heads/state.lock`` files with an old mtime
(the store must remove them). :class:`LockSampler` watches the ref lock
files so that a lock stuck for longer than allowed is seen.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from pathlib import Path

from bench.soak.cluster import Cluster

KINDS = ("gunicorn-worker", "deploy-worker", "sync-primary", "sync-compiler", "stale-lock")
#: How old a planted lock file claims to be.
STALE_AGE = 120.0


@dataclasses.dataclass
class Fault:
    """One injected fault.

    Attributes:
        kind: one of :data:`KINDS`.
        at: wall-clock time it was injected.
        pid: the process killed (None for a lock).
        recovered_after: seconds until a replacement process ran (or the
            planted lock was gone); None if that never happened in time.
        detail: what happened, in words.
    """

    kind: str
    at: float
    pid: int | None = None
    recovered_after: float | None = None
    detail: str = ""


class FaultInjector(threading.Thread):
    """Inject faults at random (seeded) intervals until stopped.

    Args:
        cluster: the running installation.
        seed: the run's seed.
        interval: (low, high) seconds between faults.
        recovery_timeout: how long to wait for a replacement process.
    """

    def __init__(
        self,
        cluster: Cluster,
        seed: int,
        *,
        interval: tuple[float, float] = (3.0, 9.0),
        recovery_timeout: float = 30.0,
    ) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.cluster = cluster
        self.rng = random.Random(seed * 7919 + 1)
        self.interval = interval
        self.recovery_timeout = recovery_timeout
        self.faults: list[Fault] = []
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Inject no more faults; the current one finishes."""
        self._stop_event.set()

    def kill_times(self, kind: str) -> list[float]:
        """Return when processes of ``kind`` were killed."""
        with self._lock:
            return [fault.at for fault in self.faults if fault.kind == kind and fault.pid]

    def run(self) -> None:
        """Every kind once, in a random order, then at random."""
        order = list(KINDS)
        self.rng.shuffle(order)
        for count in range(10_000):
            if self._stop_event.wait(self.rng.uniform(*self.interval)):
                return
            kind = order[count] if count < len(order) else self.rng.choice(KINDS)
            fault = self._lock_fault() if kind == "stale-lock" else self._kill(kind)
            with self._lock:
                self.faults.append(fault)

    def _kill(self, role: str) -> Fault:
        before = self.cluster.processes().get(role, [])
        if not before:
            return Fault(role, time.time(), detail="no process of that role was running")
        pid = self.rng.choice(before)
        fault = Fault(role, time.time(), pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            fault.detail = "gone before the signal"
            fault.pid = None
            return fault
        until = time.monotonic() + self.recovery_timeout
        # The recovery is watched even when the run ends meanwhile: a kill in
        # its last moment would otherwise count as never recovered.
        while time.monotonic() < until:
            now = self.cluster.processes().get(role, [])
            if pid not in now and len(now) >= len(before):
                fault.recovered_after = time.time() - fault.at
                fault.detail = f"killed {pid}; replaced by {sorted(set(now) - set(before))}"
                return fault
            time.sleep(0.05)
        fault.detail = f"killed {pid}; no replacement within {self.recovery_timeout:g}s"
        return fault

    def _lock_fault(self) -> Fault:
        path = self.cluster.state_repo / "refs" / "heads" / "state.lock"
        fault = Fault("stale-lock", time.time())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fault.detail = "a writer held the lock; nothing planted"
            return fault
        os.write(fd, b"0000000000000000000000000000000000000000\n")
        os.close(fd)
        old = time.time() - STALE_AGE
        os.utime(path, (old, old))
        stamp = os.stat(path).st_ino
        until = time.monotonic() + self.recovery_timeout
        while time.monotonic() < until:
            try:
                if os.stat(path).st_ino != stamp:
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            fault.detail = f"planted lock still there after {self.recovery_timeout:g}s"
            return fault
        fault.recovered_after = time.time() - fault.at
        fault.detail = "planted a lock with an old mtime; a writer removed it"
        return fault


class LockSampler(threading.Thread):
    """Sample ref ``.lock`` files; remember the longest one file stayed.

    A lock file is told apart from the next one on the same path by its
    inode and mtime, so many short locks in a row are not one long one.

    Args:
        paths: the lock files to watch.
        every: seconds between samples.
    """

    def __init__(self, paths: list[Path], every: float = 0.05) -> None:
        super().__init__(name="soak-locks", daemon=True)
        self.paths = paths
        self.every = every
        self.samples = 0
        self.longest: dict[str, float] = {str(path): 0.0 for path in paths}
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._stop_event = threading.Event()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop_event.set()

    def run(self) -> None:
        """Sample until stopped (at most a day's worth of samples)."""
        for _sample in range(int(86400 / self.every)):
            if self._stop_event.wait(self.every):
                return
            now = time.monotonic()
            self.samples += 1
            for path in self.paths:
                key = str(path)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    self._seen.pop(key, None)
                    continue
                identity = (stat.st_ino, stat.st_mtime_ns)
                seen = self._seen.get(key)
                if seen is None or seen[0] != identity:
                    self._seen[key] = (identity, now)
                    continue
                self.longest[key] = max(self.longest[key], now - seen[1])
