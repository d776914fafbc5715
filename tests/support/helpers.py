"""Small helpers for tests: free ports, the real git CLI, waiting for servers, slow writers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(*args: str, cwd: Path | str | None = None) -> str:
    """Run the real git CLI and return its stdout."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=os.environ.copy()
    )
    return result.stdout


def wait_for_http(url: str, timeout: float = 30.0) -> requests.Response:
    """Poll ``url`` until it answers; raise if it never does within ``timeout``.

    This bounds how long a test waits for a server to boot; it is not an
    assertion about speed.
    """
    until = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < until:
        try:
            return requests.get(url, timeout=2)
        except requests.RequestException as ex:
            last = ex
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s: {last}")


@contextlib.contextmanager
def slow_transaction(store: Any, path: str = "slow.yaml") -> Iterator[None]:
    """Keep a transaction of ``store`` inside its change function while the block runs.

    Another thread starts the transaction; the block runs once its change
    function has been entered, and when the block ends the change writes
    ``path`` and the thread is joined.
    """
    inside, release = threading.Event(), threading.Event()

    def slow(draft: Any) -> None:
        inside.set()
        release.wait(30)
        draft.put(path, {"schema_version": 1})

    holder = threading.Thread(target=lambda: store.transact(slow, subject="slow", operation="x"))
    holder.start()
    try:
        assert inside.wait(30), "the slow change function never ran"
        yield
    finally:
        release.set()
        holder.join(30)


@contextlib.contextmanager
def serve_app(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on loopback ``port`` (a free one); yield its URL.

    For tests that need a real HTTP server in this process (to share its
    :class:`~gitstate.services.Services`); tests of the served product run
    ``gitstate web`` instead.
    """
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/internal/health")
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
