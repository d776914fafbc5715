"""Slow and waiting clients cost the served product no thread (issue 19).

Each test runs ``gitstate web`` with its smallest pool, one worker process
with one thread, so anything that held a thread while it waited would
block every other request. No test here measures time: each shows an
order of events (another request is answered while the waiters are still
waiting) or that the server ends a connection by itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.helpers import free_port, wait_for_http

TOKEN = "file-sync-secret"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """``gitstate web`` with one worker process of one thread; yields its port."""
    port = free_port()
    config = tmp_path / "gitstate.yaml"
    config.write_text(
        f"datadir: {tmp_path / 'data'}\nlisten: 127.0.0.1:{port}\n"
        "workers: 1\nthreads: 1\nstate:\n  fsync: false\nauth:\n  enabled: false\n"
        f"file_sync:\n  token: {TOKEN}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with (tmp_path / "web.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gitstate", "web", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/internal/health", timeout=60)
            yield port
        finally:
            process.terminate()
            process.wait(30)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=60)


def _nothing_arrived(sock: socket.socket) -> bool:
    """True when the server has sent nothing on ``sock`` yet (and not closed it)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def _request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body and "chunked" not in headers else ""
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}{length}\r\n".encode() + body


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP answer with a Content-Length; return its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the headers: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the end of the body"
        body += chunk
    return int(lines[0].split(b" ", 2)[1]), body


def test_long_polls_and_dribbling_clients_do_not_block_other_requests(server: int) -> None:
    port = server
    base = f"http://127.0.0.1:{port}"
    tip = requests.get(f"{base}/api/watch", timeout=30).json()["commit"]
    commit = requests.get(
        f"{base}/file-sync/v1/latest-commit?timeout=0",
        headers={"X-Authentication": TOKEN},
        timeout=30,
    ).json()["code-commit"]
    waiters = []
    for index in range(10):
        sock = _connect(port)
        if index % 2:
            path = f"/file-sync/v1/latest-commit?known={commit or ''}&timeout=25"
            sock.sendall(_request("GET", path, headers=f"X-Authentication: {TOKEN}\r\n"))
        else:
            sock.sendall(_request("GET", f"/api/watch?since={tip}&timeout=25"))
        waiters.append(sock)
    dribblers = []
    for _ in range(20):
        sock = _connect(port)
        sock.sendall(b"GET /internal/health HTTP/1.1\r\nHost: test\r\nX-Slow: 1\r\n")
        dribblers.append(sock)
    try:
        for _ in range(3):
            health = requests.get(f"{base}/internal/health", timeout=30)
            assert health.status_code == 200 and health.json()["status"] == "ok"
            for sock in dribblers:
                sock.sendall(b"X-Slow: 1\r\n")
        created = requests.post(
            f"{base}/api/gates/grp/svc", json={"environments": ["live"]}, timeout=30
        )
        assert created.status_code == 200, created.text
        # Every waiter is still waiting: the answers above did not queue behind them.
        assert all(_nothing_arrived(sock) for sock in waiters[1::2])
        assert all(_nothing_arrived(sock) for sock in dribblers)
        # The gate's creation moved the state branch: each page watch answers now.
        for sock in waiters[::2]:
            status, body = _read_answer(sock)
            assert status == 200 and json.loads(body)["changed"] is True
    finally:
        for sock in waiters + dribblers:
            sock.close()


def test_headers_that_never_end_lose_their_connection(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /internal/health HTTP/1.1\r\nHost: test\r\n")
        # The server closes it by itself (after its header deadline).
        assert sock.recv(100) == b""


def test_an_idle_connection_is_closed_by_the_server(server: int) -> None:
    with _connect(server) as sock:
        assert sock.recv(100) == b""


@pytest.mark.parametrize(
    ("method", "path", "size", "chunked"),
    [
        ("PUT", "/api/gates", 70 * 1024, False),
        ("PUT", "/api/gates", 300 * 1024, True),
        ("POST", "/code-manager/v1/deploys", 200 * 1024, False),
        ("POST", "/code-manager/v1/webhook?type=github", 1024 * 1024 + 100, False),
        ("POST", "/no/such/route", 200 * 1024, False),
        ("DELETE", "/internal/health", 200 * 1024, False),
    ],
)
def test_a_refused_body_leaves_the_connection_usable(
    server: int, method: str, path: str, size: int, chunked: bool
) -> None:
    payload = b"{" + b" " * size + b"}"
    if chunked:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        request = _request(method, path, body, headers="Transfer-Encoding: chunked\r\n")
    else:
        request = _request(method, path, payload)
    with _connect(server) as sock:
        sock.sendall(request)
        status, answer = _read_answer(sock)
        assert 400 <= status < 500, answer
        assert json.loads(answer)  # a JSON body that says what is wrong
        sock.sendall(_request("GET", "/internal/health"))
        status, answer = _read_answer(sock)
        assert status == 200 and json.loads(answer)["status"] == "ok"


def test_a_body_nobody_reads_leaves_the_connection_usable(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(_request("GET", "/openapi.json", b"z" * (100 * 1024)))
        status, answer = _read_answer(sock)
        assert status == 200 and json.loads(answer)["openapi"].startswith("3.")
        sock.sendall(_request("GET", "/internal/health"))
        assert _read_answer(sock)[0] == 200


def test_a_small_chunked_body_is_read(server: int) -> None:
    payload = b'{"environments": ["live"]}'
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    with _connect(server) as sock:
        sock.sendall(
            _request("POST", "/api/gates/grp/svc", body, headers="Transfer-Encoding: chunked\r\n")
        )
        status, answer = _read_answer(sock)
    assert status == 200, answer
