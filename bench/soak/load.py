"""The mixed load: client threads doing what pipelines, people and git hosts do.

Every request is recorded as an :class:`Op` (time, kind, status, latency)
and, when the server acknowledged a write, with what must now be in the
history (``Op.ack``): the ticket and the commit named by the ``ETag``, the
gate's new state, the deploy ids, the environment a webhook queued.
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench.soak.cluster import GATE_ENVS, GATE_GROUP, GATE_SERVICES, Cluster, git

#: Longest a single request may take before it counts as failed.
REQUEST_TIMEOUT = 60.0
#: Longest a deploy with ``wait`` may take (the server's own wait is shorter).
WAIT_TIMEOUT = 150.0
_HOOK_LINE = re.compile(r"queued deploy of (.*)")
_HOOK_ENTRY = re.compile(r"(\S+) \(#(\d+)\)")
ZERO = "0" * 40


@dataclasses.dataclass
class Op:
    """One request (or one ``git push``) and what came of it.

    Attributes:
        kind: what was done (``tas``, ``release``, ``gate``, ``deploy``, ...;
            hostile inputs are ``hostile:<what>``).
        client: the client thread's number.
        start: wall-clock time the request was sent.
        end: wall-clock time the answer (or the error) came.
        status: the HTTP status, or None when no answer came.
        error: why no answer came (connection reset, timeout), or a
            hostile input's unexpected answer.
        ack: for acknowledged writes, what must now be in the history.
        expected: for hostile inputs, what the answer should have been.
    """

    kind: str
    client: int
    start: float
    end: float = 0.0
    status: int | None = None
    error: str | None = None
    ack: dict[str, Any] | None = None
    expected: str | None = None

    @property
    def latency(self) -> float:
        """Seconds from send to answer."""
        return self.end - self.start


class Recorder:
    """Collect ops from every thread."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()

    def add(self, op: Op) -> Op:
        """Record ``op`` and return it (the caller may still fill in ``ack``)."""
        with self._lock:
            self.ops.append(op)
        return op


