"""The supervisor restarts killed children at once and backs off crash loops."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from gitstate.process import supervisor
from gitstate.process.supervisor import Child, Supervisor


def _poll_until(sup: Supervisor, check, timeout: float = 30.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        sup.poll()
        if check():
            return True
        time.sleep(0.05)
    return False


def test_child_killed_after_running_comes_back_without_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor, "CRASH_LOOP_SECONDS", 0.3)
    child = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
    sup = Supervisor([child], grace=5)
    sup.start()
    try:
        for _round in range(4):
            time.sleep(0.4)  # longer than a crash
            first = child.process.pid
            os.kill(first, signal.SIGKILL)
            assert _poll_until(
                sup, lambda first=first: child.process is not None and child.process.pid != first
            )
            assert child.restarts == 0
    finally:
        sup.shutdown()


def test_crash_loop_backs_off() -> None:
    child = Child("crasher", [sys.executable, "-c", "raise SystemExit(1)"])
    sup = Supervisor([child], grace=5)
    sup.start()
    try:
        assert _poll_until(sup, lambda: child.restarts >= 3)
        assert child.not_before - time.monotonic() > 1.0
    finally:
        sup.shutdown()
