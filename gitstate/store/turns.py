"""Taking turns at the git server: a node that keeps losing says so, the others give way.

Nodes of several servers race to push the shared branch (docs/cluster.md).
The race is not even: a node whose push just landed builds its next batch
on a copy that is already current and pushes again at once, while a node
whose push was refused must first fetch (12 ms against ``git daemon`` on
loopback). Under steady load the last winner so keeps winning: in
``bench/cluster_bench.py`` with three nodes one node's batch was refused 69
times in a row over ten seconds and its writers, and every writer queued
behind them on that node, were answered 503.

So a batch refused twice *raises its hand*: it pushes a ref
``refs/gitstate/waiting/<node>`` to the git server, pointing at a commit
the server already has (no objects to send), and deletes it once the batch
is done, landed or not. Every fetch of the state branch brings those refs
along (:data:`WAITING_TRACKING`), so within a second each node knows who
waits. A node that pushed while another waits *gives way*: instead of
pushing again it fetches every few milliseconds until every raised hand
is down, for at most :data:`GIVE_WAY` seconds
(``PushQueue._give_way``). A fixed pause would have to guess how long the
other node takes to fetch and push, which on a loaded host is longer than
on a quiet one. A hand raised by a node that then died is
ignored :data:`FORGOTTEN_AFTER` seconds after this process first saw it.

Only the git server's own refs are used: no protocol of our own, and a
node that does not know the convention merely never gives way.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import pygit2

from gitstate.store.upstream import SharedRef, SharedUnreachable

log = logging.getLogger(__name__)

#: Where, on the git server, a node that keeps losing says so.
WAITING = "refs/gitstate/waiting/"
#: Where a node keeps the waiting refs it fetched.
WAITING_TRACKING = "refs/gitstate/shared-waiting/"
#: Longest a node that just pushed holds its next push back while another waits (s).
GIVE_WAY = 0.5
#: How often a node giving way fetches, to see the hands go down (s).
FETCH_EVERY = 0.01
#: Refusals in a row after which a batch raises its hand.
RAISE_AFTER = 2
#: Seconds after which a raised hand that was never lowered no longer counts.
FORGOTTEN_AFTER = 30.0
#: Seconds between two tries to tell the git server, while it does not answer.
RETRY_EVERY = 1.0

#: What the git server holds after a push that failed: it may have taken it.
_UNKNOWN = object()


def waiting_refspec() -> str:
    """The refspec that fetches every node's raised hand along with the branch."""
    return f"+{WAITING}*:{WAITING_TRACKING}*"


class Turns:
    """This node's hand, and what it knows of the others'.

    Args:
        shared: the state branch's :class:`SharedRef` (its URL, node name, git).
    """

    def __init__(self, shared: SharedRef) -> None:
        self._shared = shared
        self.mine = re.sub(r"[^A-Za-z0-9_-]", "_", shared.node)
        self._changed = threading.Condition()
        #: The commit the hand should point at on the git server; None: down.
        self._wanted: str | None = None
        #: What the git server holds, as far as this process knows: None (no
        #: hand; a node joining takes down any left over), a commit, or
        #: :data:`_UNKNOWN` after a push that failed.
        self._told: object = None
        self._teller: threading.Thread | None = None
        #: Waiting refs of other nodes -> when this process first saw them.
        self._seen: dict[str, float] = {}

    def raise_hand(self, commit: str) -> None:
        """Tell the other nodes this one keeps losing (in the background)."""
        with self._changed:
            if self._wanted is None:
                self._wanted = commit
                self._wake_teller()

    def lower_hand(self) -> None:
        """Take the hand down again, if it was raised (in the background)."""
        with self._changed:
            if self._wanted is not None:
                self._wanted = None
                self._wake_teller()

    def _wake_teller(self) -> None:
        # PERF: a push is a round trip (60 ms to git daemon) that a losing
        # batch would otherwise spend before it fetches and tries again,
        # while its turn passes. So one thread brings the git server to what
        # is wanted, and keeps trying while it cannot: a hand left up by a
        # push lost in an outage would make every other node give way to
        # this one until they forgot it (found by the three-node proof).
        self._changed.notify_all()
        if self._teller is None or not self._teller.is_alive():
            self._teller = threading.Thread(target=self._tell, name="turns", daemon=True)
            self._teller.start()

    def _tell(self) -> None:
        while True:
            with self._changed:
                wanted = self._wanted
                if wanted == self._told:
                    self._teller = None
                    return
            refspec = f"+{wanted}:{WAITING}{self.mine}" if wanted else f":{WAITING}{self.mine}"
            try:  # a hint to the others, never a write's failure
                told = self._shared.push_own(refspec)
            except SharedUnreachable as ex:
                log.debug("could not push %s: %s", refspec, ex)
                told = False
            with self._changed:
                if told:
                    self._told = wanted
                else:
                    self._told = _UNKNOWN  # it may have landed: take it down later
                    self._changed.wait(RETRY_EVERY)

    def clear_leftover(self) -> bool:
        """Take down a hand of this node's that the git server still shows; tell if there was one.

        For a node starting up: no batch of it runs yet, so a hand up is one
        that a process killed mid-batch left behind. Call after a fetch.
        """
        repo = pygit2.Repository(str(self._shared.repo_path))
        try:
            if WAITING_TRACKING + self.mine not in repo.references:
                return False
        finally:
            repo.free()
        try:
            return self._shared.push_own(f":{WAITING}{self.mine}")
        except SharedUnreachable as ex:
            log.warning("a hand this node left up stays up (others ignore it in time): %s", ex)
            return False

    def others_waiting(self, repo: pygit2.Repository) -> bool:
        """Tell whether another node's hand is up, as the last fetch here saw it."""
        now = time.monotonic()
        up = {
            name
            for name in repo.references
            if name.startswith(WAITING_TRACKING) and not name.endswith("/" + self.mine)
        }
        self._seen = {name: self._seen.get(name, now) for name in up}
        return any(now - first < FORGOTTEN_AFTER for first in self._seen.values())
