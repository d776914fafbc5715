"""Gate test-and-set on 1, 2 and 3 nodes sharing a git server, against one node alone.

Run from the repository root::

    python -m bench.cluster_bench [--seconds 10] [--clients 16] [--nodes 1,2,3]

Each layout runs in turn, in the same run: first a single ``gitstate
serve`` without a remote (what a site runs today), then 1, 2 and 3 nodes
pointed at a real ``git daemon`` with ``state.remote`` and
``storage.remote`` (docs/cluster.md). Every node has the default config
(4 workers, 8 threads each, fsync on, authentication on); the clients are
spread over the nodes, each taking a gate of its own with ``PUT
/api/gates`` and releasing it with ``DELETE /api/tickets/<id>``, so every
request is one commit on the shared branch. After a warm-up, uncounted, it
prints requests/s, p50 and p99 per layout, and each one's ratio to the
single server.

Everything shares the machine: on two cores, three nodes and the git
server take CPU from one another, so the figures say what sharing one git
server costs per write, not what three hosts would do.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import gates_bench
from bench.gates_bench import LeanConnection, call
from bench.nodes import GitServer, Node


def _token(node: Node) -> str:
    argv = [sys.executable, "-P", "-m", "gitstate", "token", "create"]
    argv += ["--config", str(node.config_path), "--user", "bench"]
    argv += ["--permission", "gates:bench", "--lifetime", "0"]
    made = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def client(port: int, gate: str, until: float, latencies: list[float], failures: list[str]) -> None:
    """Take ``gate`` and release it until ``until``; count answers that are not 200."""
    conn = LeanConnection(port)
    body = {"gates": {"bench": {gate: "live"}}}
    mine: list[float] = []
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            answer = call(conn, "PUT", "/api/gates", body)
            mine.append(time.perf_counter() - started)
            if answer["status"] == "ok":
                started = time.perf_counter()
                call(conn, "DELETE", f"/api/tickets/{answer['ticket']['id']}")
                mine.append(time.perf_counter() - started)
        except (RuntimeError, OSError) as ex:
            # A failed request counts in the latencies too: leaving it out
            # would hide the slowest answers (a 503 after the 10 s deadline).
            mine.append(time.perf_counter() - started)
            failures.append(str(ex)[:240])
            conn.close()
    latencies.extend(mine)
    conn.close()


def measure(root: Path, nodes_count: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start one layout, load it, stop it; return its figures.

    ``nodes_count`` 0 is a single server without a remote.
    """
    server = GitServer(root / "git") if nodes_count else None
    if server is not None:
        server.start()
    nodes = [Node(root / f"node{i}", server) for i in range(max(1, nodes_count))]
    try:
        # The token is written through the first node, before any serves,
        # so it reaches the git server and every node from there.
        gates_bench.TOKEN = _token(nodes[0])
        for node in nodes:
            node.start()
        ports = [node.port for node in nodes]
        gates = [f"s{n:02d}" for n in range(args.clients)]
        setup = LeanConnection(ports[0])
        for gate in gates:
            call(setup, "POST", f"/api/gates/bench/{gate}", {"environments": ["live"]})
        setup.close()
        time.sleep(1.5)  # every node has followed the gates' creation

        def run(seconds: float, latencies: list[float], failures: list[str]) -> None:
            until = time.perf_counter() + seconds
            threads = [
                threading.Thread(
                    target=client,
                    args=(ports[n % len(ports)], gates[n], until, latencies, failures),
                )
                for n in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        run(args.warmup, [], [])
        latencies: list[float] = []
        failures: list[str] = []
        started = time.perf_counter()
        run(args.seconds, latencies, failures)
        elapsed = time.perf_counter() - started
    finally:
        for node in nodes:
            node.stop()
        if server is not None:
            server.stop()
    ordered = sorted(latencies)
    return {
        "rate": (len(latencies) - len(failures)) / elapsed,  # answered 200
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "failed": float(len(failures)),
        # The same reason with other figures in it counts as one.
        "why": collections.Counter(re.sub(r"[0-9.]+", "#", why) for why in failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--nodes", default="1,2,3", help="node counts sharing a git server (comma-separated)"
    )
    args = parser.parse_args()
    layouts = [0] + [int(n) for n in args.nodes.split(",") if n.strip()]
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        for layout in layouts:
            results[layout] = measure(Path(tmp) / f"layout{layout}", layout, args)
            print(f"measured {describe(layout)}", file=sys.stderr)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{args.clients} clients, a gate each, {args.seconds:g}s after {args.warmup:g}s warm-up")
    print("| layout | test-and-set | vs one server | p50 | p99 | failed |")
    print("|---|---|---|---|---|---|")
    single = results[0]["rate"]
    for layout, figures in results.items():
        print(
            f"| {describe(layout)} | {figures['rate']:.0f} req/s | "
            f"{figures['rate'] / single:.0%} | {figures['p50']:.1f} ms | {figures['p99']:.1f} ms | "
            f"{figures['failed']:.0f} |"
        )
    for layout, figures in results.items():
        for why, count in figures["why"].most_common(5):
            print(f"{describe(layout)} failed {count}x: {why}")


def describe(layout: int) -> str:
    """Name a layout in the table."""
    if layout == 0:
        return "one server, no remote"
    return f"{layout} node{'s' if layout > 1 else ''} + git daemon"


if __name__ == "__main__":
    main()
