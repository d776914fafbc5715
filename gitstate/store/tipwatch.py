"""Wait for a repository's refs to move, woken by inotify rather than by polling.

Deploy workers wait for work, ``wait: true`` requests wait for their
deploys, the page's long poll waits for any change: all of them wait for
the state branch (or the storage repository) to move. One :class:`TipWatch`
per repository and process watches its refs with inotify and wakes every
waiter on any ref event; each waiter then looks at what it cares about (a
ref read costs microseconds) and waits again if that did not change.

PERF: under gate traffic every wake moves the tip, and the web server's
waiters (``wait: true`` deploys, page watches) used to each take a turn in
the blocking pool per wake just to read it: 50 waiting deploys cost a
third of test-and-set throughput (bench/waiting_bench.py), their looks
queued ahead of the gate requests. :meth:`TipWatch.wait_until_async`
runs one look per wake and key for all of an event loop's waiters, and
wakes them only when that look's answer changed: the deploy waiters, who
look at ``deploys/``, sleep through gate commits.

PERF: the watch asks the kernel only for what moves a ref (a file moved
onto a ref, created, deleted or written; a new directory under
``refs/``), through ``inotify_simple``, one read per burst. It first used
watchdog's observer, whose event pipeline pairs every move with a delayed
queue scanned per event: under gate traffic (hundreds of state commits a
second, each a ``.lock`` moved onto the ref) the two idle deploy workers
spent a third of a core each in it, and test-and-set over HTTP fell from
about 42 % to 17 % of the raw loop (docs/benchmarks.md).

There is no debouncing: a ref update is one event (git and libgit2 move
``<ref>.lock`` onto ``<ref>``; ``*.lock`` events are ignored), and under a
load of thousands of commits a second a debouncer that waits for quiet
would never fire. A waiter also looks again at least every
:data:`SAFETY_NET` seconds, so a lost event (an inotify queue overflow)
costs a delay, never a hang. Where inotify cannot be used watchdog's
polling observer stands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from gitstate.base.blocking import Blocking
from gitstate.base.fswatch import is_ref_event
from gitstate.base.wakeup import Wakeup

try:
    from inotify_simple import INotify, flags
except ImportError:  # not Linux: the polling observer stands in
    INotify = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

#: Longest a waiter sleeps without looking (seconds), in case an event is lost.
SAFETY_NET = 5.0
#: Milliseconds the watch lets events gather after the first of a burst, so
#: a second of gate traffic wakes each waiting process at most ~100 times,
#: not once per commit; a waiter learns of a move at most this much later.
READ_DELAY_MS = 10

T = TypeVar("T")

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
        self._wakeup = Wakeup()
        self._observer: BaseObserver | _RefInotify | None = None
        self._lock = threading.Lock()
        #: Per event loop: what its waiters look at, by key.
        self._interests: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, _Interest[Any]]
        ] = weakref.WeakKeyDictionary()

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
                (self.repo / "refs").mkdir(exist_ok=True)
                try:
                    if INotify is None:
                        raise OSError("inotify_simple is not available on this system")
                    self._observer = _RefInotify(self.repo, self.notify)
                except OSError as ex:
                    log.warning("cannot watch %s with inotify (%s); polling", self.repo, ex)
                    self._observer = self._poll(_Handler(self))
        return self

    def _poll(self, handler: _Handler) -> BaseObserver:
        observer = PollingObserver(timeout=0.5)
        # The root (packed-refs lives there) and refs/ recursively; never
        # objects/, whose writes would flood the handler.
        observer.schedule(handler, str(self.repo), recursive=False)
        observer.schedule(handler, str(self.repo / "refs"), recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    def notify(self) -> None:
        """Wake every waiter (called on each ref event, and by local writers)."""
        self._wakeup.notify()

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
            seen = self._wakeup.generation
            if done():
                return True
            remaining = until - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return False
            self._wakeup.wait(seen, min(remaining, SAFETY_NET))

    async def wait_async(
        self,
        done: Callable[[], Awaitable[bool]],
        timeout: float,
        *,
        stop: threading.Event | None = None,
    ) -> bool:
        """:meth:`wait` for an asyncio task: no thread is held while it sleeps.

        ``done`` is a coroutine function, so a look that reads records can
        run in a thread pool while the event loop goes on.
        """
        self.start()
        until = time.monotonic() + max(0.0, timeout)
        while True:
            seen = self._wakeup.generation
            if await done():
                return True
            remaining = until - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return False
            await self._wakeup.wait_async(seen, min(remaining, SAFETY_NET))

    async def wait_until_async(
        self,
        key: str,
        look: Callable[[], T],
        run: Blocking,
        done: Callable[[T], Awaitable[bool]],
        timeout: float,
        *,
        stop: threading.Event | None = None,
    ) -> bool:
        """Wait until ``done(look())`` is true, woken only when ``look()``'s answer changes.

        The caller looks once itself; after that one task per event loop and
        ``key`` runs ``look`` in ``run``'s pool once per wake and wakes this
        key's waiters only when the answer differs from the last
        (:class:`_Interest`). ``done`` is asked at the start, after each
        change and every :data:`SAFETY_NET` seconds.
        ``key`` names what ``look`` reads (``"head"``, ``"deploys"``): one
        key, one function. Returns ``done``'s last answer.
        """
        interests = self._interests.setdefault(asyncio.get_running_loop(), {})
        interest = interests.get(key)
        if interest is None:
            interest = interests[key] = _Interest(self, look, run)
        until = time.monotonic() + max(0.0, timeout)
        seen = interest.changed.generation
        interest.follow()
        # The first look is the caller's own: the shared answer may be a few
        # milliseconds behind a commit the caller has just made or seen.
        value = await run(look)
        while True:
            if await done(value):
                return True
            remaining = until - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return False
            await interest.changed.wait_async(seen, min(remaining, SAFETY_NET))
            seen = interest.changed.generation
            value = await interest.current()

    def stop(self) -> None:
        """Stop watching."""
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5)


class _Interest(Generic[T]):
    """One look at a repository, kept current for an event loop's waiters by one task.

    The task runs the look once per wake of the watch (in the blocking
    pool) and moves :attr:`changed` on only when the answer differs, so a
    waiter that cares about ``deploys/`` sleeps through gate commits. The
    task starts with the first waiter and, should a look fail, again with
    the next.
    """

    def __init__(self, watch: TipWatch, look: Callable[[], T], run: Blocking) -> None:
        self._watch = watch
        self._look = look
        self._run = run
        #: Moves on whenever :attr:`value` changes.
        self.changed = Wakeup()
        self.value: T | None = None
        self._looked = False
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def follow(self) -> asyncio.Task[None]:
        """Start the task that keeps :attr:`value` current, unless it runs already."""
        task = self._task
        if task is None or task.done():
            if task is not None and not task.cancelled() and task.exception() is not None:
                log.warning("looking at %s failed: %s", self._watch.repo, task.exception())
            self._ready = asyncio.Event()
            task = self._task = asyncio.ensure_future(self._follow())
        return task

    async def current(self) -> T:
        """Return the latest answer (after the task's first look, should it just have started).

        Raises:
            whatever the look raised, when no answer could be had.
        """
        task = self.follow()
        await self._ready.wait()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        return self.value  # type: ignore[return-value]

    async def _follow(self) -> None:
        async def look() -> bool:
            value = await self._run(self._look)
            if value != self.value:
                self.value = value
                # The first answer is news to nobody: every waiter so far is
                # waiting for it to be ready, not for it to change.
                if self._looked:
                    self.changed.notify()
            self._looked = True
            self._ready.set()
            return False  # never done: followed as long as the loop runs

        try:
            await self._watch.wait_async(look, math.inf)
        finally:
            self._ready.set()  # a failed look must not leave a waiter hanging


class _RefInotify:
    """A thread reading inotify events on a repository's refs; calls ``notify`` per burst.

    Watches the repository's root (``packed-refs``, ``reftable``) and every
    directory under ``refs/`` (new ones as they appear), with a mask of
    the events that can move a ref. Events on ``*.lock`` files, and in the
    root on anything but the ref stores, are dropped; a queue overflow
    wakes the waiters too, since what was lost may have been a ref.
    """

    _MASK = flags.MOVED_TO | flags.CREATE | flags.DELETE | flags.CLOSE_WRITE if INotify else 0
    _ROOT_NAMES = frozenset({"packed-refs", "refs", "reftable"})

    def __init__(self, repo: Path, notify: Callable[[], None]) -> None:
        self._notify = notify
        self._inotify = INotify()
        self._root = self._inotify.add_watch(str(repo), self._MASK)
        self._dirs: dict[int, Path] = {}
        self._stopped = threading.Event()
        for directory, _subdirs, _files in os.walk(repo / "refs"):
            self._add(Path(directory))
        self._thread = threading.Thread(target=self._run, name=f"tipwatch {repo}", daemon=True)
        self._thread.start()

    def _add(self, directory: Path) -> None:
        with contextlib.suppress(OSError):  # gone already: its parent's event woke us
            self._dirs[self._inotify.add_watch(str(directory), self._MASK)] = directory

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                events = self._inotify.read(timeout=500, read_delay=READ_DELAY_MS)
            except OSError:  # closed by stop()
                return
            moved = False
            for event in events:
                if event.mask & flags.Q_OVERFLOW:
                    moved = True
                elif event.wd == self._root:
                    moved = moved or event.name in self._ROOT_NAMES
                elif event.name.endswith(".lock"):
                    continue
                else:
                    moved = True
                    if event.mask & flags.ISDIR and event.mask & (flags.CREATE | flags.MOVED_TO):
                        self._add(self._dirs.get(event.wd, Path()) / event.name)
            if moved:
                self._notify()

    def stop(self) -> None:
        """Stop the thread and close the inotify descriptor."""
        self._stopped.set()
        self._thread.join(5)
        self._inotify.close()

    def join(self, timeout: float | None = None) -> None:
        """Nothing left to wait for once :meth:`stop` returned."""


def _forget_after_fork() -> None:
    # Observer threads do not survive a fork; a child starts its own watches.
    global _watches_lock
    _watches.clear()
    _watches_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
