"""Wait for a repository's refs to move, woken by inotify rather than by polling.

Deploy workers wait for work, ``wait: true`` requests wait for their
deploys, the page's long poll waits for any change: all of them wait for
the state branch (or the storage repository) to move. One :class:`TipWatch`
per repository and process watches its refs with watchdog (inotify on
Linux) and wakes every waiter on any ref event; each waiter then looks at
what it cares about (a ref read costs microseconds) and waits again if
that did not change.

There is no debouncing: a ref update is one event (git and libgit2 move
``<ref>.lock`` onto ``<ref>``; ``*.lock`` events are ignored), and under a
load of thousands of commits a second a debouncer that waits for quiet
would never fire. A waiter also looks again at least every
:data:`SAFETY_NET` seconds, so a lost event (an inotify queue overflow)
costs a delay, never a hang. Where inotify cannot be used watchdog's
polling observer stands in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from gitstate.base.fswatch import is_ref_event

log = logging.getLogger(__name__)

#: Longest a waiter sleeps without looking (seconds), in case an event is lost.
SAFETY_NET = 1.0

_watches: dict[Path, TipWatch] = {}
_watches_lock = threading.Lock()


class _Handler(FileSystemEventHandler):
    def __init__(self, watch: TipWatch) -> None:
        self._watch = watch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if is_ref_event(self._watch.repo, event):
            self._watch.notify()


class TipWatch:
    """Wake waiters when the refs of one bare repository change.

    Args:
        repo: the bare repository.
    """

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo).resolve()
        self._changed = threading.Condition()
        self._generation = 0
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, repo: Path) -> TipWatch:
        """Return this process's watch of ``repo`` (made on first use)."""
        key = Path(repo).resolve()
        with _watches_lock:
            watch = _watches.get(key)
            if watch is None:
                watch = _watches[key] = cls(key)
            return watch

    def start(self) -> TipWatch:
        """Start watching (idempotent); poll the refs where inotify is unavailable."""
        with self._lock:
            if self._observer is None:
                handler = _Handler(self)
                try:
                    self._observer = self._schedule(handler, polling=False)
                except OSError as ex:
                    log.warning("cannot watch %s with inotify (%s); polling", self.repo, ex)
                    self._observer = self._schedule(handler, polling=True)
        return self

    def _schedule(self, handler: _Handler, *, polling: bool) -> BaseObserver:
        observer: BaseObserver = PollingObserver(timeout=0.5) if polling else Observer()
        (self.repo / "refs").mkdir(exist_ok=True)
        # The root (packed-refs lives there) and refs/ recursively; never
        # objects/, whose writes would flood the handler.
        observer.schedule(handler, str(self.repo), recursive=False)
        observer.schedule(handler, str(self.repo / "refs"), recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    def notify(self) -> None:
        """Wake every waiter (called on each ref event, and by local writers)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def wait(
        self,
        done: Callable[[], bool],
        timeout: float,
        *,
        stop: threading.Event | None = None,
    ) -> bool:
        """Wait until ``done()`` is true, the time is up or ``stop`` is set.

        ``done`` is asked once at the start and again after every ref event
        (and every :data:`SAFETY_NET` seconds). Returns its last answer.
        """
        self.start()
        until = time.monotonic() + max(0.0, timeout)
        while True:
            with self._changed:
                seen = self._generation
            if done():
                return True
            remaining = until - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return False
            with self._changed:
                if self._generation == seen:
                    self._changed.wait(min(remaining, SAFETY_NET))

    def stop(self) -> None:
        """Stop watching."""
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5)


def _forget_after_fork() -> None:
    # Observer threads do not survive a fork; a child starts its own watches.
    global _watches_lock
    _watches.clear()
    _watches_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
