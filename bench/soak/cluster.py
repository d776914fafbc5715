"""The system under test: fixture, config, tokens, ``gitstate serve`` and its processes.

:class:`Cluster` builds a temporary installation the way ``gitstate demo``
does (sources, deploy workers, authentication, two file-sync clients, one
reading storage directly and one over HTTP), on the shared benchmark fixture
(``bench/fixture.py``) plus a few hostile control
branches, starts ``gitstate serve`` and finds its child processes in
``/proc`` so faults can be aimed at them.
"""

from __future__ import annotations

import dataclasses
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

from bench.fixture import make_fixture
from gitstate.auth import Tokens
from gitstate.hooks.install import install_post_receive, install_state_guard
from gitstate.store.branch import Store, init_repository

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "soak",
    "GIT_AUTHOR_EMAIL": "soak@example.invalid",
    "GIT_COMMITTER_NAME": "soak",
    "GIT_COMMITTER_EMAIL": "soak@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
#: The gate services the load works on: group ``soak``, these services, two envs each.
GATE_GROUP = "soak"
GATE_SERVICES = ("s0", "s1", "s2", "s3")
GATE_ENVS = ("develop", "live")
#: Control branches that must fail to deploy, and what each one carries.
HOSTILE_BRANCHES = {
    "hostile_ext": "a Puppetfile module with an ext:: URL",
    "hostile_path": "a Puppetfile install_path outside the environment",
    "hostile_link": "a symlink escaping the environment",
    "hostile_chain": "a symlink escaping through another symlink",
    "hostile_state": "a Puppetfile module fetched from DATADIR/state.git",
    # 250 characters: no client could write it (.<env>.swap-<pid> > 255 bytes).
    "hostile_long_" + "l" * 237: "a branch name no directory takes",
}
#: Where hostile_chain's inner link sits; it points back to the environment's root.
CHAIN_DIRS = "a/b/c/d/e/f/g/h/i/j"


def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the git CLI; return the finished process (text output)."""
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=check, capture_output=True, text=True
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class SoakTokens:
    """The tokens the harness uses (secrets, never printed)."""

    admin: str
    pipeline: str  # gates:soak
    deployer: str  # deploy:*
    viewer: str  # no permissions
    expired: str


def _children() -> dict[int, list[int]]:
    """Return parent pid → child pids for every process in /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stream:
                stat = stream.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return [part.decode(errors="replace") for part in stream.read().split(b"\0") if part]
    except OSError:
        return []


