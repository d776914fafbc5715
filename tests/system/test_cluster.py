"""Three gitstate servers sharing one git server (issue 22), with real processes.

A real ``git daemon`` (pushes enabled) holds the shared ``state.git`` and
``storage.git``; three ``gitstate serve`` nodes, each with its own datadir,
point at it with ``state.remote`` and ``storage.remote``.

* 32 test-and-set clients spread over the nodes while one node is killed
  with SIGKILL (every process of it) and started again, and the git server
  is stopped for ten seconds. Meanwhile writes answer 503 with a JSON body
  and reads go on. Replaying the git server's history afterwards: no gate
  ever had two holders, and every ``ok`` answer's commit is there.
* 200 deploys asked of the three nodes in turn, run by the deploy workers
  of all three: each started once and finished once, never two of one
  environment at a time, and every one published to the shared storage.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pygit2
import pytest
import requests

from bench.fixture import change_branch, environment_names, make_fixture
from bench.nodes import GitServer, Node
from gitstate.deploys.audit import replay_deploys, unfinished
from gitstate.store.branch import parse_trailers
from gitstate.store.turns import WAITING
from tests.support.gate_load import GATE_SETS, SERVICES, create_gates, unheld
from tests.support.gate_replay import labels, replay

#: Small nodes: three of them share two cores with the clients.
NODE = {
    "workers": 2,
    "threads": 4,
    "state": {"fsync": False, "deadline": 30},
    "auth": {"enabled": False},
    "gates": {"queued_ticket_lifetime": 10},
}


def _start_cluster(tmp_path: Path, extra: dict[str, Any]) -> tuple[GitServer, list[Node]]:
    server = GitServer(tmp_path / "git")
    server.start()
    nodes = [Node(tmp_path / f"node{i}", server, {**NODE, **extra}) for i in range(3)]
    for node in nodes:
        node.start()
    return server, nodes


def _stop_cluster(server: GitServer, nodes: list[Node]) -> None:
    for node in nodes:
        node.stop()
    server.stop()


@pytest.fixture
def gate_cluster(tmp_path: Path):
    server, nodes = _start_cluster(tmp_path, {"deploy": {"pool_size": 0}})
    try:
        yield server, nodes
    finally:
        _stop_cluster(server, nodes)


class Load:
    """What the test-and-set clients saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.oks: list[tuple[str, list[str], str]] = []
        self.errors: list[tuple[int, str]] = []
        self.unavailable = 0
        #: Tickets named in an answer a client got.
        self.answered: set[str] = set()
        #: Requests whose answer was lost (a node killed under them): what
        #: they did is on the git server, but no client knows their ticket.
        self.lost = 0
        self.stop = threading.Event()


def _failure(response: requests.Response | None) -> tuple[int, str]:
    if response is None:
        return 0, "no node answered in 200 tries"
    return response.status_code, response.text


def _client(nodes: list[Node], number: int, load: Load) -> None:
    """Test-and-set, re-send queued tickets, release; move on when a node is down."""
    rng = random.Random(number)
    session = requests.Session()
    headers = {"X-Gitstate-Actor": f"client{number}"}
    at = number % len(nodes)

    def call(method: str, path: str, **kwargs: Any) -> requests.Response | None:
        nonlocal at
        for _ in range(200):
            base = nodes[at].base
            try:
                response = session.request(
                    method, base + path, headers=headers, timeout=60, **kwargs
                )
            except requests.ConnectionError as ex:
                if "Connection refused" not in str(ex):
                    with load.lock:
                        load.lost += 1  # sent, and the node died before answering
                at = (at + 1) % len(nodes)  # that node is down: another one
                time.sleep(0.05)
                continue
            if response.status_code == 503:
                assert response.headers["content-type"].startswith("application/json")
                with load.lock:
                    load.unavailable += 1
                time.sleep(0.2)
                continue
            return response
        return None

    def tas(gates: dict, ticket: str | None, queue: bool) -> dict:
        body: dict[str, Any] = {"gates": gates}
        if ticket:
            body["ticket"] = ticket
        response = call("PUT", "/api/gates", params={"queue": "true"} if queue else None, json=body)
        if response is None or response.status_code != 200:
            with load.lock:
                load.errors.append(_failure(response))
            return {"status": "error"}
        answer = response.json()
        if "ticket" in answer:
            with load.lock:
                load.answered.add(answer["ticket"]["id"])
        if answer["status"] == "ok":
            with load.lock:
                load.oks.append((answer["ticket"]["id"], labels(gates), response.headers["etag"]))
        return answer

    while not load.stop.is_set():
        at = rng.randrange(len(nodes))  # each round on any node, a restarted one too
        gates = rng.choice(GATE_SETS)
        answer = tas(gates, None, rng.random() < 0.5)
        ticket = answer.get("ticket", {}).get("id")
        polls = 0
        while answer["status"] == "queued" and polls < 15:
            time.sleep(rng.uniform(0.01, 0.05))
            answer = tas(gates, ticket, True)
            polls += 1
        if ticket:
            response = call("DELETE", f"/api/tickets/{ticket}")
            if response is None or response.status_code != 200:
                with load.lock:
                    load.errors.append(_failure(response))


def _during_outage(nodes: list[Node]) -> dict[str, Any]:
    """What a node answers while the git server is down: reads, a write, its health."""
    node = nodes[0]
    seen: dict[str, Any] = {}
    until = time.monotonic() + 8
    while time.monotonic() < until:
        health = requests.get(f"{node.base}/internal/health", timeout=10)
        if health.json().get("status") == "read-only":
            seen["health"] = (health.status_code, health.json())
            break
        time.sleep(0.2)
    seen["read"] = requests.get(f"{node.base}/api/gates/grp/a", timeout=10).status_code
    write = requests.put(f"{node.base}/api/gates/grp/a/develop", json={"state": "open"}, timeout=30)
    seen["write"] = (write.status_code, write.json())
    return seen


