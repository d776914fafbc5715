"""Waiting for the state branch to move: the long poll behind the web page.

Reading the branch tip is one ref lookup (microseconds), so a waiter simply
looks again every :data:`INTERVAL` seconds until the tip differs from the
commit it last saw or its time is up. Nothing is written and no thread or
file watcher is kept between calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gitstate.base.shutdown import stopping

#: Seconds between two looks at the branch tip.
INTERVAL = 0.1
#: Longest wait a caller may ask for, in seconds.
MAX_WAIT = 25.0


def wait_for_change(
    head: Callable[[], str | None],
    since: str | None,
    timeout: float = MAX_WAIT,
    *,
    interval: float = INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Return the branch tip as soon as it is not ``since``, or when time is up.

    Args:
        head: returns the current tip (for example ``Gates.head``).
        since: the tip the caller last saw; None or empty returns at once.
        timeout: seconds to wait at most (capped at :data:`MAX_WAIT`).
        interval: seconds between looks.
        clock: a monotonic clock; tests replace it.
        sleep: waits between looks; tests replace it.

    Returns:
        The tip when the call returns: different from ``since`` unless the
        time ran out.
    """
    tip = head()
    if not since:
        return tip
    until = clock() + max(0.0, min(timeout, MAX_WAIT))
    while tip == since and clock() < until and not stopping.is_set():
        sleep(interval)
        tip = head()
    return tip
