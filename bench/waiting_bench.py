"""Waiting and slow clients against ``gitstate serve``: health latency and gate throughput.

Run from the repository root::

    python -m bench.waiting_bench [--seconds 10] [--rounds 3] [--peer-python PATH]

It starts ``gitstate serve`` as a user would (:class:`bench.site.Site`: the
default workers, threads, deploy workers, fsync and authentication) on a
small control repository, then measures two phases of ``--seconds`` each,
``--rounds`` times in turn:

1. **quiet**: ``--clients`` threads take and release gates (``PUT
   /api/gates``, ``DELETE /api/tickets/<id>``) while one thread asks
   ``GET /internal/health`` every 20 ms;
2. **waiting**: the same, while a second process keeps up
   ``--dribblers`` connections sending their headers or bodies a few bytes
   a second, ``--polls`` long polls (half of them the web page's
   ``/api/watch`` loop, at most one answer a second as the page asks,
   half file-sync clients' ``latest-commit``, each on a keep-alive connection
   as a browser and the client's session keep them), and ``--waits`` ``wait: true``
   deploys, each sent again as soon as it is answered. The server runs no
   deploy workers (``deploy.pool_size: 0``), so those deploys stay queued
   and their requests wait, as behind long deploys; the cost of running
   deploys is :mod:`bench.deploy_path_bench`'s subject.

It prints health p50/p99 and test-and-set requests/s of both phases, their
ratio, and what the load saw (connections the server closed for slowness,
waiters answered, waiters refused). ``--peer-python`` runs the same two
phases against the ``gitstate`` installed for another interpreter (for
example a checkout of the previous release in its own venv), in the same
run, so the two servers are compared on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import gates_bench
from bench.fixture import environment_names, make_fixture
from bench.site import FILE_SYNC_TOKEN, Site

#: How long a health probe may take before it counts as failed (seconds).
PROBE_TIMEOUT = 10.0
#: The page's shortest time between two refreshes (``REFRESH_INTERVAL_MS`` in app.js).
PAGE_REFRESH_INTERVAL = 1.0
#: Seconds between two bytes of a dribbling client.
DRIBBLE_EVERY = 1.0


@dataclass
class Phase:
    """What one phase measured."""

    health: list[float] = field(default_factory=list)
    health_failed: int = 0
    tas_requests: int = 0
    seconds: float = 0.0
    load: dict[str, int] = field(default_factory=dict)

    def add(self, other: Phase) -> None:
        """Add ``other``'s measurements to these."""
        self.health += other.health
        self.health_failed += other.health_failed
        self.tas_requests += other.tas_requests
        self.seconds += other.seconds

    @property
    def tas_rate(self) -> float:
        """Test-and-set requests answered per second."""
        return self.tas_requests / self.seconds if self.seconds else 0.0

    def percentile(self, share: float) -> float:
        """The health latency below which ``share`` of the probes fell (seconds)."""
        if not self.health:
            return float("nan")
        ordered = sorted(self.health)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- the health probe and the gate clients (threads of this process) ---------------------


def probe_health(port: int, until: float, phase: Phase) -> None:
    """Ask ``GET /internal/health`` every 20 ms until ``until``; record each latency."""
    while time.perf_counter() < until:
        conn = gates_bench.LeanConnection(port, timeout=PROBE_TIMEOUT)
        started = time.perf_counter()
        try:
            status, _ = conn.request("GET", "/internal/health")
            if status != 200:
                raise ConnectionError(f"health answered {status}")
        except OSError:
            phase.health_failed += 1
            phase.health.append(PROBE_TIMEOUT)
        else:
            phase.health.append(time.perf_counter() - started)
        finally:
            conn.close()
        time.sleep(0.02)


def measure(port: int, clients: int, seconds: float) -> Phase:
    """Run the gate clients and the health probe for ``seconds``."""
    phase = Phase(seconds=seconds)
    latencies: list[float] = []
    denied: list[int] = []
    until = time.perf_counter() + seconds
    prober = threading.Thread(target=probe_health, args=(port, until, phase))
    prober.start()
    gates_bench.run_clients(
        gates_bench.LeanConnection,
        port,
        [f"gate{n}" for n in range(clients)],
        clients,
        seconds,
        latencies,
        denied,
    )
    prober.join()
    phase.tas_requests = len(latencies)
    return phase


# -- the waiting load (asyncio, in a process of its own) ---------------------------------


