"""A change counter that wakes both threads and asyncio tasks when it moves.

Watches (inotify threads) call :meth:`Wakeup.notify` when something may have
changed; a waiter notes :attr:`Wakeup.generation`, looks at what it cares
about, and then sleeps until the generation moves on. Deploy workers and
file-sync clients wait in threads (:meth:`Wakeup.wait`); the web server's
waits (``wait: true`` deploys, long polls) are asyncio tasks
(:meth:`Wakeup.wait_async`), so that a waiting request costs a future and
a few hundred bytes, not a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from typing import ClassVar


class Wakeup:
    """A generation number, and everyone waiting for it to change."""

    #: Every live instance, for :meth:`wake_all`.
    _instances: ClassVar[weakref.WeakSet[Wakeup]] = weakref.WeakSet()
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._generation = 0
        self._futures: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        with Wakeup._instances_lock:
            Wakeup._instances.add(self)

    @classmethod
    def wake_all(cls) -> None:
        """Wake every waiter of every instance in this process (the process is stopping).

        Each waiter looks again, sees :data:`gitstate.base.shutdown.stopping`
        and answers, instead of sleeping until its safety net.
        """
        with cls._instances_lock:
            instances = list(cls._instances)
        for wakeup in instances:
            wakeup.notify()

    @property
    def generation(self) -> int:
        """A number that changes on every :meth:`notify`."""
        return self._generation

    def notify(self) -> None:
        """Move the generation on and wake every waiter (from any thread)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
            futures, self._futures = self._futures, set()
        # One call per event loop, not per waiter: each call writes to the
        # loop's wake-up pipe, and a server process may have hundreds waiting.
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for loop, future in futures:
            by_loop.setdefault(loop, []).append(future)
        for loop, waiting in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, waiting)

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the generation is not ``seen`` or ``timeout`` passes; return it."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != seen, max(0.0, timeout))
            return self._generation

    async def wait_async(self, seen: int, timeout: float) -> int:
        """Like :meth:`wait`, without holding a thread: the task sleeps on a future."""
        loop = asyncio.get_running_loop()
        with self._changed:
            if self._generation != seen:
                return self._generation
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            self._futures.add(entry)
        try:
            await asyncio.wait_for(future, max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            with self._changed:
                self._futures.discard(entry)
        return self._generation


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