def test_gates_hold_across_nodes_a_killed_node_and_a_git_server_outage(gate_cluster) -> None:
    server, nodes = gate_cluster
    create_gates(nodes[0].base)
    load = Load()
    threads = [threading.Thread(target=_client, args=(nodes, n, load)) for n in range(32)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        nodes[1].kill()  # mid-load, every process of it at once
        time.sleep(1)
        nodes[1].start()
        time.sleep(2)
        server.stop()
        stopped = time.monotonic()
        outage = _during_outage(nodes)
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
        server.start()
        time.sleep(4)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join()

    assert load.errors == []
    assert len(load.oks) >= 12  # the clients did get work done
    # The git server was down: the write was refused with a reason, the
    # read answered from the node's copy, and health said so.
    assert outage["read"] == 200
    assert outage["write"][0] == 503
    assert "git server" in outage["write"][1]["reason"]
    assert outage["health"][0] == 200
    assert outage["health"][1]["status"] == "read-only"
    assert load.unavailable > 0

    replayed = replay(server.root / "state.git", keep_queues=False)
    assert replayed.violations == []
    assert unheld(replayed, load.oks) == []
    # Every node wrote some of it.
    repo = pygit2.Repository(str(server.root / "state.git"))
    writers = {
        parse_trailers(commit.message).get("Node")
        for commit in repo.walk(repo.lookup_reference("refs/heads/state").target)
    }
    assert len(writers - {None}) == 3
    # Every ticket a client was told of was released, and every node reads
    # it so within a second or two. A ticket still there was taken by a
    # request whose answer died with the killed node: it is one of those.
    time.sleep(2.5)
    for node in nodes:
        left: set[str] = set()
        for service in SERVICES:
            doc = requests.get(f"{node.base}/api/gates/grp/{service}", timeout=30).json()
            for env in doc["environments"].values():
                left.update(entry["id"] for entry in env["queue"])
        assert not left & load.answered, (node.base, left & load.answered)
        assert len(left) <= load.lost, (node.base, left, load.lost)
    # No node is left asking the others to give way: each hand raised under
    # the load went down with its batch, and the killed node took down any
    # it left up when it joined again.
    # A hand whose batch ended in the outage goes down once the git server
    # answers again (its node retries every second).
    hands = ["git", "for-each-ref", "--format=%(refname)", WAITING]
    until = time.monotonic() + 30
    while True:
        up = subprocess.run(hands, cwd=server.root / "state.git", capture_output=True, text=True)
        if not up.stdout.split() or time.monotonic() > until:
            break
        time.sleep(0.2)
    assert up.stdout.split() == []


@pytest.fixture
def deploy_cluster(tmp_path: Path):
    fixture = make_fixture(tmp_path / "fixture", envs=8, modules=2, files_per_module=3)
    control = fixture / "control.git"
    extra = {
        "sources": {"puppet": {"remote": str(control)}},
        "deploy": {"local_module_sources": [str(fixture / "modules")], "pool_size": 2},
    }
    server, nodes = _start_cluster(tmp_path, extra)
    try:
        yield fixture, server, nodes
    finally:
        _stop_cluster(server, nodes)


def test_two_hundred_deploys_over_three_nodes_each_run_once(deploy_cluster) -> None:
    fixture, server, nodes = deploy_cluster
    envs = environment_names(8)
    asked = 0
    for serial in range(25):
        for env in envs:
            if serial % 5 == 0:
                change_branch(fixture, env, serial)
            node = nodes[asked % 3]
            response = requests.post(
                f"{node.base}/code-manager/v1/deploys", json={"environments": [env]}, timeout=60
            )
            assert response.status_code == 200, response.text
            asked += 1
    assert asked == 200
    until = time.monotonic() + 600
    while time.monotonic() < until:
        replayed = replay_deploys(server.root / "state.git")
        if replayed.deploys and not unfinished(replayed):
            break
        time.sleep(1)
    assert replayed.violations == []
    assert unfinished(replayed) == []
    # Each deploy ran exactly once, whichever node's worker took it, and
    # workers of more than one node took some.
    assert replayed.deploys == 200
    assert all(count == 1 for count in replayed.starts.values())
    assert all(replayed.finishes[deploy_id] == 1 for deploy_id in replayed.final)
    assert set(replayed.final.values()) == {"complete"}
    repo = pygit2.Repository(str(server.root / "state.git"))
    operations = [
        parse_trailers(commit.message).get("Operation")
        for commit in repo.walk(repo.lookup_reference("refs/heads/state").target)
    ]
    # No worker took another node's running deploy for an orphan. (A worker
    # may give back the part of a batch it has not started, by design; that
    # deploy then starts once more, as a new attempt.)
    assert "deploy.recover" not in operations
    starters = {
        parse_trailers(commit.message).get("Node")
        for commit in repo.walk(repo.lookup_reference("refs/heads/state").target)
        if parse_trailers(commit.message).get("Operation") == "deploy.start"
    }
    assert len(starters) >= 2
    # Every environment is published in the shared storage, at its branch's tip.
    storage = pygit2.Repository(str(server.root / "storage.git"))
    tree = storage.lookup_reference("refs/heads/code").peel(pygit2.Commit).tree
    control = pygit2.Repository(str(fixture / "control.git"))
    for env in envs:
        assert f"refs/environments/{env}" in storage.references
        deployed = tree[f"environments/{env}/.r10k-deploy.json"].data.decode()
        assert str(control.lookup_reference(f"refs/heads/{env}").target) in deployed