class Load:
    """Many slow or waiting connections, kept up until :attr:`stop` is set."""

    def __init__(
        self, port: int, token: str, file_sync_token: str, envs: list[str], page_reads: bool
    ) -> None:
        self.port = port
        self.page_reads = page_reads
        self.token = token
        self.file_sync_token = file_sync_token
        self.envs = envs
        self.counts: dict[str, int] = {}
        self.stop = asyncio.Event()

    def count(self, name: str) -> None:
        """Add one to counter ``name``."""
        self.counts[name] = self.counts.get(name, 0) + 1

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = "",
        kept: KeptConnection | None = None,
    ) -> Any:
        """One request, on ``kept`` or on a connection of its own; return its JSON (or None)."""
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(data)}\r\n"
        if token:
            head += f"X-Authentication: {token}\r\n"
        try:
            if kept is not None:
                status, payload = await kept.exchange(head.encode() + b"\r\n" + data)
            else:
                status, payload = await _exchange_once(
                    self.port, head.encode() + b"Connection: close\r\n\r\n" + data
                )
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status, payload = 0, b""
        if status != 200:
            self.count(f"refused {status}")
            return None
        return json.loads(payload) if payload else None

    async def dribble(self, body: bool) -> None:
        """Send a request a line (or a byte of body) at a time; reconnect when closed."""
        while not self.stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            if body:
                writer.write(
                    b"PUT /api/gates/bench/slow HTTP/1.1\r\nHost: bench\r\n"
                    b"Content-Length: 100000\r\n\r\n"
                )
            else:
                writer.write(b"GET /internal/health HTTP/1.1\r\nHost: bench\r\n")
            closed = asyncio.ensure_future(reader.read())
            while not self.stop.is_set() and not closed.done():
                writer.write(b"x" if body else b"X-Dribble: 1\r\n")
                await asyncio.wait([closed], timeout=DRIBBLE_EVERY)
            if closed.done():
                self.count("dribbler closed by the server")
            else:
                closed.cancel()
            writer.close()

    async def page(self) -> None:
        """The web page's loop: watch the state branch, read the gates after each change.

        Without ``--page-reads`` the read is left out: the wait is this
        benchmark's subject, and a hundred pages reading the gates once a
        second is a read load of its own.
        """
        since = ""
        kept = KeptConnection(self.port)  # a browser keeps its connection open
        while not self.stop.is_set():
            answer = await self.request("GET", f"/api/watch?since={since}&timeout=25", kept=kept)
            if answer is None:
                await asyncio.sleep(3)  # as the page does after a failure
                continue
            self.count("page watch answered")
            if answer["commit"] != since:
                since = answer["commit"]
                if self.page_reads:
                    await self.request("GET", "/api/gates", kept=kept)
                await asyncio.sleep(PAGE_REFRESH_INTERVAL)

    async def file_sync(self) -> None:
        """A file-sync client's long poll for a new code-commit."""
        known = ""
        kept = KeptConnection(self.port)  # the client's requests session keeps it open
        while not self.stop.is_set():
            answer = await self.request(
                "GET",
                f"/file-sync/v1/latest-commit?known={known}&timeout=25",
                token=self.file_sync_token,
                kept=kept,
            )
            if answer is None:
                await asyncio.sleep(1)
                continue
            self.count("file-sync poll answered")
            known = answer["code-commit"] or ""

    async def deploy(self, index: int) -> None:
        """A pipeline's ``puppet code deploy <env> --wait``, again once it is answered."""
        env = self.envs[index % len(self.envs)]
        while not self.stop.is_set():
            answer = await self.request(
                "POST",
                "/code-manager/v1/deploys",
                {"environments": [env], "wait": True},
                token=self.token,
            )
            if answer is None:
                await asyncio.sleep(1)
                continue
            self.count(f"wait deploy answered {answer[0].get('status')}")


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one HTTP/1.1 answer; return its status, body and whether the server closes."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines if line)
    )
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ", 2)[1]), body, headers.get("connection") == "close"


