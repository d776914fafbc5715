"""File-sync scale benchmark: what a client pays per change, by fixture size, beside g10k.

    python -m bench.filesync_scale_bench [--sizes 20x15,100x30,300x50] [--repeat 3]
    python -m bench.filesync_scale_bench --envs 1000 [--modules 30]

For each size (environments x modules) it builds the fixture with
bench/fixture.py, deploys every environment into storage with the engine
(bench/deploy_bench.py's ``deploy_all``), writes every environment into one
live directory (``LiveDir.apply``, in-process, which is what ``gitstate sync``
does with local storage), runs a first full check, then measures the client:

* **no-op sync**: a sync to the code-commit the live directory shows;
* **one file in one environment**: ``change_branch`` on production, deploy
  that environment, sync (``--repeat`` times, median); then emptying the
  trash (the pruned version's files, once ``keep_versions`` are kept; the
  longest is printed), which the client does after checking in;
* **one file in each of 50 environments**: 50 branches changed, deployed,
  one sync;
* **one module used by a third of the environments**: ``change_module`` on
  mod00's ``main``, deploy-all, one sync;
* **full check**: ``LiveDir.apply(verify=True)`` with nothing edited, CPU
  seconds (median of ``--repeat``), the interval the client then waits
  (``reconcile_interval`` 60 s, stretched to stay within
  ``reconcile_budget`` 2 %) and the share of one core that makes.

g10k deploys the same fixture into its own directory in the same run:
cold once, then a warm run with nothing changed and a warm run after each
change above, so each gitstate figure has its peer beside it. gitstate's
figures are the client's sync alone; the deploy into storage (server side)
is printed beside them. r10k is left out: at these sizes a run takes
minutes (see bench/deploy_bench.py for it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pygit2

from bench.deploy_bench import deploy_all, deploy_one
from bench.fixture import change_branch, change_module, environment_names, make_fixture
from gitstate.engine.storage import CODE_REF, Storage
from gitstate.filesync.livedir import LiveDir, SyncReport
from gitstate.settings import FileSyncSettings

SETTINGS = FileSyncSettings()
DEFAULT_SIZES = "20x15,100x30,300x50"


class Client:
    """One live directory synced from the fixture's storage, as ``gitstate sync`` does."""

    def __init__(self, live: Path, storage: Path) -> None:
        self.live = LiveDir(live, keep_versions=SETTINGS.keep_versions)
        self.storage = storage
        self.repo = pygit2.Repository(str(storage))
        self._lock = self.live.locked()
        self._lock.__enter__()

    def code(self) -> str:
        return str(pygit2.Repository(str(self.storage)).references[CODE_REF].target)

    def sync(self, *, verify: bool = False) -> tuple[float, float, SyncReport]:
        """Sync to the storage's code-commit; return wall seconds, CPU seconds, the report."""
        code = self.code()
        wall, cpu = time.perf_counter(), time.process_time()
        report = self.live.apply(self.repo, code, verify=verify)
        return time.perf_counter() - wall, time.process_time() - cpu, report

    def close(self) -> None:
        self._lock.__exit__(None, None, None)


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def g10k(out: Path) -> float | None:
    if shutil.which("g10k") is None:
        return None
    command = ["g10k", "-config", str(out / "g10k.yaml")]
    return timed(lambda: subprocess.run(command, check=True, capture_output=True))


def metadata_bytes(live: Path) -> int:
    """Bytes of the client's own bookkeeping: version markers and the state file."""
    total = os.path.getsize(live / ".gitstate-sync.json")
    for marker in (live / ".versions").glob("*/*.json"):
        total += marker.stat().st_size
    return total


def fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value:.3f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def measure(base: Path, envs: int, modules: int, repeat: int) -> dict[str, Any]:
    out = base / f"{envs}x{modules}"
    shutil.rmtree(out, ignore_errors=True)
    fixture = out / "fixture"
    make_fixture(fixture, envs, modules)
    remote = (fixture / "control.git").as_uri()
    datadir = out / "data"
    row: dict[str, Any] = {"size": f"{envs}x{modules}"}
    row["deploy all"] = timed(lambda: deploy_all(datadir, remote))
    client = Client(out / "live", datadir / "storage.git")
    try:
        row["cold sync"], _cpu, cold = client.sync()
        row["files"] = cold.written + cold.linked
        client.sync(verify=True)  # the first check after writing hashes the new objects
        row["g10k cold"] = g10k(fixture)

        row["no-op"] = statistics.median(client.sync()[0] for _ in range(5 * repeat))
        row["g10k warm"] = g10k(fixture)

        checks = [client.sync(verify=True) for _ in range(repeat)]
        cpu = statistics.median(item[1] for item in checks)
        assert not any(item[2].local_edits for item in checks)
        interval = max(SETTINGS.reconcile_interval, cpu / SETTINGS.reconcile_budget)
        row["check cpu"], row["check interval"] = cpu, interval
        row["check share"] = cpu / interval
        row["check hashed"] = checks[-1][2].hashed

        one, trash, deploys, peers, reports = [], [], [], [], []
        for serial in range(repeat):
            change_branch(fixture, "production", 1000 + serial)
            deploys.append(timed(lambda: deploy_one(datadir, remote, "production")))
            wall, _cpu, report = client.sync()
            one.append(wall)
            reports.append(report)
            trash.append(timed(client.live.empty_trash))
            peers.append(g10k(fixture))
        assert all(report.updated == ["production"] for report in reports)
        row["one file"] = statistics.median(one)
        row["one file written/linked"] = (reports[-1].written, reports[-1].linked)
        row["one file trash"] = max(trash)  # only the syncs that pruned a version have any
        row["one file deploy"] = statistics.median(deploys)
        row["g10k one file"] = None if None in peers else statistics.median(peers)

        names = environment_names(envs)[: min(50, envs)]
        for branch in names:
            change_branch(fixture, branch, 2000)
        row["fifty deploy"] = timed(lambda: deploy_all(datadir, remote))
        row["fifty"], _cpu, report = client.sync()
        row["fifty envs"] = len(report.updated)
        row["fifty written/linked"] = (report.written, report.linked)
        row["fifty trash"] = timed(client.live.empty_trash)
        row["g10k fifty"] = g10k(fixture)

        change_module(fixture, "mod00", 3000)
        row["module deploy"] = timed(lambda: deploy_all(datadir, remote))
        row["module"], _cpu, report = client.sync()
        row["module envs"] = len(report.updated)
        row["module written/linked"] = (report.written, report.linked)
        row["module trash"] = timed(client.live.empty_trash)
        row["g10k module"] = g10k(fixture)

        storage = Storage(datadir / "storage.git")
        row["published_one"] = statistics.median(
            timed(lambda: storage.published_one("production")) for _ in range(20)
        )
        row["published all"] = statistics.median(
            timed(lambda: Storage(datadir / "storage.git").published()) for _ in range(3)
        )
        row["metadata"] = metadata_bytes(out / "live")
    finally:
        client.close()
    return row


def report(rows: list[dict[str, Any]], repeat: int) -> None:
    print(
        f"# {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cores  "
        f"{platform.python_implementation()} {platform.python_version()}  "
        f"pygit2 {pygit2.__version__}  medians of {repeat}"
    )
    print()
    print(
        "| size | files | no-op sync | one file, one env | one file, 50 envs "
        "| one module, 1/3 of envs | full check CPU / interval (share of a core) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['size']} | {row['files']:,} | {fmt(row['no-op'])} "
            f"| **{fmt(row['one file'])}** (g10k {fmt(row['g10k one file'])}) "
            f"| {fmt(row['fifty'])} ({row['fifty envs']} envs; g10k {fmt(row['g10k fifty'])}) "
            f"| {fmt(row['module'])} ({row['module envs']} envs; g10k {fmt(row['g10k module'])}) "
            f"| {fmt(row['check cpu'])} / {row['check interval']:.0f} s "
            f"(**{100 * row['check share']:.2f} %**) |"
        )
    print()
    print(
        "| size | g10k cold | g10k warm, no change | gitstate cold sync | deploy-all into storage |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['size']} | {fmt(row['g10k cold'])} | {fmt(row['g10k warm'])} "
            f"| {fmt(row['cold sync'])} | {fmt(row['deploy all'])} |"
        )
    print()
    for row in rows:
        print(f"## {row['size']}")
        for key, value in row.items():
            if key == "size":
                continue
            if isinstance(value, float):
                value = f"{value:.4f} s" if key != "check share" else f"{100 * value:.3f} %"
            print(f"  {key:28s} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="envs x modules, comma-separated")
    parser.add_argument("--envs", type=int, help="one size: this many environments")
    parser.add_argument("--modules", type=int, default=30, help="modules, with --envs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build everything here and keep it")
    args = parser.parse_args()
    if args.envs:
        sizes = [(args.envs, args.modules)]
    else:
        sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    base = args.keep or Path(tempfile.mkdtemp(prefix="gitstate-filesync-scale-"))
    rows = []
    try:
        for envs, modules in sizes:
            rows.append(measure(base, envs, modules, args.repeat))
            print(f"done {envs}x{modules}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    report(rows, args.repeat)


if __name__ == "__main__":
    main()
