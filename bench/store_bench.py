"""State-branch benchmark: CAS commits/s and read latency, against raw pygit2.

Run from the repository root (not part of the test run):

    python -m bench.store_bench [--seconds 3] [--history 100000] [--out DIR]

Every figure is printed next to the raw pygit2 loop of bench/raw.py measured
in the same run on the same tree shape (1,000 records, 10 x 100), so the
ratio is what gitstate's own code costs. Each figure is the median of
``--runs`` runs, and each contended run sits between two raw runs. Targets
(issue 2): one writer >= 80% of raw; 16 writer processes >= 70% of the raw
one-process rate with zero lost updates; read latency flat in history
length. The contended runs have every writer increment one counter (each
commit then depends on the one before: the worst case), and, for
comparison, 16 writers with a record each (writers of different gates or
deploys).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.raw import COUNTER, raw_commits_per_second, raw_rates, seed_records
from gitstate.base import metrics
from gitstate.store.branch import Store


def increment(draft, path: str = COUNTER):
    record = draft.get(path)
    record["value"] += 1
    draft.put(path, record)
    return record["value"]


def own_record(slot: int) -> str:
    """Return the record writer ``slot`` increments when writers do not share one."""
    return f"records/d{slot % 10:02d}/r{slot // 10 + 1:03d}.yaml"


def gitstate_rates(path: Path, seconds: float, fsync: bool = False) -> tuple[float, float]:
    """Return (commits per wall-clock second, commits per CPU second) of one writer."""
    seed_records(path).free()
    store = Store(path, create=False, fsync=fsync)
    count = 0
    started, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        store.transact(increment, subject="bench increments", operation="bench.increment")
        count += 1
    rates = (
        count / (time.perf_counter() - started),
        count / max(time.process_time() - cpu, 1e-9),
    )
    store.close()
    return rates


def _writer(path: str, seconds: float, barrier, results, record: str) -> None:
    # Each writer opens the store, reads the tip and loads its metrics before
    # the clock starts: the benchmark measures commits, not process start-up.
    store = Store(path, create=False, deadline=60)
    store.get(record)
    metrics.start()

    def change(draft):
        return increment(draft, record)

    barrier.wait()
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        store.transact(change, subject="bench increments", operation="bench.increment")
        count += 1
    results.put((count, time.perf_counter() - started))


def contended_rate(
    path: Path, writers: int, seconds: float, shared: bool = True
) -> tuple[float, int, int, int]:
    """Return (commits/s, acknowledged, sum of the counters, commits on the branch).

    With ``shared`` every writer increments the one counter record, so each
    commit depends on the one before (the worst case); otherwise each
    writer has a record of its own, as writers of different gates do.
    """
    seed_records(path).free()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers)
    results = ctx.Queue()
    records = [COUNTER if shared else own_record(slot) for slot in range(writers)]
    procs = [
        ctx.Process(target=_writer, args=(str(path), seconds, barrier, results, record))
        for record in records
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    acknowledged = sum(count for count, _ in outcomes)
    elapsed = max(spent for _, spent in outcomes)
    store = Store(path, create=False)
    value = sum(store.get(record)["value"] for record in set(records))
    commits = int(
        subprocess.run(
            ["git", "rev-list", "--count", "state"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return acknowledged / elapsed, acknowledged, value, commits - 1  # minus the seed commit


def build_history(path: Path, commits: int) -> None:
    """Give the state branch ``commits`` commits with git fast-import (fast)."""
    seed_records(path).free()
    tip = subprocess.run(
        ["git", "rev-parse", "state"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()
    lines = []
    for n in range(commits):
        data = b"schema_version: 1\nvalue: %d\n" % n
        target = f"records/d{n % 10:02d}/r{(n // 10) % 100:03d}.yaml"
        message = f"history {n}\n".encode()
        lines.append(b"commit refs/heads/state\n")
        lines.append(b"committer bench <bench@example.invalid> %d +0000\n" % (1_700_000_000 + n))
        lines.append(b"data %d\n%s" % (len(message), message))
        if n == 0:
            lines.append(f"from {tip}\n".encode())
        lines.append(f"M 100644 inline {target}\n".encode())
        lines.append(b"data %d\n%s\n" % (len(data), data))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input=b"".join(lines), check=True)


def read_latency(path: Path, samples: int = 2000) -> tuple[float, float]:
    """Return (warm p50 µs, cold p50 µs) for reading one record."""
    probe = "records/d05/r050.yaml"
    store = Store(path, create=False)
    store.get(probe)
    warm = []
    for _ in range(samples):
        started = time.perf_counter()
        store.get(probe)
        warm.append(time.perf_counter() - started)
    cold = []
    for _ in range(min(samples, 300)):
        started = time.perf_counter()
        fresh = Store(path, create=False)
        fresh.get(probe)
        cold.append(time.perf_counter() - started)
        fresh.close()
    return statistics.median(warm) * 1e6, statistics.median(cold) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed run")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per figure (the median is printed)"
    )
    parser.add_argument(
        "--history", type=int, default=100_000, help="commits of history for the read test"
    )
    parser.add_argument("--out", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    scratch = Path(args.out or tempfile.mkdtemp(prefix="gitstate-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1_000_000))

    def fresh() -> Path:
        path = scratch / f"r{next(counter)}.git"
        shutil.rmtree(path, ignore_errors=True)
        return path

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(f"scratch: {scratch}")
    # Raw and gitstate runs alternate so that noise from a shared machine
    # falls on both alike; each figure is the median of its runs.
    raws, ones = [], []
    for _ in range(args.runs):
        raws.append(raw_rates(fresh(), args.seconds))
        ones.append(gitstate_rates(fresh(), args.seconds))
    raw, one = (statistics.median(r[0] for r in runs) for runs in (raws, ones))
    raw_cpu, one_cpu = (statistics.median(r[1] for r in runs) for runs in (raws, ones))
    raw_runs = ", ".join(f"{r[0]:.0f}" for r in raws)
    one_runs = ", ".join(f"{r[0]:.0f}" for r in ones)
    print(f"raw pygit2 loop, 1 process:      {raw:8.0f} commits/s  (runs: {raw_runs})")
    print(
        f"gitstate, 1 writer:              {one:8.0f} commits/s  = {one / raw:5.1%} of raw  (runs: {one_runs})"
    )
    print(
        f"per CPU second (steady under load): raw {raw_cpu:.0f}/s, gitstate {one_cpu:.0f}/s"
        f" = {one_cpu / raw_cpu:5.1%} of raw"
    )
    for writers, shared in ((4, True), (16, True), (16, False)):
        # Each run sits between two raw runs, and the figure is the median
        # ratio: the VM's speed drifts from one minute to the next, and
        # sixteen processes feel a busy host more than one does.
        ratios, rates, counts = [], [], [0, 0, 0]
        for _ in range(args.runs):
            before = raw_commits_per_second(fresh(), args.seconds)
            rate, acked, value, commits = contended_rate(fresh(), writers, args.seconds, shared)
            after = raw_commits_per_second(fresh(), args.seconds)
            ratios.append(rate / ((before + after) / 2))
            rates.append(rate)
            counts = [counts[0] + acked, counts[1] + value, counts[2] + commits]
        acked, value, commits = counts
        what = "one counter" if shared else "own records"
        runs = ", ".join(f"{ratio:.1%}" for ratio in ratios)
        print(
            f"gitstate, {writers:2d} writers, {what}: {statistics.median(rates):8.0f} commits/s"
            f"  = {statistics.median(ratios):5.1%} of raw 1-process (runs: {runs});"
            f" acknowledged {acked}, counters {value}, commits {commits}, lost {acked - value}"
        )
    raw_fsync = raw_commits_per_second(fresh(), args.seconds, fsync=True)
    one_fsync = gitstate_rates(fresh(), args.seconds, fsync=True)[0]
    print(
        f"with fsync: raw {raw_fsync:6.0f}/s, gitstate {one_fsync:6.0f}/s = {one_fsync / raw_fsync:5.1%} of raw"
    )

    short = fresh()
    seed_records(short).free()
    warm1, cold1 = read_latency(short)
    long = fresh()
    started = time.perf_counter()
    build_history(long, args.history)
    built = time.perf_counter() - started
    warm_n, cold_n = read_latency(long)
    print(
        f"read one record, 1 commit:        warm p50 {warm1:6.1f} µs, cold (open + read) p50 {cold1:7.1f} µs"
    )
    print(
        f"read one record, {args.history} commits: warm p50 {warm_n:6.1f} µs, cold (open + read) p50 {cold_n:7.1f} µs"
        f"  (history built in {built:.1f}s)"
    )
    if not args.out:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
