"""gunicorn's sync worker, freed as soon as its answer is sent.

A sync worker serves one request per connection and then closes it. Since
gunicorn 23 it closes "gracefully": it half-closes and then reads until the
client closes its end too (for up to two seconds), so that request bytes
the app left unread cannot make the kernel answer with a reset that
destroys the response on its way. The worker takes no other request while
it waits, and the wait lasts as long as the client takes to be scheduled,
read the answer and close: under load, a fifth of a worker's time.

Nothing is left unread in the usual case: the web layer reads every
request's body to its end before answering, whether it used the body or
not (``DrainUnreadBodies`` in :mod:`gitstate.web.request`). When the socket
holds no unread byte once the answer is out, a plain close sends a FIN like
the graceful one and there is nothing for a reset to destroy, so
:class:`SyncWorker` closes at once. Anything still unread (bytes sent after
the request, such as a pipelined second one, or a body over the drain
limit) goes through gunicorn's graceful close.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn.workers.sync import SyncWorker as _GunicornSyncWorker

#: gunicorn's ``worker_class`` setting that selects :class:`SyncWorker`.
WORKER_CLASS = f"{__name__}.SyncWorker"


def nothing_unread(sock: socket.socket) -> bool:
    """Tell whether ``sock`` holds no byte the server has not read.

    True also when the client has already closed its end. Only a blocking
    plain socket is examined (what a sync worker hands out); for any other
    the answer is False, leaving the socket to gunicorn's graceful close.
    """
    if type(sock) is not socket.socket or sock.gettimeout() is not None:
        return False
    try:
        peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # nothing has arrived: the request was read to its end
    except OSError:
        return False
    # A byte waiting is unread data (drained by the graceful close); an
    # empty peek is the client's own close.
    return peeked == b""


class SyncWorker(_GunicornSyncWorker):  # type: ignore[misc]
    """A sync worker that closes an answered connection without lingering."""

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> None:
        """Serve one request, then close the connection at once if nothing is unread.

        gunicorn's own close runs afterwards and finds the socket closed.
        """
        super().handle_request(listener, req, client, addr)
        if not self.cfg.is_ssl and nothing_unread(client):
            client.close()
