"""Run gitstate's processes together and keep them running.

``gitstate serve`` and ``gitstate demo`` start the web server (gunicorn, with
its own worker processes), the deploy workers and the file-sync clients as
child processes of one supervisor. A child that exits unexpectedly is
started again, with a growing delay if it keeps dying; SIGTERM or SIGINT
stops them all (SIGTERM first, SIGKILL after a grace period).

Separate processes rather than threads: a stuck or killed deploy cannot take
the web server with it, libgit2 handles never cross a fork, and each child
can be killed and restarted on its own (the soak harness does exactly that).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gitstate.config import Config
from gitstate.process.console import Console
from gitstate.process.console import configure as configure_console

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Child:
    """One supervised process."""

    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    not_before: float = 0.0
    #: A URL that must answer before the child starts (a remote file-sync
    #: client waits for the server's ``/internal/health``).
    wait_for: str | None = None


#: A child that exits sooner than this after starting counts as crashing.
CRASH_LOOP_SECONDS = 5.0


def gitstate_command(*args: str) -> list[str]:
    """Return the argv that runs a ``gitstate`` subcommand with this Python.

    ``-P`` keeps the working directory off ``sys.path``: run from the root
    of a checkout, ``python -m`` would otherwise import the checkout's
    ``gitstate/`` folder (which has no ``web`` or ``hooks``) instead of the
    installed package.
    """
    return [sys.executable, "-P", "-m", "gitstate", *args]


class Supervisor:
    """Start children, restart the ones that die, stop them all on request.

    Args:
        children: the processes to run.
        grace: seconds between SIGTERM and SIGKILL when stopping.
    """

    def __init__(
        self, children: Sequence[Child], *, grace: float = 15.0, console: Console | None = None
    ) -> None:
        self.children = list(children)
        self.grace = grace
        self.console = console
        self._stop = threading.Event()

    def start(self) -> None:
        """Start every child that waits for nothing; :meth:`poll` starts the others."""
        for child in self.children:
            if child.wait_for is None:
                self._spawn(child)

    def _spawn(self, child: Child) -> None:
        if self.console is None:
            child.process = subprocess.Popen(child.argv)
        else:
            # One pipe for both streams, read into the console.
            child.process = subprocess.Popen(
                child.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert child.process.stdout is not None
            self.console.attach(child.name, child.process.stdout)
        child.started_at = time.monotonic()
        log.info("started %s (pid %s)", child.name, child.process.pid)

    def _may_start(self, child: Child, now: float) -> bool:
        """Tell whether a child that is not running may start now."""
        if now < child.not_before:
            return False
        if child.wait_for is not None and not answers(child.wait_for):
            child.not_before = now + 0.2
            return False
        return True

    def poll(self) -> None:
        """Restart children that exited; back off when one keeps dying."""
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                if self._may_start(child, now):
                    self._spawn(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            lived = now - child.started_at
            # Only a child that dies right after starting is in a crash loop
            # and backs off; one killed after running a while (OOM, an
            # operator, a fault test) comes back at once.
            child.restarts = 0 if lived > CRASH_LOOP_SECONDS else child.restarts + 1
            delay = min(10.0, 0.5 * 2 ** min(child.restarts, 5)) if child.restarts > 1 else 0.2
            log.warning("%s exited with %s; restarting in %.1fs", child.name, code, delay)
            child.process = None
            child.not_before = now + delay

    def stop(self) -> None:
        """Ask the supervisor loop to stop."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop every child: SIGTERM, then SIGKILL after the grace period."""
        running = [
            c.process for c in self.children if c.process is not None and c.process.poll() is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        until = time.monotonic() + self.grace
        for process in running:
            try:
                process.wait(max(0.1, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def run(self, ready: threading.Event | None = None) -> int:
        """Supervise until SIGTERM/SIGINT (or :meth:`stop`); return 0."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            if ready is not None:
                ready.set()
            while not self._stop.wait(0.2):
                self.poll()
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0


def answers(url: str, timeout: float = 1.0) -> bool:
    """Tell whether ``url`` answers 2xx now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return 200 <= answer.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve_children(config_path: str, deploy_workers: int) -> list[Child]:
    """Return the children of ``gitstate serve``: web server, deploy workers, sync clients.

    A node of several servers (``state.remote``) also runs a follower.
    """
    children = [Child("web", gitstate_command("web", "--config", config_path))]
    config = Config.load(config_path)
    if config.state.remote or config.storage.remote:
        children.append(Child("follow", gitstate_command("follow", "--config", config_path)))
    for slot in range(deploy_workers):
        children.append(
            Child(
                f"deploy-worker-{slot}",
                gitstate_command("deploy-worker", "--config", config_path, "--slot", str(slot)),
            )
        )
    return children + sync_children(config_path)


def sync_children(config_path: str) -> list[Child]:
    """Return one ``gitstate sync`` child per client in ``file_sync.clients``.

    A client without ``storage`` reads this server's storage repository
    directly; one with ``storage: http://...`` uses the network transport.
    """
    config = Config.load(config_path)
    children = []
    for client in config.file_sync.clients:
        storage = client.storage or str(config.datadir / "storage.git")
        live = client.live if client.live.is_absolute() else Path(config_path).parent / client.live
        remote = storage.startswith(("http://", "https://"))
        children.append(
            Child(
                f"sync-{client.name}",
                gitstate_command(
                    "sync",
                    "--storage",
                    storage,
                    "--live",
                    str(live),
                    "--name",
                    client.name,
                    "--config",
                    config_path,
                ),
                # Started before the server listens, it would only log a
                # refused connection and retry.
                wait_for=storage.rstrip("/") + "/internal/health" if remote else None,
            )
        )
    return children


def prepare(config: Config, console: Console | None = None) -> None:
    """Make ready what every start of the supervised processes needs.

    The state repository and its pre-receive guard (so pushed audit history
    cannot be rewritten), a fresh shared metrics directory exported to the
    children before any of them starts, and logging (to ``console`` when
    given, as the demo does; else as the config's ``logging`` says).
    """
    from gitstate.base import logs, metrics
    from gitstate.engine.storage import init_storage
    from gitstate.hooks.install import HookExists, install_state_guard
    from gitstate.store.branch import init_repository

    init_repository(config.state_repo)
    if config.state.remote or config.storage.remote:
        from gitstate.process.follower import join

        join(config)
    # Before any local file-sync client looks at it (the first deploy would
    # create it too late for them).
    init_storage(config.datadir / "storage.git")
    try:
        install_state_guard(config.state_repo)
    except HookExists as ex:
        print(f"gitstate: not replacing the state repo's own hook: {ex}", file=sys.stderr)
    directory = metrics.configured_directory(
        config.metrics.enabled, config.metrics.dir, config.datadir
    )
    if directory is not None:
        metrics.prepare_directory(directory)
    if console is None:
        logs.configure(config.logging)
    else:
        configure_console(console, config.logging.level)
