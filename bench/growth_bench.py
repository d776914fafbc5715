"""How much the state repository grows per 10,000 operations, and after maintenance.

Run from the repository root::

    python -m bench.growth_bench [--operations 10000] [--services 20]

It creates ``--services`` gate services (three environments each) through
the Gates service, then performs ``--operations`` state operations: gate
test-and-set and the release of its ticket, alternately, on random
services, exactly as a pipeline would (every operation is one commit).
It prints the object directory's size before, after the operations, and
after ``gitstate maintenance`` with each strategy (run on copies, so both
start from the same repository).
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gitstate.gates.service import Gates
from gitstate.process.maintenance import count_objects, maintain
from gitstate.settings import GateSettings
from gitstate.store.branch import Store

ENVIRONMENTS = ["develop", "staging", "live"]


def du(path: Path) -> int:
    """Bytes the directory takes on disk (allocated blocks, as du counts them)."""
    return sum(item.stat().st_blocks * 512 for item in path.rglob("*") if item.is_file())


def describe(label: str, repo: Path) -> None:
    counts = count_objects(repo)
    print(
        f"{label:<32} loose {counts.loose:>7} objects {counts.loose_bytes / 1024:>9.0f} KiB"
        f"  packed {counts.packed:>7} objects {counts.pack_bytes / 1024:>7.0f} KiB"
        f"  repo on disk {du(repo) / 1024:>9.0f} KiB"
    )
    parts = {
        "packs": repo / "objects" / "pack",
        "commit-graph": repo / "objects" / "info",
        "reflogs": repo / "logs",
    }
    print(" " * 33 + "  ".join(f"{name} {du(path) / 1024:.0f} KiB" for name, path in parts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(
        f"{platform.platform()}, git {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.split()[-1]}"
    )
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "state.git"
        gates = Gates(Store(repo, fsync=False), GateSettings())
        for number in range(args.services):
            gates.create("ci", f"service-{number:03d}", ENVIRONMENTS, actor="bench")
        describe("after creating the services", repo)
        base = len(gates_log(repo))
        started = time.monotonic()
        done = 0
        while done < args.operations:
            service = f"service-{rng.randrange(args.services):03d}"
            env = rng.choice(ENVIRONMENTS)
            answer = gates.test_and_set(
                {"ci": {service: env}}, link=f"pipeline {done}", actor=f"pipeline-{done % 13}"
            ).body
            done += 1
            if answer.get("status") == "ok" and done < args.operations:
                gates.release(answer["ticket"]["id"], actor=f"pipeline-{done % 13}")
                done += 1
        elapsed = time.monotonic() - started
        commits = len(gates_log(repo)) - base
        print(f"{done} operations, {commits} commits in {elapsed:.1f}s")
        describe(f"after {done} operations", repo)
        for strategy in ("incremental", "gc"):
            copy = Path(tmp) / f"state-{strategy}.git"
            shutil.copytree(repo, copy)
            report = maintain(copy, strategy)
            describe(f"after maintenance ({strategy}, {report.seconds:.1f}s)", copy)
            report = maintain(copy, strategy)
            describe(f"  and a second run ({report.seconds:.1f}s)", copy)


def gates_log(repo: Path) -> list[str]:
    result = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-list", "refs/heads/state"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


if __name__ == "__main__":
    main()
