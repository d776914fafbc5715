"""Gate test-and-set over HTTP against the raw pygit2 CAS loop, in one run.

Run from the repository root::

    python -m bench.gates_bench [--seconds 10] [--clients 16] [--workers N] [--client lean]

It measures the raw commit rate (:func:`bench.raw.raw_commits_per_second`),
then starts ``gitstate serve`` (gunicorn, loopback, fsync off like the raw
loop) and lets ``--clients`` threads each take a gate with ``PUT /api/gates``
and release it with ``DELETE /api/tickets/<id>``, over HTTP/1.1
connections (kept alive where the server allows it; a sync worker closes
each one after its answer). Every request is one commit, so requests/s
compares directly with raw commits/s. Both sides warm up first, uncounted:
the raw loop and the HTTP load each run ``--warmup`` seconds before they
are timed (a worker's first requests import modules and fill its caches,
and an idle VM takes a moment to reach its speed). With ``--shared`` all
clients fight over one gate (most answers are ``denied``, which commit
nothing).

The clients share the two cores with the server, so what they cost is
taken from what is measured. By default they speak HTTP/1.1 over plain
sockets with the fixed headers encoded once (:class:`LeanConnection`),
which takes a quarter to a half of the CPU per request of ``http.client``
(that parses every answer's headers with the ``email`` package);
``--client stdlib`` uses ``http.client`` instead. The client's CPU per
request is printed either way.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.raw import raw_commits_per_second


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(port: int, timeout: float = 60) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/internal/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


#: The bench's token (auth is on, as in production); set in main().
TOKEN = ""


class LeanConnection:
    """One keep-alive HTTP/1.1 connection with as little client-side work as possible.

    It sends ``Content-Length`` bodies and reads ``Content-Length``
    answers (all gitstate sends), and opens a new socket after an answer
    that says ``Connection: close`` (a sync gunicorn worker says so every
    time). A connection dropped without that is an error, as it is for
    ``http.client``: a test-and-set must not be sent twice.
    """

    def __init__(self, port: int, timeout: float = 60) -> None:
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._head = (
            f"Host: 127.0.0.1:{port}\r\nX-Authentication: {TOKEN}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request; return the status and the body of its answer."""
        data = body or b""
        message = b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method.encode(),
            path.encode(),
            self._head,
            len(data),
            data,
        )
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        sock = self._sock
        sock.sendall(message)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += self._recv(sock)
        head, _, payload = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        while len(payload) < length:
            payload += self._recv(sock)
        if close:
            self.close()
        return status, payload

    def _recv(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            self.close()
            raise ConnectionError("the server closed the connection mid-answer")
        return chunk

    def close(self) -> None:
        """Close the socket (the next request opens another)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class StdlibConnection:
    """The same interface over :class:`http.client.HTTPConnection`."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request; return the status and the body of its answer."""
        headers = {"Content-Type": "application/json", "X-Authentication": TOKEN}
        self._conn.request(method, path, body=body, headers=headers)
        response = self._conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


#: Which connection class the clients use (``--client``).
CONNECTIONS: dict[str, type[LeanConnection] | type[StdlibConnection]] = {
    "lean": LeanConnection,
    "stdlib": StdlibConnection,
}
Connection = LeanConnection | StdlibConnection


def call(conn: Connection, method: str, path: str, body: object = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    status, payload = conn.request(method, path, data)
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {payload[:200]!r}")
    return json.loads(payload)


def client(
    connect: type[Connection],
    port: int,
    gate: str,
    until: float,
    latencies: list[float],
    counts: list[int],
) -> None:
    conn = connect(port)
    body = {"gates": {"bench": {gate: "live"}}}
    mine: list[float] = []
    denied = 0
    while time.perf_counter() < until:
        started = time.perf_counter()
        answer = call(conn, "PUT", "/api/gates", body)
        mine.append(time.perf_counter() - started)
        if answer["status"] != "ok":
            denied += 1
            continue
        started = time.perf_counter()
        call(conn, "DELETE", f"/api/tickets/{answer['ticket']['id']}")
        mine.append(time.perf_counter() - started)
    latencies.extend(mine)
    counts.append(denied)
    conn.close()


def run_clients(
    connect: type[Connection],
    port: int,
    gates: list[str],
    clients: int,
    seconds: float,
    latencies: list[float],
    counts: list[int],
) -> None:
    """Run ``clients`` threads of :func:`client` for ``seconds`` and wait for them."""
    until = time.perf_counter() + seconds
    threads = [
        threading.Thread(
            target=client, args=(connect, port, gates[n % len(gates)], until, latencies, counts)
        )
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def prepared_outcomes(port: int) -> dict[str, float]:
    """Return the server's ``gitstate_state_prepared_total`` by outcome (from /metrics)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gitstate_state_prepared_total":
                outcome = sample.labels["outcome"]
                found[outcome] = found.get(outcome, 0.0) + sample.value
    return found


def health_rate(connect: type[Connection], port: int, clients: int, seconds: float) -> float:
    """Return requests/s of ``GET /internal/health`` with ``clients`` threads.

    The same clients, server and connections as the test-and-set run, but
    an answer that touches no state: what HTTP alone costs on this machine.
    """
    counts: list[int] = []
    until = time.perf_counter() + seconds

    def hammer() -> None:
        conn = connect(port)
        done = 0
        while time.perf_counter() < until:
            conn.request("GET", "/internal/health")
            done += 1
        counts.append(done)
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds each side (the raw loop, then the HTTP load) runs uncounted "
        "before it is timed",
    )
    parser.add_argument("--raw-seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="gunicorn workers (default: one per core; every commit queues on one "
        "host lock, so more sync workers than cores only add hand-overs)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--floor-seconds", type=float, default=4.0, help="length of the GET /internal/health run"
    )
    parser.add_argument("--shared", action="store_true", help="all clients on one gate")
    parser.add_argument(
        "--client",
        choices=sorted(CONNECTIONS),
        default="lean",
        help="HTTP client of the load threads (lean: plain sockets; stdlib: http.client)",
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="scratch folder for both repositories (default: the system's temp dir); "
        "a tmpfs such as /dev/shm leaves out the disk, whose speed on a shared "
        "machine can change several-fold from one minute to the next",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gates-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        # The raw rate is measured before and after the HTTP run and averaged:
        # on a shared two-core machine it drifts by tens of percent.
        # The raw loop warms up as long as the HTTP load does, so that neither
        # side is timed on a machine still waking up.
        raw_commits_per_second(root / "raw-warmup.git", args.warmup)
        raw_before = raw_commits_per_second(root / "raw-before.git", args.raw_seconds)
        port = free_port()
        config = root / "gitstate.yaml"
        config.write_text(
            f"datadir: {root / 'data'}\nlisten: 127.0.0.1:{port}\n"
            f"workers: {args.workers}\nthreads: {args.threads}\n"
            "state:\n  fsync: false\n  deadline: 30\n"
        )
        global TOKEN
        TOKEN = subprocess.run(
            [
                sys.executable,
                "-m",
                "gitstate",
                "token",
                "create",
                "--config",
                str(config),
                "--user",
                "bench",
                "--permission",
                "gates:bench",
                "--lifetime",
                "0",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        server = subprocess.Popen(
            [sys.executable, "-m", "gitstate", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "server.log").open("w"),
        )
        try:
            try:
                wait(port)
            except SystemExit:
                print((root / "server.log").read_text()[-3000:], file=sys.stderr)
                raise
            connect = CONNECTIONS[args.client]
            setup = connect(port)
            gates = ["shared"] if args.shared else [f"s{n:02d}" for n in range(args.clients)]
            for gate in gates:
                call(setup, "POST", f"/api/gates/bench/{gate}", {"environments": ["live"]})
            run_clients(connect, port, gates, args.clients, args.warmup, [], [])
            latencies: list[float] = []
            denied: list[int] = []
            started = time.perf_counter()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            run_clients(connect, port, gates, args.clients, args.seconds, latencies, denied)
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
            setup.close()
            prepared = prepared_outcomes(port)
            floor = health_rate(connect, port, args.clients, args.floor_seconds)
        finally:
            server.terminate()
            server.wait(30)
        raw_after = raw_commits_per_second(root / "raw-after.git", args.raw_seconds)
    raw = (raw_before + raw_after) / 2
    requests_done = len(latencies)
    commits = requests_done - sum(denied)
    rate = requests_done / elapsed
    commit_rate = commits / elapsed
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"raw pygit2 CAS:          {raw:8.0f} commits/s "
        f"(before {raw_before:.0f}, after {raw_after:.0f})"
    )
    print(
        f"HTTP test-and-set:       {rate:8.0f} requests/s "
        f"({args.clients} clients, {args.workers} workers x {args.threads} threads, "
        f"{'one shared gate' if args.shared else 'one gate each'})"
    )
    print(f"  of which commits:      {commit_rate:8.0f} commits/s ({sum(denied)} denied)")
    print(f"  acquire+release pairs: {(commits / 2) / elapsed:8.0f} /s")
    print(f"ratio to raw:            {commit_rate / raw:8.1%}")
    print(
        f"HTTP floor (GET health): {floor:8.0f} requests/s = {floor / raw:.0%} of raw "
        f"(test-and-set runs at {rate / floor:.0%} of it)"
    )
    print(f"latency p50 / p99:       {p50:6.1f} ms / {p99:6.1f} ms")
    print(
        f"client ({args.client}):  {client_cpu / max(1, requests_done) * 1e6:8.0f} us CPU "
        f"per request, {client_cpu / elapsed / (os.cpu_count() or 1):.0%} of the machine"
    )
    print(
        f"prepared before the lock: {prepared.get('kept', 0):.0f} kept, "
        f"{prepared.get('redone', 0):.0f} redone"
    )
    print(f"scratch folder on:       {args.dir or tempfile.gettempdir()}")


if __name__ == "__main__":
    main()
