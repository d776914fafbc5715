"""Linearizability under a real gunicorn: 4 workers, 32 concurrent clients.

The clients hammer test-and-set (with and without ``queue=true``), re-send
queued tickets and release what they get. Afterwards every commit of the
state branch is replayed: no commit may show two live ``current`` tickets
in one gate's queue, a current ticket must be the first live one, a live
ticket must be linked from every gate it names, and every ``ok`` answer's
ticket must hold all its gates in the commit named by the answer's ETag.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pygit2
import pytest
import requests

from gitstate.codec import decode
from tests.helpers import free_port, wait_for_http

CLIENTS = 32
ROUNDS = 12
SERVICES = ("a", "b", "c")
GATE_SETS = [
    {"grp": {"a": ["develop"]}},
    {"grp": {"a": ["develop", "live"]}},
    {"grp": {"b": "live"}},
    {"grp": {"a": "live", "b": ["develop", "live"]}},
    {"grp": {"c": ["develop"], "b": "develop"}},
    {"grp": {"c": ["develop", "live"]}},
]


def labels(gates: dict[str, Any]) -> list[str]:
    out = []
    for group, services in gates.items():
        for service, envs in services.items():
            for env in [envs] if isinstance(envs, str) else envs:
                out.append(f"{group}/{service}/{env}")
    return out


@pytest.fixture
def server(tmp_path: Path):
    port = free_port()
    config = tmp_path / "gitstate.yaml"
    config.write_text(
        f"datadir: {tmp_path / 'data'}\n"
        f"listen: 127.0.0.1:{port}\n"
        "workers: 4\n"
        "threads: 2\n"
        "state:\n  fsync: false\n  deadline: 30\n"
        "gates:\n  queued_ticket_lifetime: 10\n"
    )
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitstate", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/internal/health", timeout=60)
        yield base, tmp_path / "data" / "state.git"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def client(base: str, number: int, oks: list, errors: list, lock: threading.Lock) -> None:
    rng = random.Random(number)
    session = requests.Session()
    headers = {"X-Gitstate-Actor": f"client{number}"}

    def tas(gates: dict, ticket: str | None, queue: bool) -> dict:
        body: dict[str, Any] = {"gates": gates}
        if ticket:
            body["ticket"] = ticket
        response = session.put(
            f"{base}/api/gates",
            params={"queue": "true"} if queue else None,
            json=body,
            headers=headers,
            timeout=60,
        )
        if response.status_code != 200:
            with lock:
                errors.append((response.status_code, response.text))
            return {"status": "error"}
        answer = response.json()
        if answer["status"] == "ok":
            with lock:
                oks.append((answer["ticket"]["id"], labels(gates), response.headers["etag"]))
        return answer

    for _round in range(ROUNDS):
        gates = rng.choice(GATE_SETS)
        queue = rng.random() < 0.5
        answer = tas(gates, None, queue)
        ticket = answer.get("ticket", {}).get("id")
        polls = 0
        while answer["status"] == "queued" and polls < 15:
            time.sleep(rng.uniform(0.005, 0.03))
            answer = tas(gates, ticket, True)
            polls += 1
        if answer["status"] == "ok":
            time.sleep(rng.uniform(0, 0.01))
        if ticket:
            response = session.delete(f"{base}/api/tickets/{ticket}", headers=headers, timeout=60)
            if response.status_code != 200:
                with lock:
                    errors.append((response.status_code, response.text))


def replay(state_repo: Path) -> dict[str, dict[str, Any]]:
    """Check every commit; return, per commit id, the holders of every gate."""
    repo = pygit2.Repository(str(state_repo))
    parsed: dict[pygit2.Oid, dict[str, Any]] = {}

    def records(tree: pygit2.Tree, prefix: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if prefix not in tree:
            return out
        stack = [(prefix + "/", repo[tree[prefix].id])]
        while stack:
            where, node = stack.pop()
            for entry in node:
                if entry.type_str == "tree":
                    stack.append((where + entry.name + "/", repo[entry.id]))
                else:
                    if entry.id not in parsed:
                        parsed[entry.id] = decode(repo[entry.id].data, where + entry.name)
                    out[where + entry.name] = parsed[entry.id]
        return out

    holders: dict[str, dict[str, Any]] = {}
    tip = repo.references["refs/heads/state"].target
    commits = 0
    for commit in repo.walk(tip):
        assert len(commit.parents) <= 1, "state history must be linear"
        commits += 1
        when = commit.commit_time
        tickets = {rec["id"]: rec for rec in records(commit.tree, "tickets").values()}

        def alive(ticket_id: str, when: int = when, tickets: dict = tickets) -> bool:
            ticket = tickets.get(ticket_id)
            return ticket is not None and (
                not ticket["expiration_date"] or when < ticket["expiration_date"]
            )

        held: dict[str, Any] = {}
        for doc in records(commit.tree, "gates").values():
            for env, state in doc["environments"].items():
                label = f"{doc['group']}/{doc['name']}/{env}"
                live = [t for t in state["queue"] if alive(t)]
                current = [t for t in live if tickets[t]["status"] == "current"]
                assert len(current) <= 1, f"{commit.id}: {label} held by {current}"
                if current:
                    assert live[0] == current[0], f"{commit.id}: {label} holder not first"
                held[label] = live[0] if live and current else None
                for ticket_id in live:
                    assert label in tickets[ticket_id]["gates"]
        # FIFO is one order: two live tickets sharing gates stand in the same
        # order in each of them, so waiters can never wait for each other.
        rank: dict[tuple[str, str], str] = {}
        for doc in records(commit.tree, "gates").values():
            for env, state in doc["environments"].items():
                live = [t for t in state["queue"] if alive(t)]
                for first_at, first in enumerate(live):
                    for second in live[first_at + 1 :]:
                        label = f"{doc['group']}/{doc['name']}/{env}"
                        assert rank.setdefault((second, first), "") == "", (
                            f"{commit.id}: {first} and {second} in opposite orders at {label}"
                        )
                        rank[(first, second)] = label
        for ticket in tickets.values():
            if alive(ticket["id"]):
                for label in ticket["gates"]:
                    group, service, env = label.split("/")
                    doc = records(commit.tree, "gates").get(f"gates/{group}/{service}.yaml")
                    assert doc is not None and ticket["id"] in doc["environments"][env]["queue"], (
                        f"{commit.id}: ticket {ticket['id']} not linked from {label}"
                    )
        holders[str(commit.id)] = held
    assert commits > 1
    return holders


def test_no_gate_ever_has_two_holders(server) -> None:
    base, state_repo = server
    for service in SERVICES:
        response = requests.post(
            f"{base}/api/gates/grp/{service}",
            json={"environments": ["develop", "live"]},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    oks: list[tuple[str, list[str], str]] = []
    errors: list[tuple[int, str]] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=client, args=(base, n, oks, errors, lock)) for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(oks) >= CLIENTS  # the clients did get work done
    holders = replay(state_repo)
    print(f"{len(oks)} ok answers, {len(holders)} commits")
    for ticket, gate_labels, etag in oks:
        commit = etag.strip('"')
        assert commit in holders, f"ok answer names unknown commit {commit}"
        for label in gate_labels:
            assert holders[commit][label] == ticket, f"{ticket} not holding {label} at {commit}"
    # Everything was released at the end: every gate is free.
    for service in SERVICES:
        doc = requests.get(f"{base}/api/gates/grp/{service}", timeout=30).json()
        for env in doc["environments"].values():
            assert env["queue"] == [], env
