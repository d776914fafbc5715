"""The sync worker lets go of a connection as soon as its answer is out.

gunicorn's own sync worker keeps reading an answered connection until the
client closes it, and serves nobody meanwhile. gitstate's closes at once
when nothing is left unread (the web layer reads every body to its end),
and keeps gunicorn's graceful close when something is, so that no answer is
lost to a reset.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitstate.process.sync_worker import nothing_unread
from tests.support.helpers import free_port, wait_for_http


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: (client end, server end as a sync worker holds it)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        server.setblocking(True)
    yield client, server
    client.close()
    server.close()


def test_a_request_read_to_its_end_leaves_nothing_unread(connection) -> None:
    client, server = connection
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert server.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
    assert nothing_unread(server)


def test_bytes_not_yet_read_are_noticed_and_left_in_place(connection) -> None:
    client, server = connection
    client.sendall(b"more")
    server.settimeout(None)
    _wait_readable(server)
    assert not nothing_unread(server)
    assert server.recv(100) == b"more"  # the peek consumed nothing


def test_a_client_that_closed_its_end_leaves_nothing_unread(connection) -> None:
    client, server = connection
    client.shutdown(socket.SHUT_WR)
    _wait_readable(server)
    assert nothing_unread(server)


def test_a_socket_with_a_timeout_is_left_to_gunicorn(connection) -> None:
    _client, server = connection
    server.settimeout(5)
    assert not nothing_unread(server)


@pytest.fixture
def sync_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``gitstate web`` with one sync worker (one thread); yields its port and pid."""
    port = free_port()
    config = tmp_path / "gitstate.yaml"
    config.write_text(
        f"datadir: {tmp_path / 'data'}\nlisten: 127.0.0.1:{port}\n"
        "workers: 1\nthreads: 1\nstate:\n  fsync: false\nauth:\n  enabled: false\n"
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
            yield port, process.pid
        finally:
            process.terminate()
            process.wait(30)


def test_the_worker_lets_go_of_an_answered_connection_at_once(sync_server) -> None:
    """Once the client sees the answer end, no worker holds the connection any more.

    gunicorn's lingering close sends the end too but keeps the socket open,
    reading, for up to two seconds, and serves nobody else meanwhile.
    """
    port, master = sync_server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /internal/health HTTP/1.1\r\nHost: test\r\n\r\n")
        status, body = _read_answer(sock)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert sock.recv(100) == b""  # the server's end of the stream
        inode = _server_side_inode(port, sock.getsockname()[1])
        holders = [pid for pid in _children(master) if inode in _socket_inodes(pid)]
        assert holders == []


def test_an_answer_is_not_lost_when_bytes_follow_the_request(sync_server) -> None:
    """Bytes after the request (a pipelined one, garbage) keep gunicorn's graceful close.

    Closing a socket with unread bytes makes the kernel reset the connection
    and throw away what it has not sent yet. The client here takes the
    answer in small pieces, so most of it is still unsent when the worker
    is done; it must arrive whole all the same.
    """
    port, _master = sync_server
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    with sock:
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: test\r\n\r\n" + b"z" * 60_000)
        status, answer = _read_answer(sock)
    assert status == 200
    assert len(answer) > 50_000 and json.loads(answer)["openapi"].startswith("3.")


def _children(pid: int) -> list[int]:
    """Return the pids of ``pid``'s child processes (gunicorn's workers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _socket_inodes(pid: int) -> set[int]:
    """Return the inodes of the sockets process ``pid`` has open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _server_side_inode(server_port: int, client_port: int) -> int:
    """Return the inode of the server's socket of one loopback connection (/proc/net/tcp)."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[9])
    raise AssertionError("the server's end of the connection is not in /proc/net/tcp")


def _wait_readable(sock: socket.socket) -> None:
    readable, _, _ = select.select([sock], [], [], 30)
    assert readable, "nothing arrived on the socket"


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