class Client:
    """One client thread's session and its operations.

    Args:
        number: the thread's number (seeds its random generator too).
        cluster: the running installation.
        recorder: where ops go.
        seed: the run's seed.
        branches: control branches that deploy cleanly.
    """

    def __init__(
        self, number: int, cluster: Cluster, recorder: Recorder, seed: int, branches: list[str]
    ) -> None:
        self.number = number
        self.cluster = cluster
        self.recorder = recorder
        self.rng = random.Random(seed * 1000 + number)
        self.session = requests.Session()
        self.branches = branches
        self._work: Path | None = None
        self._pushes = 0
        assert cluster.tokens is not None
        self.tokens = cluster.tokens

    # -- plumbing ---------------------------------------------------------------------

    def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        **kwargs: Any,
    ) -> tuple[Op, requests.Response | None]:
        """Send one request and record it; return the op and the answer (None on error)."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["X-Authentication"] = token
        op = Op(kind, self.number, time.time())
        try:
            response = self.session.request(
                method, self.cluster.base + path, headers=headers, timeout=timeout, **kwargs
            )
        except requests.RequestException as ex:
            op.end = time.time()
            op.error = f"{type(ex).__name__}: {ex}"[:300]
            # A broken keep-alive connection must not poison the next request.
            self.session.close()
            self.session = requests.Session()
            return self.recorder.add(op), None
        op.end = time.time()
        op.status = response.status_code
        return self.recorder.add(op), response

    @staticmethod
    def etag(response: requests.Response) -> str | None:
        """Return the commit an answer's ``ETag`` names."""
        value = response.headers.get("etag")
        return value.strip('"').removeprefix("W/").strip('"') if value else None

    # -- gates ------------------------------------------------------------------------

    def _gate_set(self) -> dict[str, Any]:
        labels = [(s, e) for s in GATE_SERVICES for e in GATE_ENVS]
        chosen = self.rng.sample(labels, self.rng.randint(1, 3))
        services: dict[str, list[str]] = {}
        for service, env in chosen:
            services.setdefault(service, []).append(env)
        return {GATE_GROUP: services}

    def _tas(self, gates: dict[str, Any], ticket: str | None, queue: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"gates": gates, "link": f"https://ci.invalid/{self.number}"}
        if ticket:
            body["ticket"] = ticket
        op, response = self.call(
            "tas",
            "PUT",
            "/api/gates",
            token=self.tokens.pipeline,
            params={"queue": "true"} if queue else None,
            json=body,
        )
        if response is None or response.status_code != 200:
            return {"status": "error"}
        answer = response.json()
        if answer.get("status") in ("ok", "queued"):
            op.ack = {
                "type": "ticket",
                "ticket": answer["ticket"]["id"],
                "status": answer["status"],
                "gates": gates,
                "commit": self.etag(response),
            }
        return answer

    def ticket_cycle(self) -> None:
        """Take (or queue for) some gates, re-send while queued, release."""
        gates = self._gate_set()
        queue = self.rng.random() < 0.5
        answer = self._tas(gates, None, queue)
        ticket = (answer.get("ticket") or {}).get("id")
        polls = 0
        while answer.get("status") == "queued" and polls < 8:
            time.sleep(self.rng.uniform(0.05, 0.25))
            answer = self._tas(gates, ticket, True)
            polls += 1
        if answer.get("status") == "ok":
            time.sleep(self.rng.uniform(0, 0.1))
        if ticket:
            self.release(ticket)

    def release(self, ticket: str) -> None:
        """Release a ticket."""
        op, response = self.call(
            "release", "DELETE", f"/api/tickets/{ticket}", token=self.tokens.pipeline
        )
        if response is not None and response.status_code == 200:
            op.ack = {"type": "release", "ticket": ticket, "commit": self.etag(response)}

    def toggle_gate(self) -> None:
        """Open or close one gate with a message."""
        service = self.rng.choice(GATE_SERVICES)
        env = self.rng.choice(GATE_ENVS)
        state = "closed" if self.rng.random() < 0.25 else "open"
        message = f"soak {self.number}: {state} at {time.time():.3f}"
        op, response = self.call(
            "gate",
            "PUT",
            f"/api/gates/{GATE_GROUP}/{service}/{env}",
            token=self.tokens.pipeline,
            json={"state": state, "message": message},
        )
        if response is not None and response.status_code == 200:
            op.ack = {
                "type": "gate",
                "label": f"{GATE_GROUP}/{service}/{env}",
                "state": state,
                "message": message,
                "commit": self.etag(response),
            }

    # -- deploys ----------------------------------------------------------------------

    def deploy(self) -> None:
        """Ask for one or two environments, sometimes waiting."""
        wait = self.rng.random() < 0.25
        envs = self.rng.sample(self.branches, min(len(self.branches), self.rng.randint(1, 2)))
        op, response = self.call(
            "deploy-wait" if wait else "deploy",
            "POST",
            "/code-manager/v1/deploys",
            token=self.tokens.deployer,
            json={"environments": envs, "wait": wait},
            timeout=WAIT_TIMEOUT if wait else REQUEST_TIMEOUT,
        )
        if response is not None and response.status_code == 200:
            op.ack = {"type": "deploy", "entries": response.json()}

    def webhook(self) -> None:
        """Send a GitHub push event for a branch."""
        branch = self.rng.choice(self.branches)
        payload = {
            "ref": f"refs/heads/{branch}",
            "before": ZERO,
            "after": f"{self.rng.getrandbits(160):040x}",
            "deleted": False,
            "repository": {"full_name": "soak/control"},
        }
        op, response = self.call(
            "webhook",
            "POST",
            "/code-manager/v1/webhook",
            params={"type": "github"},
            token=self.tokens.admin,
            headers={"X-GitHub-Event": "push"},
            json=payload,
        )
        if response is not None and response.status_code == 200:
            op.ack = {"type": "webhook", "environment": branch}

    def push(self) -> None:
        """Commit to this thread's own control branch and push; the hook queues a deploy."""
        branch = f"soak_push_{self.number}"
        if self._work is None:
            self._work = self.cluster.root / "work" / str(self.number)
            git("clone", "-q", "-b", "production", str(self.cluster.control), str(self._work))
            git("checkout", "-q", "-b", branch, cwd=self._work)
        self._pushes += 1
        data = self._work / "data" / "common.yaml"
        data.write_text(
            f"---\nprofile::base::motd: 'push {self.number}.{self._pushes}'\n", encoding="utf-8"
        )
        git("commit", "-q", "-am", f"soak push {self._pushes}", cwd=self._work)
        op = Op("push", self.number, time.time())
        try:
            result = git("push", "origin", f"HEAD:{branch}", cwd=self._work, check=False)
        finally:
            op.end = time.time()
        self.recorder.add(op)
        out = result.stdout + result.stderr
        if result.returncode != 0:
            op.error = f"git push failed: {out.strip()[-300:]}"
            return
        op.status = 200
        match = _HOOK_LINE.search(out)
        if not match:
            op.error = f"the hook queued nothing: {out.strip()[-300:]}"
            return
        ids = [(env, int(number)) for env, number in _HOOK_ENTRY.findall(match.group(1))]
        op.ack = {
            "type": "deploy",
            "entries": [{"environment": env, "id": number} for env, number in ids],
        }
        if branch not in self.branches:
            self.branches.append(branch)

    # -- reads ------------------------------------------------------------------------

    def read(self) -> None:
        """Read what the web page and pipelines read."""
        choice = self.rng.randrange(3)
        if choice == 0:
            self.call("read-gates", "GET", "/api/gates")
        elif choice == 1:
            # Code Manager's reads need a token (auth.anonymous_reads.code_manager).
            self.call(
                "read-status", "GET", "/code-manager/v1/deploys/status", token=self.tokens.viewer
            )
        else:
            service = self.rng.choice(GATE_SERVICES)
            self.call(
                "read-history",
                "GET",
                f"/api/gates/{GATE_GROUP}/{service}/live/history",
                params={"limit": 5},
            )