class Cluster:
    """A temporary gitstate installation, started and stopped as a whole.

    Args:
        root: an empty directory to build everything in.
        envs: environments of the fixture's control repository.
        modules: module repositories of the fixture.
        workers: gunicorn worker processes.
        threads: threads per gunicorn worker.
        deploy_workers: deploy worker processes.
    """

    def __init__(
        self,
        root: Path,
        *,
        envs: int,
        modules: int,
        workers: int = 4,
        threads: int = 4,
        deploy_workers: int = 2,
    ) -> None:
        self.root = root
        self.envs = envs
        self.modules = modules
        self.workers = workers
        self.threads = threads
        self.deploy_workers = deploy_workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.datadir = root / "data"
        self.state_repo = self.datadir / "state.git"
        self.storage_repo = self.datadir / "storage.git"
        self.fixture = root / "fixture"
        self.control = self.fixture / "control.git"
        self.live = {"primary": root / "live" / "primary", "compiler": root / "live" / "compiler"}
        self.config_path = root / "gitstate.yaml"
        self.token_file = root / "admin-token"
        self.ext_marker = root / "ext-ran"
        self.process: subprocess.Popen[bytes] | None = None
        self.tokens: SoakTokens | None = None
        self._log: Any = None

    # -- building -------------------------------------------------------------------

    def build(self) -> None:
        """Make the fixture, the hostile branches, the config, tokens and hooks."""
        make_fixture(self.fixture, self.envs, self.modules)
        self._hostile_branches()
        config = {
            "datadir": str(self.datadir),
            "listen": f"127.0.0.1:{self.port}",
            "workers": self.workers,
            "threads": self.threads,
            "state": {"fsync": False, "deadline": 20, "stale_lock_after": 5},
            "logging": {"level": "WARNING"},
            "sources": {"puppet": {"remote": str(self.control), "invalid_branches": "correct"}},
            "deploy": {
                "pool_size": self.deploy_workers,
                "timeouts": {"fetch": 30, "deploy": 120, "wait": 90, "sync": 45},
                "local_module_sources": [str(self.fixture / "modules")],
            },
            # Webhooks then need a token or the type's secret: the hostile
            # phase posts types that have neither.
            "auth": {"enabled": True, "webhook_authentication": False},
            "gates": {"current_ticket_lifetime": 10, "queued_ticket_lifetime": 2},
            "file_sync": {
                "token": "soak-file-sync-token",
                "long_poll_timeout": 10,
                "reconcile_interval": 20,
                "check_in_interval": 5,
                "clients": [
                    {"name": "primary", "live": str(self.live["primary"])},
                    {"name": "compiler", "live": str(self.live["compiler"]), "storage": self.base},
                ],
            },
        }
        yaml = YAML(typ="safe")
        yaml.default_flow_style = False
        with self.config_path.open("w", encoding="utf-8") as stream:
            yaml.dump(config, stream)
        init_repository(self.state_repo)
        tokens = Tokens(Store(self.state_repo, fsync=False))

        def issue(user: str, permissions: list[str], lifetime: Any = 0) -> str:
            return tokens.issue(
                user, permissions=permissions, lifetime=lifetime, actor="soak-setup"
            ).token

        self.tokens = SoakTokens(
            admin=issue("soak-admin", ["admin"]),
            pipeline=issue("soak-pipeline", [f"gates:{GATE_GROUP}"]),
            deployer=issue("soak-deployer", ["deploy:*"]),
            viewer=issue("soak-viewer", []),
            expired=issue("soak-expired", ["admin"], lifetime=1),
        )
        self.token_file.write_text(self.tokens.admin + "\n", encoding="utf-8")
        self.token_file.chmod(0o600)
        install_post_receive(self.control, url=self.base, token_file=str(self.token_file))
        install_state_guard(self.state_repo)

    def _hostile_branches(self) -> None:
        """Add control branches that must fail to deploy and publish nothing."""
        work = self.root / "hostile-work"
        git("clone", "-q", "-b", "production", str(self.control), str(work))
        module = sorted((self.fixture / "modules").glob("*.git"))[0]
        contents = {
            "hostile_ext": (
                "Puppetfile",
                f"mod 'evil',\n  :git => 'ext::sh -c touch% {self.ext_marker}',\n"
                "  :branch => 'main'\n",
            ),
            "hostile_path": (
                "Puppetfile",
                f"mod 'escape',\n  :git => '{module.as_uri()}',\n  :branch => 'main',\n"
                "  :install_path => '../../../outside'\n",
            ),
            "hostile_state": (
                "Puppetfile",
                f"mod 'tokens',\n  :git => '{self.state_repo}',\n  :branch => 'state'\n",
            ),
        }
        for branch, (path, text) in contents.items():
            git("checkout", "-q", "-b", branch, "production", cwd=work)
            (work / path).write_text(text, encoding="utf-8")
            git("commit", "-q", "-am", f"{branch}: {HOSTILE_BRANCHES[branch]}", cwd=work)
        git("checkout", "-q", "-b", "hostile_link", "production", cwd=work)
        os.symlink("../../../../../../etc", work / "escape")
        git("add", "escape", cwd=work)
        git("commit", "-q", "-m", "hostile_link: " + HOSTILE_BRANCHES["hostile_link"], cwd=work)
        self._hostile_chain(work)
        long = next(branch for branch in HOSTILE_BRANCHES if branch.startswith("hostile_long_"))
        git("checkout", "-q", "-b", long, "production", cwd=work)
        # The hook is not installed yet: these pushes deploy nothing by themselves.
        git("push", "-q", "origin", *HOSTILE_BRANCHES, cwd=work)

    @staticmethod
    def _hostile_chain(work: Path) -> None:
        """Commit issue 18's repro: each link's text stays inside, the chain does not."""
        git("checkout", "-q", "-b", "hostile_chain", "production", cwd=work)
        (work / CHAIN_DIRS).mkdir(parents=True)
        os.symlink("/".join([".."] * 10), work / CHAIN_DIRS / "l")
        os.symlink("/".join([CHAIN_DIRS, "l", *[".."] * 10, "etc"]), work / "escape")
        git("add", "-A", cwd=work)
        message = "hostile_chain: " + HOSTILE_BRANCHES["hostile_chain"]
        git("commit", "-q", "-m", message, cwd=work)

    # -- running --------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start ``gitstate serve`` and wait until it answers and both clients run."""
        env = {**GIT_ENV, "HOME": str(self.root)}
        self._log = (self.root / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gitstate", "serve", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        until = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.base}/internal/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > until or self.process.poll() is not None:
                raise RuntimeError(f"gitstate serve did not come up; see {self._log.name}")
            time.sleep(0.2)

    def headers(self, token: str | None = None) -> dict[str, str]:
        """Return request headers carrying ``token`` (the admin token by default)."""
        assert self.tokens is not None
        return {"X-Authentication": token or self.tokens.admin}

    def prepare_state(self) -> None:
        """Create the gate services and deploy every environment once, waiting."""
        for service in GATE_SERVICES:
            answer = requests.post(
                f"{self.base}/api/gates/{GATE_GROUP}/{service}",
                json={"environments": list(GATE_ENVS)},
                headers=self.headers(),
                timeout=30,
            )
            if answer.status_code != 200:
                raise RuntimeError(f"creating gates {service}: {answer.status_code} {answer.text}")
        answer = requests.post(
            f"{self.base}/code-manager/v1/deploys",
            json={"deploy-all": True, "wait": True},
            headers=self.headers(),
            timeout=300,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"initial deploy-all: {answer.status_code} {answer.text}")

    def stop(self) -> None:
        """Stop ``gitstate serve`` (SIGTERM, then SIGKILL of the whole group)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()

    # -- processes --------------------------------------------------------------------

    def processes(self) -> dict[str, list[int]]:
        """Return the live pids by role: ``gunicorn-worker``, ``deploy-worker``, ``sync-<name>``."""
        if self.process is None:
            return {}
        tree = _children()
        roles: dict[str, list[int]] = {}
        for pid in tree.get(self.process.pid, []):
            argv = _cmdline(pid)
            if "web" in argv:
                # gunicorn's master runs in the ``gitstate web`` process;
                # its children are the workers.
                roles.setdefault("gunicorn-worker", []).extend(tree.get(pid, []))
            elif "deploy-worker" in argv:
                roles.setdefault("deploy-worker", []).append(pid)
            elif "sync" in argv:
                name = argv[argv.index("--name") + 1] if "--name" in argv else "?"
                roles.setdefault(f"sync-{name}", []).append(pid)
        return roles
