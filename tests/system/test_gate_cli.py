"""``gitstate gate`` and ``gitstate ticket`` as subprocesses against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.helpers import free_port, wait_for_http


class Server:
    """A ``gitstate web`` subprocess on a free port."""

    def __init__(self, root: Path, auth: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "gitstate.yaml"
        self.config.write_text(
            f"datadir: {root / 'data'}\nlisten: 127.0.0.1:{self.port}\n"
            "workers: 1\nthreads: 2\nstate: {fsync: false}\n"
            + ("auth: {enabled: true}\n" if auth else "auth: {enabled: false}\n")
        )
        self.log = (root / "server.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gitstate", "web", "--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(f"{self.url}/internal/health")

    def cli(self, *args: str, token_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``gitstate ARGS --service-url URL [--token-file F]``."""
        extra = ["--service-url", self.url, "--token-file", str(token_file or "/nonexistent")]
        return subprocess.run(
            [sys.executable, "-m", "gitstate", *args, *extra], capture_output=True, text=True
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("gate-cli"))
    yield running
    running.stop()


def _create(server: Server, group: str, service: str, *envs: str) -> None:
    answer = requests.post(
        f"{server.url}/api/gates/{group}/{service}", json={"environments": list(envs)}, timeout=30
    )
    answer.raise_for_status()


def test_close_show_open_and_history(server: Server) -> None:
    _create(server, "shop", "cart", "develop", "live")
    shown = server.cli("gate", "show", "shop/cart/live")
    assert shown.returncode == 0, shown.stderr
    assert "open" in shown.stdout

    closed = server.cli("gate", "close", "shop/cart/live", "-m", "release freeze")
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout.strip() == "shop/cart/live is closed by hand"
    shown = server.cli("gate", "show", "shop/cart/live", "--format", "json")
    assert shown.returncode == 4
    body = json.loads(shown.stdout)
    assert (body["state"], body["message"]) == ("closed", "release freeze")

    service = server.cli("gate", "show", "shop/cart")
    assert service.returncode == 0
    assert "shop/cart/live" in service.stdout and "shop/cart/develop" in service.stdout

    listed = server.cli("gate", "list", "--format", "json")
    assert listed.returncode == 0
    docs = {(doc["group"], doc["name"]): doc for doc in json.loads(listed.stdout)["services"]}
    live = docs[("shop", "cart")]["environments"]["live"]
    assert live["closed_by"] == [{"kind": "manual", "detail": "closed manually"}]
    text = server.cli("gate", "list")
    line = next(row for row in text.stdout.splitlines() if row.startswith("shop/cart/live"))
    assert "closed" in line and "closed manually" in line and "'release freeze'" in line

    opened = server.cli("gate", "open", "shop/cart/live")
    assert opened.returncode == 0
    assert server.cli("gate", "show", "shop/cart/live").returncode == 0

    history = server.cli("gate", "history", "shop/cart/live", "--limit", "2", "--format", "json")
    entries = json.loads(history.stdout)["history"]
    assert [entry["state"] for entry in entries] == ["open", "closed"]
    text = server.cli("gate", "history", "shop/cart/live")
    assert "opens shop/cart/live" in text.stdout.splitlines()[0]


def test_tickets_take_queue_deny_and_release(server: Server) -> None:
    _create(server, "pay", "api", "live")
    _create(server, "pay", "web", "live")
    first = server.cli("ticket", "acquire", "pay/api/live,pay/web/live", "--link", "https://ci/1")
    assert first.returncode == 0, first.stderr
    ticket = first.stdout.strip()
    assert "ok: ticket" in first.stderr
    assert server.cli("gate", "show", "pay/api/live").returncode == 4

    denied = server.cli("ticket", "acquire", "pay/api/live")
    assert denied.returncode == 4
    assert denied.stdout == ""
    assert "denied" in denied.stderr

    queued = server.cli("ticket", "acquire", "pay/api/live", "--queue", "--format", "json")
    assert queued.returncode == 5
    waiting = json.loads(queued.stdout)["ticket"]["id"]
    again = server.cli("ticket", "acquire", "pay/api/live", "--queue", "--ticket", waiting)
    assert again.returncode == 5
    assert again.stdout.strip() == waiting

    released = server.cli("ticket", "release", ticket)
    assert released.returncode == 0
    assert released.stdout.strip() == f"released ticket {ticket}"
    promoted = server.cli("ticket", "acquire", "pay/api/live", "--queue", "--ticket", waiting)
    assert promoted.returncode == 0
    assert server.cli("ticket", "release", waiting, "--format", "json").stdout.strip() == (
        json.dumps({"status": "ok"}, indent=2)
    )
    assert server.cli("gate", "show", "pay/web/live").returncode == 0

    server.cli("gate", "close", "pay/web/live")
    closed = server.cli("ticket", "acquire", "pay/web/live", "--queue")
    assert closed.returncode == 4


@pytest.mark.parametrize(
    "args",
    [
        ("gate", "show", "shop"),
        ("gate", "close", "shop/cart"),
        ("gate", "history", "a/b/c/d"),
        ("ticket", "acquire", "shop/cart/live,oops"),
        ("gate", "open", "shop//live"),
    ],
)
def test_malformed_gate_names_are_usage_errors(server: Server, args: tuple[str, ...]) -> None:
    done = server.cli(*args)
    assert done.returncode == 2
    assert "GROUP/SERVICE" in done.stderr


def test_server_errors_exit_1_with_the_reason(server: Server) -> None:
    missing = server.cli("gate", "show", "nope/nothing/live")
    assert missing.returncode == 1
    assert "404 Service or Group not found" in missing.stderr
    unknown = server.cli("ticket", "acquire", "nope/nothing/live")
    assert unknown.returncode == 1
    stale = server.cli("ticket", "acquire", "shop/cart/live", "--ticket", "gone")
    assert stale.returncode == 1
    assert "Ticket does not exist" in stale.stderr


def test_tokens_are_sent_from_the_token_file(tmp_path: Path) -> None:
    server = Server(tmp_path / "auth", auth=True)
    try:
        token_file = tmp_path / "token"
        made = subprocess.run(
            [
                *(sys.executable, "-m", "gitstate", "token", "create", "--user", "ci"),
                *("--permission", "gates:shop", "--out", str(token_file)),
                *("--config", str(server.config)),
            ],
            capture_output=True,
            text=True,
        )
        assert made.returncode == 0, made.stderr
        created = requests.post(
            f"{server.url}/api/gates/shop/cart",
            json={"environments": ["live"]},
            headers={"X-Authentication": token_file.read_text().strip()},
            timeout=30,
        )
        assert created.status_code == 200
        refused = server.cli("gate", "close", "shop/cart/live")
        assert refused.returncode == 1
        assert "no token sent:" in refused.stderr  # the server's 401, explained
        assert "gitstate token create" in refused.stderr
        done = server.cli("gate", "close", "shop/cart/live", token_file=token_file)
        assert done.returncode == 0, done.stderr
        history = server.cli("gate", "history", "shop/cart/live", "--format", "json")
        assert json.loads(history.stdout)["history"][0]["actor"] == "ci"
    finally:
        server.stop()
