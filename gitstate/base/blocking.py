"""Run blocking work (git, flock, files) from asyncio code, in a bounded thread pool.

The web server answers on an event loop; everything it asks of the store,
the queue and storage blocks (libgit2 calls, ``flock``, ``fsync``). Those
calls go to a pool of ``threads`` threads per process, so the number of
requests *working* at once is bounded as before while the number
*waiting* (long polls, ``wait: true`` deploys, slow clients) is not tied
to threads at all. The caller's context (the request id that log lines
carry) goes along into the thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Blocking:
    """Await blocking calls run in a pool of ``threads`` threads.

    Args:
        threads: how many blocking calls may run at once.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gitstate-blocking")

    async def __call__(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function(*args, **kwargs)`` in the pool; return or raise what it does."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Let the pool's threads end once their work is done."""
        self._pool.shutdown(wait=False)
