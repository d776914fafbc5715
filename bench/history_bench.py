"""History of one record at 1,000 to 1,000,000 state commits, beside ``git log``.

    python -m bench.history_bench [--commits 1000 100000 1000000] [--keep DIR]

For each size it builds a state branch with ``git fast-import`` (gate
records ``gates/g<k>/s<j>.yaml`` changed round-robin, one record per commit,
and one *rare* record changed only at the first commit and every 100,000th),
then measures:

* **index build**: bringing the history index from nothing to the tip (what
  ``gitstate maintenance`` does once for a repository that never had one;
  writers keep it current from then on);
* **history, 20 entries**: :meth:`gitstate.store.branch.Store.history` of a busy
  record and of the rare one, p50 and p99 over 50 calls;
* **a commit, with and without the index update**: the mean of 200
  :meth:`gitstate.store.branch.Store.transact` calls (a writer updates the index
  after every ``INDEX_EVERY``-th commit of its own, so the mean is what it
  pays), to show what keeping the index current costs a writer;
* the peer, in the same run: ``git log --first-parent -n 20 -- PATH`` on the
  same repository (no commit-graph), once per record.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pygit2

from bench.deploy_path_bench import percentile
from bench.fixture import GIT_ENV
from gitstate.store import history_index
from gitstate.store.branch import DEFAULT_REF, Store

RECORDS = 500
RARE = "gates/rare/only.yaml"
_WHEN = 1767225600


def build(repo: Path, commits: int) -> None:
    """Write a state branch of ``commits`` commits with fast-import."""
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True, env=GIT_ENV)
    feed = subprocess.Popen(
        ["git", "--git-dir", str(repo), "fast-import", "--quiet", "--done"],
        stdin=subprocess.PIPE,
        env=GIT_ENV,
    )
    assert feed.stdin is not None
    out = feed.stdin
    for n in range(commits):
        if n % 100_000 == 0:
            path = RARE
        else:
            k = n % RECORDS
            path = f"gates/g{k % 25}/s{k}.yaml"
        data = f"schema_version: 1\nn: {n}\n".encode()
        message = f"step {n}\n\nActor: bench\nOperation: bench\n".encode()
        parts = [
            f"commit {DEFAULT_REF}\n".encode(),
            f"committer bench <bench@example.invalid> {_WHEN + n} +0000\n".encode(),
            f"data {len(message)}\n".encode(),
            message,
            f"M 100644 inline {path}\n".encode(),
            f"data {len(data)}\n".encode(),
            data,
            b"\n",
        ]
        out.write(b"".join(parts))
    out.write(b"done\n")
    out.close()
    if feed.wait() != 0:
        raise SystemExit("fast-import failed")


def timed(call: Callable[[], object], runs: int) -> list[float]:
    """Return the seconds of ``runs`` calls."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def git_log(repo: Path, path: str) -> float:
    """Seconds ``git log`` takes to list a record's last 20 changes."""
    started = time.perf_counter()
    subprocess.run(
        [
            "git",
            "--git-dir",
            str(repo),
            "log",
            "--first-parent",
            "-n",
            "20",
            "--format=%H",
            DEFAULT_REF,
            "--",
            path,
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def commit_cost(store: Store, indexed: bool) -> float:
    """Median seconds of a one-record commit, with or without the index update."""
    if not indexed:
        store._index_after_commit = lambda commit: None  # type: ignore[method-assign]
    try:
        tag = "with" if indexed else "without"

        def write(n: list[int] = [0]) -> None:  # noqa: B006 - a counter
            n[0] += 1
            store.transact(
                lambda d: d.put(f"bench/{tag}.yaml", {"schema_version": 1, "n": n[0]}),
                subject="bench",
                operation="bench",
            )

        return statistics.fmean(timed(write, 200))
    finally:
        vars(store).pop("_index_after_commit", None)


def measure(root: Path, commits: int) -> dict[str, float]:
    repo = root / f"state-{commits}.git"
    started = time.perf_counter()
    build(repo, commits)
    built = time.perf_counter() - started
    store = Store(repo, create=False)
    tip = pygit2.Oid(hex=store.head())
    index = history_index.HistoryIndex(repo, DEFAULT_REF)
    started = time.perf_counter()
    index.catch_up(tip, wait=60)
    index_build = time.perf_counter() - started
    index.close()
    busy = [f"gates/g{k % 25}/s{k}.yaml" for k in range(1, RECORDS, 10)]
    calls = iter(busy * 2)
    hot = timed(lambda: store.history(next(calls), limit=20), 50)
    rare = timed(lambda: store.history(RARE, limit=20), 50)
    figures = {
        "fast-import": built,
        "index build": index_build,
        "history busy p50": percentile(hot, 0.5),
        "history busy p99": percentile(hot, 0.99),
        "history rare p50": percentile(rare, 0.5),
        "history rare p99": percentile(rare, 0.99),
        "git log busy": git_log(repo, busy[0]),
        "git log rare": git_log(repo, RARE),
    }
    figures["commit with index"] = commit_cost(store, True)
    figures["commit without index"] = commit_cost(store, False)
    store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--commits", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    parser.add_argument("--keep", type=Path, help="build here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitstate-history-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        results = {n: measure(root, n) for n in args.commits}
    names = list(next(iter(results.values())))
    print(f"\n# {time.strftime('%Y-%m-%d %H:%M')}  history of one record (seconds)")
    print(f"{'measure':<24}" + "".join(f"{n:>14,}" for n in results))
    for name in names:
        print(f"{name:<24}" + "".join(f"{results[n][name]:>14.4f}" for n in results))


if __name__ == "__main__":
    main()
