"""Linearizability under a real gunicorn: 4 workers, 32 concurrent clients.

The clients hammer test-and-set (with and without ``queue=true``), re-send
queued tickets and release what they get. Afterwards every commit of the
state branch is replayed: no commit may show two live ``current`` tickets
in one gate's queue, a current ticket must be the first live one, a live
ticket must be linked from every gate it names, and every ``ok`` answer's
ticket must hold all its gates in the commit named by the answer's ETag.
The replay itself is in ``tests/gate_replay.py``, shared with the soak
harness.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.gate_load import GATE_SETS, SERVICES, create_gates, unheld
from tests.support.gate_replay import labels, replay
from tests.support.helpers import free_port, wait_for_http

CLIENTS = 32
ROUNDS = 12


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
        "auth:\n  enabled: false\n"
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


def test_no_gate_ever_has_two_holders(server) -> None:
    base, state_repo = server
    create_gates(base)
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
    replayed = replay(state_repo, keep_queues=False)
    assert replayed.violations == []
    assert replayed.commits > 1
    holders = replayed.holders
    print(f"{len(oks)} ok answers, {len(holders)} commits")
    assert unheld(replayed, oks) == []
    # Everything was released at the end: every gate is free.
    for service in SERVICES:
        doc = requests.get(f"{base}/api/gates/grp/{service}", timeout=30).json()
        for env in doc["environments"].values():
            assert env["queue"] == [], env