def run_clients(
    cluster: Cluster,
    recorder: Recorder,
    *,
    clients: int,
    duration: float,
    seed: int,
    branches: list[str],
    hostile: Callable[[Client], None] | None = None,
    pushers: int = 3,
) -> list[threading.Thread]:
    """Start ``clients`` threads running the mix until ``duration`` passes.

    Threads below ``pushers`` also push to the control repository.
    Returns the threads (join them).
    """
    until = time.monotonic() + duration
    shared_branches = list(branches)

    def loop(number: int) -> None:
        client = Client(number, cluster, recorder, seed, shared_branches)
        mix: list[tuple[float, Callable[[], None]]] = [
            (0.34, client.ticket_cycle),
            (0.14, client.toggle_gate),
            (0.12, client.deploy),
            (0.08, client.webhook),
            (0.22, client.read),
        ]
        if number < pushers:
            mix.append((0.06, client.push))
        if hostile is not None:
            mix.append((0.04, lambda: hostile(client)))
        actions = [action for _weight, action in mix]
        weights = [weight for weight, _action in mix]
        for _iteration in range(100_000):
            if time.monotonic() >= until:
                break
            try:
                client.rng.choices(actions, weights)[0]()
            except Exception as ex:  # a harness bug must not end the run silently
                recorder.add(
                    Op("harness-error", number, time.time(), time.time(), error=repr(ex)[:300])
                )
            time.sleep(client.rng.uniform(0.01, 0.15))

    threads = [
        threading.Thread(target=loop, args=(number,), name=f"soak-client-{number}", daemon=True)
        for number in range(clients)
    ]
    for thread in threads:
        thread.start()
    return threads
