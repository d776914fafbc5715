"""Small helpers for tests: free ports, the real git CLI, waiting for servers."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

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