async def _exchange_once(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` on a new connection, read the answer, close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        status, body, _ = await _read_answer(reader)
        return status, body
    finally:
        writer.close()


class KeptConnection:
    """A keep-alive connection, opened again when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``, return the answer's status and body."""
        for attempt in (1, 2):
            if self._streams is None:
                self._streams = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self._streams
            try:
                writer.write(request)
                status, body, closing = await _read_answer(reader)
            except (OSError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
                continue  # the server closed an idle connection: open another
            if closing:
                self.close()
            return status, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection (the next exchange opens another)."""
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def run_load(
    port: int,
    token: str,
    file_sync_token: str,
    envs: list[str],
    sizes: tuple[int, int, int],
    page_reads: bool,
    stop: Any,
    results: Any,
) -> None:
    """The load process: keep the waiting load up until ``stop`` is set."""
    dribblers, polls, waits = sizes

    async def main() -> None:
        load = Load(port, token, file_sync_token, envs, page_reads)
        tasks = [asyncio.ensure_future(load.dribble(n % 2 == 1)) for n in range(dribblers)]
        tasks += [asyncio.ensure_future(load.page()) for _ in range(polls // 2)]
        tasks += [asyncio.ensure_future(load.file_sync()) for _ in range(polls - polls // 2)]
        tasks += [asyncio.ensure_future(load.deploy(n)) for n in range(waits)]
        while not stop.is_set():
            await asyncio.sleep(0.2)
        load.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        load.counts["load process CPU ms"] = int(time.process_time() * 1000)
        results.put(load.counts)

    asyncio.run(main())


# -- one server, both phases ----------------------------------------------------------------


def bench_server(
    fixture: Path, root: Path, python: str, args: argparse.Namespace, envs: list[str]
) -> tuple[Phase, Phase]:
    """Measure the quiet and the waiting phase against one ``gitstate serve``."""
    # No deploy workers: each wait deploy stays queued, so its request waits
    # for the whole phase, as it does behind long deploys. (What running
    # deploys cost is measured by bench.deploy_path_bench.)
    site = Site(root, fixture / "control.git", {"deploy": {"pool_size": 0}}, python=python)
    with site:
        gates_bench.TOKEN = site.token
        for n in range(args.clients):
            site.session.post(
                f"{site.base}/api/gates/bench/gate{n}", json={"environments": ["live"]}
            ).raise_for_status()
        measure(site.port, args.clients, args.warmup)
        # Quiet and waiting phases alternate, so a machine whose speed drifts
        # during the run weighs on both alike.
        quiet, waiting = Phase(), Phase()
        for _ in range(args.rounds):
            quiet.add(measure(site.port, args.clients, args.seconds))
            stop = multiprocessing.Event()
            results: Any = multiprocessing.Queue()
            loader = multiprocessing.Process(
                target=run_load,
                args=(
                    site.port,
                    site.token,
                    FILE_SYNC_TOKEN,
                    envs,
                    (args.dribblers, args.polls, args.waits),
                    args.page_reads,
                    stop,
                    results,
                ),
            )
            loader.start()
            time.sleep(args.ramp)  # let every waiter connect and start waiting
            waiting.add(measure(site.port, args.clients, args.seconds))
            stop.set()
            for key, value in results.get(timeout=120).items():
                waiting.load[key] = waiting.load.get(key, 0) + value
            loader.join(60)
    return quiet, waiting


def report(name: str, quiet: Phase, waiting: Phase) -> None:
    """Print one server's figures."""
    print(f"{name}:")
    for label, phase in (("quiet", quiet), ("waiting", waiting)):
        print(
            f"  {label:8} health p50 {phase.percentile(0.5) * 1000:7.1f} ms  "
            f"p99 {phase.percentile(0.99) * 1000:7.1f} ms  "
            f"failed {phase.health_failed:3}/{len(phase.health):4}  "
            f"test-and-set {phase.tas_rate:7.1f} req/s"
        )
    ratio = waiting.tas_rate / quiet.tas_rate if quiet.tas_rate else float("nan")
    print(f"  test-and-set under the waiting load: {ratio:.0%} of quiet")
    load = dict(waiting.load)
    cpu = load.pop("load process CPU ms", 0) / 1000
    for key, value in sorted(load.items()):
        print(f"  load: {key}: {value}")
    # The load shares the machine's cores with the server: what it burns is
    # taken from what the server could do.
    print(f"  load process used {cpu / waiting.seconds:.0%} of a core while it ran")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one phase")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/waiting phase pairs")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds the load starts up")
    parser.add_argument("--clients", type=int, default=8, help="test-and-set threads")
    parser.add_argument("--dribblers", type=int, default=500)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--waits", type=int, default=50)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument(
        "--page-reads",
        action="store_true",
        help="page watchers read the gates after each change, as the page does",
    )
    parser.add_argument(
        "--peer-python",
        default=None,
        help="an interpreter with another gitstate installed, measured in the same run",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="waiting-bench-") as tmp:
        root = Path(tmp)
        fixture = make_fixture(root / "fixture", envs=args.envs, modules=3, files_per_module=10)
        envs = environment_names(args.envs)
        servers = [("this checkout", sys.executable)]
        if args.peer_python:
            servers.append((f"peer ({args.peer_python})", args.peer_python))
        figures = []
        for index, (name, python) in enumerate(servers):
            quiet, waiting = bench_server(fixture, root / f"site{index}", python, args, envs)
            figures.append((name, quiet, waiting))
        print(
            f"{args.dribblers} dribbling connections, {args.polls} long polls, "
            f"{args.waits} wait deploys; {args.clients} test-and-set threads, "
            f"{args.rounds} rounds of {args.seconds:g} s per phase"
        )
        for name, quiet, waiting in figures:
            report(name, quiet, waiting)
        if len(figures) == 2:
            mine, peer = figures[0][2], figures[1][2]
            print(
                f"under load, health p99: {mine.percentile(0.99) * 1000:.1f} ms vs peer "
                f"{peer.percentile(0.99) * 1000:.1f} ms; test-and-set "
                f"{mine.tas_rate:.1f} vs peer {peer.tas_rate:.1f} req/s"
            )


if __name__ == "__main__":
    main()
