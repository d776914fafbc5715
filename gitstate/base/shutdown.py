"""A process-wide "we are stopping" flag for requests that wait on purpose.

Long polls (the web page's ``/api/watch``, the file-sync clients'
latest-commit) hold a request open for up to tens of seconds. gunicorn's
graceful stop waits for open requests, so without this a stop waited for
every poll to time out. The web server sets :data:`stopping` when a worker
is told to exit (:func:`stop`), which also wakes every wait, so waiting
loops see it and answer at once.
"""

from __future__ import annotations

import threading

from gitstate.base.wakeup import Wakeup

#: Set when this process has been asked to stop.
stopping = threading.Event()


def stop() -> None:
    """Mark this process as stopping and wake every wait in it, so each answers now."""
    stopping.set()
    Wakeup.wake_all()
