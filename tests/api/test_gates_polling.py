"""Readable history under polling: waiting clients must not bury the log.

Ten clients wait behind a holder and re-send their tickets every five
seconds for an hour (on an injected clock). A commit per re-send would be
7,200 commits; a queued ticket's expiry is stored with slack and rewritten
only when less than one queued lifetime of it is left, so the hour costs
about one commit per client per slack period, and none of them touch the
gate records whose history people read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gates import ALL_DAY, make_client

GATE = {"g": {"s": "live"}}
CLIENTS = 10
POLL = 5
HOUR = 3600


def simulate_hour(tmp_path: Path, slack_minutes: float) -> tuple[int, int, int]:
    """Return (commits in the hour, commits touching gates/, queued answers)."""
    c = make_client(
        tmp_path,
        {
            "rules": {"live": ALL_DAY},
            "queued_ticket_lifetime": 2,
            "queued_ticket_slack": slack_minutes,
        },
    )
    c.create()
    holder = c.tas(GATE).json["ticket"]["id"]
    start = len(c.services.store.log())
    tickets = [c.tas(GATE, "?queue=true").json["ticket"]["id"] for _ in range(CLIENTS)]
    queued = 0
    for _tick in range(HOUR // POLL):
        c.clock.advance(POLL)
        for ticket in tickets:
            answer = c.tas(GATE, "?queue=true", ticket=ticket).json
            assert answer["status"] == "queued"
            queued += 1
    log = c.services.store.log()
    commits = len(log) - start
    gate_commits = len(c.services.store.history("gates/g/s.yaml")) - 2  # create + holder
    # Every waiter is still alive and in FIFO order behind the holder.
    order = [t["id"] for t in c.env(env="live")["queue"]]
    assert order == [holder, *tickets]
    return commits, gate_commits, queued


def test_an_hour_of_polling_with_the_default_slack(tmp_path: Path) -> None:
    commits, gate_commits, queued = simulate_hour(tmp_path, 5)
    assert queued == CLIENTS * HOUR // POLL  # 7,200 re-sends
    # Ten enqueues, then one rewrite per client every five minutes.
    assert commits <= CLIENTS * (1 + HOUR // 300 + 1)
    assert gate_commits == CLIENTS  # only the enqueues change the gate record
    print(f"default slack: {queued} re-sends -> {commits} commits ({gate_commits} on gates/)")


@pytest.mark.parametrize(("slack", "most"), [(0, CLIENTS * (1 + HOUR // POLL)), (30, 30)])
def test_slack_trades_commits_for_lingering(tmp_path: Path, slack: float, most: int) -> None:
    commits, gate_commits, _queued = simulate_hour(tmp_path, slack)
    assert commits <= most
    assert gate_commits == CLIENTS
    print(f"slack {slack} min: {commits} commits")


def test_an_abandoned_waiter_lapses_within_lifetime_plus_slack(tmp_path: Path) -> None:
    c = make_client(
        tmp_path,
        {"rules": {"live": ALL_DAY}, "queued_ticket_lifetime": 2, "queued_ticket_slack": 5},
    )
    c.create()
    c.tas(GATE)
    waiter = c.tas(GATE, "?queue=true").json["ticket"]
    assert waiter["expiration_date"] == pytest.approx(c.clock() + 7 * 60, abs=1)
    c.clock.advance(7 * 60 - 1)
    assert len(c.env(env="live")["queue"]) == 2
    c.clock.advance(1)
    assert len(c.env(env="live")["queue"]) == 1
    # And a waiter that keeps polling always has at least one lifetime left.
    second = c.tas(GATE, "?queue=true").json["ticket"]["id"]
    for _ in range(200):
        c.clock.advance(7)
        answer = c.tas(GATE, "?queue=true", ticket=second).json
        assert answer["ticket"]["expiration_date"] - c.clock() >= 120
