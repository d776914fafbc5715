"""A node of several gitstate servers: joining the git server, then following it.

With ``state.remote`` (and ``storage.remote``) set, the git server's refs are
the truth and this host's repositories are copies (docs/cluster.md). Writes
bring the copy up to date themselves; the follower keeps it current for
reads and waits in between: it fetches every ``state.refresh_interval``, so
a gate changed on another node is seen here within about a second, and a
wait here wakes on it as on a local commit (the ref moves; the ref watch
sees it).

One follower per node runs as a child of ``gitstate serve``.
"""

from __future__ import annotations

import logging
import threading

from gitstate.config import Config
from gitstate.engine.storage import Storage
from gitstate.errors import GitStateError
from gitstate.services import open_store
from gitstate.store.branch import Store
from gitstate.store.rewind import BranchRewound
from gitstate.store.turns import Turns
from gitstate.store.upstream import SharedUnreachable

log = logging.getLogger(__name__)


class HistoryMismatch(GitStateError):
    """This node's state history is not part of the git server's.

    A datadir that served on its own (or for another cluster) cannot join
    by merging: acknowledged changes on one side would be lost. Move the
    local ``state.git`` aside to join with the shared history, or point an
    empty shared repository at it to make it the cluster's first node.
    """

    def __init__(self, local: str, shared: str, url: str) -> None:
        self.local = local
        self.shared = shared
        self.url = url
        super().__init__(
            f"this node's state branch ({local[:12]}) is not part of the one at {url} "
            f"({shared[:12]}); move DATADIR/state.git aside to join with the shared history"
        )


def join(config: Config) -> None:
    """Make this node's copies a part of the shared repositories, before serving.

    A git server without a state branch yet receives this node's history
    (a single server becoming the first node keeps its audit trail); one
    with a branch is fetched, and this node's copy must be part of it. A
    git server that does not answer is logged and left to the follower:
    the node serves reads from its copy meanwhile.

    Raises:
        HistoryMismatch: the two histories differ.
    """
    store = open_store(config)
    try:
        _join_state(store)
    finally:
        store.close()
    storage = _storage(config)
    if storage is not None:
        try:
            storage.refresh()
        except GitStateError as ex:
            log.warning("storage not brought up to date from the git server: %s", ex)


def _join_state(store: Store) -> None:
    upstream = store.upstream
    if upstream is None:
        return
    local = store.head()
    try:
        found = upstream.fetch()
    except SharedUnreachable as ex:
        log.warning("joining later: %s", ex)
        return
    if not found:
        if local is not None and upstream.push(local, None):
            log.info("the git server at %s now holds this node's state history", upstream.shown_url)
        return
    try:
        store.refresh()
    except BranchRewound as ex:
        raise HistoryMismatch(local or "", ex.found or "", upstream.shown_url) from ex
    if Turns(upstream).clear_leftover():
        log.info("took down the hand this node left up on the git server before it stopped")


def _storage(config: Config) -> Storage | None:
    if not config.storage.remote:
        return None
    return Storage(
        config.datadir / "storage.git",
        remote=config.storage.remote,
        remote_timeout=config.state.remote_timeout,
    )


def follow(config: Config, stop: threading.Event) -> None:
    """Fetch the shared repositories every ``state.refresh_interval`` until ``stop``.

    A git server that does not answer is logged once when it stops and
    once when it answers again (:class:`~gitstate.store.upstream.SharedRef`
    keeps the state for ``/internal/health``); the node goes on serving
    reads from its copy.
    """
    store = open_store(config)
    storage = _storage(config)
    refreshes = [store.refresh] + ([storage.refresh] if storage is not None else [])
    try:
        while not stop.wait(config.state.refresh_interval):
            for refresh in refreshes:
                try:
                    refresh()
                except SharedUnreachable:
                    pass  # said once, by the SharedRef; reads go on meanwhile
                except GitStateError as ex:
                    log.error("not following the git server: %s", ex)
    finally:
        store.close()
