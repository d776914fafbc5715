"""The run's summary: operations, faults, latencies, commits, sizes, checks.

Printed as text, written as JSON next to the run, and appended as a dated
markdown section to ``docs/soak.md``.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.soak.checks import Check
from bench.soak.faults import Fault
from bench.soak.load import Op


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def repo_size(path: Path) -> int:
    """Return the bytes a repository takes on disk."""
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def maintain(config_path: Path, repos: Iterable[Path]) -> str:
    """Run ``gitstate maintenance`` once (or ``git gc`` where it does not exist)."""
    result = subprocess.run(
        [sys.executable, "-m", "gitstate", "maintenance", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode == 0:
        return "gitstate maintenance"
    for repo in repos:
        subprocess.run(["git", "--git-dir", str(repo), "gc", "-q"], check=True, timeout=600)
    return "git gc"


def summarize(
    *,
    args: dict[str, Any],
    ops: list[Op],
    faults: list[Fault],
    checks: list[Check],
    commits: dict[str, int],
    sizes: dict[str, dict[str, int]],
    maintenance: str,
    elapsed: float,
) -> dict[str, Any]:
    """Return the summary as plain data."""
    kinds: dict[str, list[Op]] = {}
    for op in ops:
        kinds.setdefault(op.kind, []).append(op)
    operations = {}
    for kind, items in sorted(kinds.items()):
        latencies = [op.latency for op in items if op.status is not None]
        statuses: dict[str, int] = {}
        for op in items:
            key = "lost" if op.status is None else f"{op.status // 100}xx"
            statuses[key] = statuses.get(key, 0) + 1
        operations[kind] = {
            "count": len(items),
            "statuses": statuses,
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        }
    by_fault: dict[str, dict[str, Any]] = {}
    for fault in faults:
        entry = by_fault.setdefault(fault.kind, {"count": 0, "recovered_s": []})
        entry["count"] += 1
        if fault.recovered_after is not None:
            entry["recovered_s"].append(fault.recovered_after)
    for entry in by_fault.values():
        times = entry.pop("recovered_s")
        entry["recovery_p50_s"] = round(statistics.median(times), 2) if times else None
        entry["recovery_max_s"] = round(max(times), 2) if times else None
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cpus()} cores, Python {platform.python_version()}",
        "args": args,
        "elapsed_s": round(elapsed, 1),
        "requests": len(ops),
        "operations": operations,
        "faults": by_fault,
        "commits": commits,
        "sizes": sizes,
        "maintenance": maintenance,
        "checks": [
            {
                "name": check.name,
                "passed": check.passed,
                "detail": check.detail,
                "problems": check.problems,
                "total_problems": check.total_problems,
            }
            for check in checks
        ],
        "passed": all(check.passed for check in checks),
    }


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def markdown(summary: dict[str, Any]) -> str:
    """Return the summary as a markdown section."""
    args = summary["args"]
    lines = [
        f"## {summary['date']}: {'passed' if summary['passed'] else 'FAILED'}",
        "",
        f"`python -m bench.soak --duration {args['duration']:g} --clients {args['clients']} "
        f"--envs {args['envs']} --modules {args['modules']} --seed {args['seed']}` "
        f"on {summary['machine']}; {summary['elapsed_s']} s in all, "
        f"{summary['requests']} requests.",
        "",
        "| operation | count | statuses | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for kind, entry in summary["operations"].items():
        statuses = ", ".join(f"{key} {value}" for key, value in sorted(entry["statuses"].items()))
        lines.append(
            f"| {kind} | {entry['count']} | {statuses} | {entry['p50_ms']} | {entry['p99_ms']} |"
        )
    lines += ["", "| fault | count | recovery p50 s | recovery max s |", "|---|---|---|---|"]
    for kind, entry in sorted(summary["faults"].items()):
        lines.append(
            f"| {kind} | {entry['count']} | {entry['recovery_p50_s']} | {entry['recovery_max_s']} |"
        )
    commits = summary["commits"]
    lines += [
        "",
        f"Commits created: {commits['state']} on the state branch, {commits['code']} "
        f"code-commits in storage.",
        "",
        f"Repository sizes before and after maintenance ({summary['maintenance']}):",
        "",
        "| repository | before | after |",
        "|---|---|---|",
    ]
    for repo, size in summary["sizes"].items():
        lines.append(f"| {repo} | {_mib(size['before'])} | {_mib(size['after'])} |")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for check in summary["checks"]:
        result = "pass" if check["passed"] else f"**FAIL** ({check['total_problems']})"
        lines.append(f"| {check['name']} | {result} | {check['detail']} |")
    for check in summary["checks"]:
        if not check["passed"]:
            lines += ["", f"{check['name']}:", ""]
            lines += [f"* {problem}" for problem in check["problems"]]
    return "\n".join(lines) + "\n"


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


def text(summary: dict[str, Any]) -> str:
    """Return the summary for the terminal (the markdown reads fine there)."""
    return markdown(summary)


def write(summary: dict[str, Any], out: Path, docs: Path | None) -> None:
    """Write ``summary.json`` in ``out`` and append the markdown section to ``docs``."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if docs is None:
        return
    if not docs.exists():
        docs.write_text(
            "# Soak runs\n\n"
            "`python -m bench.soak` (see bench/soak/__init__.py) runs the whole system "
            "under a mixed load with faults and hostile inputs, then checks from git and "
            "the live directories that nothing was lost. Each run appends a section; "
            "the JSON summary is in the run's directory.\n\n",
            encoding="utf-8",
        )
    with docs.open("a", encoding="utf-8") as stream:
        stream.write("\n" + markdown(summary) + "\n```json\n" + json.dumps(summary) + "\n```\n")
