"""Several ``gitstate serve`` nodes sharing one git server, as a site runs them.

:class:`GitServer` is a real ``git daemon`` with pushes enabled, serving
the shared ``state.git`` and ``storage.git``; it can be stopped and started
again on the same port (a git server outage). :class:`Node` is one
``gitstate serve`` with its own datadir and port, pointed at the git server
with ``state.remote`` and ``storage.remote``; it can be killed with
SIGKILL, every process of it at once, and started again. The cluster test
(``tests/system/test_cluster.py``) and the cluster benchmark
(``bench/cluster_bench.py``) both use them; docs/cluster.md describes the
topology.
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

from bench.site import free_port, stop_serve


def _wait(check: Any, timeout: float, what: str) -> None:
    until = time.monotonic() + timeout
    while not check():
        if time.monotonic() > until:
            raise RuntimeError(f"{what} did not come up in {timeout:g}s")
        time.sleep(0.05)


class GitServer:
    """``git daemon`` serving bare repositories under ``root``, pushes allowed.

    Args:
        root: the folder holding the shared repositories.
        names: the repositories to create there (empty, bare).
    """

    def __init__(self, root: Path, names: tuple[str, ...] = ("state.git", "storage.git")) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not (self.root / name).exists():
                subprocess.run(["git", "init", "-q", "--bare", str(self.root / name)], check=True)

    def url(self, name: str) -> str:
        """The ``git://`` URL of one of its repositories."""
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        """Start the daemon (again, on the same port) and wait until it accepts."""
        log = (self.root.parent / "git-daemon.log").open("ab")
        argv = ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack"]
        argv += ["--informative-errors", "--listen=127.0.0.1", f"--port={self.port}"]
        argv += [f"--base-path={self.root}", str(self.root)]
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait(self._accepts, 30, "git daemon")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the daemon: new connections are refused at once.

        The fetches and pushes it is serving finish, as on a git server
        that is shut down; a receive-pack killed mid-update would leave the
        shared ref locked, which is the git server's to repair, not the
        nodes'.
        """
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait()
        self.process = None


class Node:
    """One ``gitstate serve`` of a cluster: its own datadir, port and config.

    Args:
        root: a folder of its own.
        git_server: the shared git server.
        extra: config keys to add or override.
        python: the interpreter whose ``gitstate`` runs.
    """

    def __init__(
        self,
        root: Path,
        git_server: GitServer | None,
        extra: dict[str, Any] | None = None,
        *,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.datadir = self.root / "data"
        self.config_path = self.root / "gitstate.yaml"
        self.python = python
        self.process: subprocess.Popen[bytes] | None = None
        config: dict[str, Any] = {
            "datadir": str(self.datadir),
            "listen": f"127.0.0.1:{self.port}",
        }
        if git_server is not None:
            config["state"] = {"remote": git_server.url("state.git")}
            config["storage"] = {"remote": git_server.url("storage.git")}
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.root.mkdir(parents=True, exist_ok=True)
        yaml = YAML(typ="safe")
        yaml.default_flow_style = False
        with self.config_path.open("w", encoding="utf-8") as stream:
            yaml.dump(config, stream)

    @property
    def state_repo(self) -> Path:
        """This node's copy of the state repository."""
        return self.datadir / "state.git"

    def start(self, timeout: float = 120.0) -> None:
        """Start ``gitstate serve`` and wait for ``/internal/health``."""
        log = (self.root / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [self.python, "-P", "-m", "gitstate", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = self.process
        _wait(lambda: self.healthy() or process.poll() is not None, timeout, f"node {self.root}")
        if process.poll() is not None:
            raise RuntimeError(f"node {self.root} exited; see {log.name}")

    def healthy(self) -> bool:
        """Tell whether ``/internal/health`` answers 200 now."""
        try:
            return requests.get(f"{self.base}/internal/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as a host that dies."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the node as an operator does (SIGTERM, then SIGKILL after 60 s)."""
        if self.process is not None:
            stop_serve(self.process)
        self.process = None
