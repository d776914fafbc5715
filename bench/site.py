"""A gitstate installation as a user runs it, for the end-to-end benchmarks.

:class:`Site` writes the smallest config a user would (datadir, listen, the
control repository, two file-sync clients), so everything else is
``gitstate serve``'s default: gunicorn's workers and threads, two deploy
workers, fsync on, authentication on. One client reads the storage
repository directly (``primary``), the other fetches over HTTP
(``compiler``), as on a compile server. A token is made with ``gitstate
token create``, the way an operator makes one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from ruamel.yaml import YAML

from bench.fixture import GIT_ENV

CM = "/code-manager/v1"
#: The file-sync clients' shared token.
FILE_SYNC_TOKEN = "bench-file-sync-token"


def free_port() -> int:
    """Return a TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    """Stop a ``gitstate serve`` as an operator does: SIGTERM, then SIGKILL after 60 s.

    The SIGKILL goes to its whole process group (it runs in a session of
    its own), so no child outlives it.
    """
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Site:
    """``gitstate serve`` on a control repository, with two file-sync clients.

    Args:
        root: a directory of its own (datadir, live dirs, config, logs).
        control: the control repository (a path).
        extra: config keys to add (for benchmarks of non-default settings).
        python: the interpreter whose ``gitstate`` is run (another install
            of it, such as a previous release, for a comparison in one run;
            ``-P`` keeps a checkout in the working directory from shadowing it).
    """

    def __init__(
        self,
        root: Path,
        control: Path,
        extra: dict[str, Any] | None = None,
        *,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root)
        self.control = Path(control)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.datadir = self.root / "data"
        self.live = {name: self.root / "live" / name for name in ("primary", "compiler")}
        self.config_path = self.root / "gitstate.yaml"
        self.extra = extra or {}
        self.token = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.python = python

    def write_config(self) -> None:
        """Write the config a user would: only what has no default."""
        config = {
            "datadir": str(self.datadir),
            "listen": f"127.0.0.1:{self.port}",
            "sources": {"puppet": {"remote": str(self.control)}},
            # The fixture's Puppetfiles name its module repositories beside it.
            "deploy": {"local_module_sources": [str(self.control.parent / "modules")]},
            "file_sync": {
                "token": FILE_SYNC_TOKEN,
                "clients": [
                    {"name": "primary", "live": str(self.live["primary"])},
                    {"name": "compiler", "live": str(self.live["compiler"]), "storage": self.base},
                ],
            },
            **self.extra,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        yaml = YAML(typ="safe")
        yaml.default_flow_style = False
        with self.config_path.open("w", encoding="utf-8") as stream:
            yaml.dump(config, stream)

    def _env(self) -> dict[str, str]:
        return {**os.environ, **GIT_ENV, "HOME": str(self.root)}

    def start(self, timeout: float = 120.0) -> None:
        """Make a token, start ``gitstate serve`` and wait for the server and both clients."""
        self.write_config()
        made = subprocess.run(
            [
                self.python,
                "-P",
                "-m",
                "gitstate",
                "token",
                "create",
                "--config",
                str(self.config_path),
                "--user",
                "bench",
                "--permission",
                "admin",
            ],
            check=True,
            capture_output=True,
            text=True,
            env=self._env(),
        )
        self.token = made.stdout.strip().splitlines()[-1]
        self.session.headers["X-Authentication"] = self.token
        log = (self.root / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [self.python, "-P", "-m", "gitstate", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )
        until = time.monotonic() + timeout
        while True:
            try:
                status = self.status()
                clients = status["file-sync-client-status"]["file-sync-clients"]
                if all(item["last_check_in_time"] for item in clients.values()):
                    return
            except (requests.RequestException, KeyError, ValueError):
                pass
            if time.monotonic() > until or self.process.poll() is not None:
                raise RuntimeError(f"gitstate serve did not come up; see {log.name}")
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        """Return ``GET deploys/status``."""
        answer = self.session.get(f"{self.base}{CM}/deploys/status", timeout=30)
        answer.raise_for_status()
        return dict(answer.json())

    def deploy(self, body: dict[str, Any], timeout: float = 3600) -> list[dict[str, Any]]:
        """``POST deploys`` and return the answer; raise on an HTTP error."""
        answer = self.session.post(f"{self.base}{CM}/deploys", json=body, timeout=timeout)
        answer.raise_for_status()
        return list(answer.json())

    def live_text(self, client: str, env: str, path: str) -> str | None:
        """Return a file of a live environment as a reader sees it, or None."""
        try:
            return (self.live[client] / "environments" / env / path).read_text()
        except OSError:
            return None

    def stop(self) -> None:
        """Stop the server and everything it started."""
        if self.process is not None:
            stop_serve(self.process)
        self.process = None

    def __enter__(self) -> Site:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
