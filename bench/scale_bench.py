"""Scale: deploy-all of hundreds of environments, as a user waits for it, beside g10k.

    python -m bench.scale_bench [--sizes 100x30 300x50 1000x30] [--pushes 5] [--no-g10k]

For each size (environments x modules) it builds the fixture
(:mod:`bench.fixture`), then, on ``gitstate serve`` with its default
configuration and two file-sync clients (:class:`bench.site.Site`):

* **deploy-all, wait**: the time until the answer, which comes when every
  client has every environment; ``all-synced`` is checked afterwards, and
  the time per environment is compared with the smallest size's (linear
  growth keeps the ratio near 1; the target is at most 1.5);
* **no-op**: deploy-all with wait again;
* **one push**: one branch changed, its deploy asked for, until both live
  directories show it (median of ``--pushes``);
* **status**: ``GET deploys/status`` p50 and p99 over 50 requests, and its
  size in bytes;
* **state bytes per deploy**: how much ``state.git`` grew during the cold
  deploy-all, per deploy, as written (loose objects) and after
  ``gitstate maintenance`` packs it.

g10k runs cold and warm on the same fixture in the same run (``--no-g10k``
skips it: at 1,000 environments it takes many minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.deploy_path_bench import deploy_all, g10k, percentile, push_to_live, settle
from bench.fixture import environment_names, make_fixture
from bench.site import Site


def repository_bytes(repo: Path) -> int:
    """Return the bytes of every object file of a repository (loose and packed)."""
    total = 0
    for folder, _dirs, files in os.walk(repo / "objects"):
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return total


def maintain(site: Site) -> None:
    """Run ``gitstate maintenance`` once, as an operator's timer would."""
    subprocess.run(
        [sys.executable, "-m", "gitstate", "maintenance", "--config", str(site.config_path)],
        check=True,
        capture_output=True,
    )


def measure(base: Path, envs: int, modules: int, pushes: int, peer: bool) -> dict[str, float]:
    """Run every measure on one size; return the figures by name."""
    out = make_fixture(base / f"fixture-{envs}x{modules}", envs, modules)
    figures: dict[str, float] = {}
    if peer:
        shutil.rmtree(out / "g10k", ignore_errors=True)
        figures["g10k cold"] = g10k(out)
        figures["g10k warm"] = g10k(out)
    site = Site(base / f"site-{envs}x{modules}", out / "control.git")
    state = site.datadir / "state.git"
    try:
        site.start()
        before = repository_bytes(state)
        figures["cold"] = deploy_all(site)
        grown = repository_bytes(state) - before
        figures["no-op"] = deploy_all(site)
        names = environment_names(envs)
        samples = [push_to_live(site, out, names[i % envs], i + 1) for i in range(pushes)]
        figures["push p50"] = statistics.median(samples)
        settle()
        latencies = []
        size = 0
        for _ in range(50):
            start = time.perf_counter()
            answer = site.session.get(f"{site.base}/code-manager/v1/deploys/status", timeout=30)
            latencies.append(time.perf_counter() - start)
            size = len(answer.content)
        figures["status p50"] = percentile(latencies, 0.5)
        figures["status p99"] = percentile(latencies, 0.99)
        figures["status bytes"] = size
        figures["state bytes per deploy (loose)"] = grown / envs
        maintain(site)
        figures["state bytes per deploy (packed)"] = repository_bytes(state) / (2 * envs + pushes)
    finally:
        site.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["100x30", "300x50", "1000x30"])
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--no-g10k", action="store_true", help="do not run g10k")
    parser.add_argument("--keep", type=Path, help="work here and keep it")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="gitstate-scale-"))
    results: list[tuple[int, int, dict[str, float]]] = []
    for size in args.sizes:
        envs, modules = (int(part) for part in size.split("x"))
        figures = measure(base, envs, modules, args.pushes, not args.no_g10k)
        results.append((envs, modules, figures))
        print(f"{size}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
    print()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} cores  "
        f"gitstate serve, default config, two file-sync clients"
    )
    first = results[0][2]["cold"] / results[0][0]
    header = (
        "| size | deploy-all, wait | per env (vs smallest) | g10k cold | ratio | no-op "
        "| g10k warm | ratio | one push p50 | status p50 / p99 | status size "
        "| state bytes/deploy loose / packed |"
    )
    print(header)
    print("|---" * 12 + "|")
    for envs, modules, fig in results:
        per = fig["cold"] / envs
        cold_ratio = f"{fig['cold'] / fig['g10k cold']:.2f}x" if "g10k cold" in fig else "-"
        warm_ratio = f"{fig['no-op'] / fig['g10k warm']:.3f}x" if "g10k warm" in fig else "-"
        print(
            f"| {envs} x {modules} | {fig['cold']:.1f} s | {per * 1000:.0f} ms ({per / first:.2f}) "
            f"| {fig.get('g10k cold', float('nan')):.1f} s | {cold_ratio} | {fig['no-op']:.2f} s "
            f"| {fig.get('g10k warm', float('nan')):.1f} s | {warm_ratio} "
            f"| {fig['push p50']:.2f} s | {fig['status p50'] * 1000:.0f} / "
            f"{fig['status p99'] * 1000:.0f} ms | {fig['status bytes'] / 1024:.0f} KiB "
            f"| {fig['state bytes per deploy (loose)'] / 1024:.1f} / "
            f"{fig['state bytes per deploy (packed)'] / 1024:.2f} KiB |"
        )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
