"""Deploy benchmark: gitstate against r10k and g10k on the same fixture, same run.

    python -m bench.deploy_bench [--envs 20] [--modules 15] [--repeat 3] [--keep DIR]

Builds the fixture with bench/fixture.py, then times:

* r10k and g10k as ../shared/bench/peers.sh does (a fresh process each run):
  cold (empty cache), warm (nothing changed), and one environment changed;
* gitstate's deploy-all (collect, fetch module remotes, deploy every
  environment, purge) with a fresh Deployer each run, so nothing is reused
  from memory: cold (empty datadir), no-op, and one environment changed;
  the changed environment alone, too;
* the no-op deploy-all again in a new Python process, to show what
  interpreter start-up and imports add when comparing with the peers' CLIs;
* an export of every environment tree from storage to files, because g10k
  and r10k write files while gitstate writes git objects: "cold + export"
  is the fair comparison with files on disk.

Each figure is the median of ``--repeat`` runs. Ratios are gitstate / g10k.
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
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from bench.fixture import change_branch, make_fixture
from gitstate.engine.environments import Deployer
from gitstate.engine.sources import Sources
from gitstate.settings import SourceSettings

HERE = Path(__file__).resolve().parent
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def peer_command(tool: str, out: Path) -> list[str]:
    if tool == "r10k":
        return ["r10k", "deploy", "environment", "--modules", "-c", str(out / "r10k.yaml")]
    return ["g10k", "-config", str(out / "g10k.yaml")]


def run_peer(tool: str, out: Path) -> None:
    subprocess.run(peer_command(tool, out), check=True, capture_output=True)


def _modules(remote: str) -> Path:
    """Where the fixture's module repositories are: beside its control repository."""
    return Path(urllib.parse.urlsplit(remote).path).parent / "modules"


def deploy_all(datadir: Path | str, remote: str) -> Deployer:
    dep = Deployer(
        Path(datadir),
        Sources.from_settings({"main": SourceSettings(remote=remote)}),
        local_module_sources=[_modules(remote)],
    )
    collection = dep.collect()
    dep.prefetch(collection)
    for env in collection.names():
        dep.deploy(env, collection=collection, purge=False)
    dep.purge(collection)
    return dep


def deploy_one(datadir: Path, remote: str, env: str) -> None:
    dep = Deployer(
        datadir,
        Sources.from_settings({"main": SourceSettings(remote=remote)}),
        local_module_sources=[_modules(remote)],
    )
    dep.deploy(env)


def export_all(datadir: Path, target: Path) -> int:
    dep = Deployer(datadir, Sources.from_settings({}))
    shutil.rmtree(target, ignore_errors=True)
    files = 0
    links: dict = {}
    for env, commit in dep.environments().items():
        files += dep.storage.export(commit, target / env, links)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", type=int, default=20)
    parser.add_argument("--modules", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the fixture here and keep it")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="gitstate-bench-"))
    out = base / "fixture"
    shutil.rmtree(out, ignore_errors=True)
    make_fixture(out, args.envs, args.modules)
    remote = (out / "control.git").as_uri()
    results: dict[str, float] = {}
    serial = 0

    peers = [tool for tool in ("r10k", "g10k") if shutil.which(tool)]
    for tool in peers:
        cold, warm, changed = [], [], []
        for _ in range(args.repeat):
            shutil.rmtree(out / tool, ignore_errors=True)
            cold.append(timed(lambda tool=tool: run_peer(tool, out)))
            warm.append(timed(lambda tool=tool: run_peer(tool, out)))
            serial += 1
            change_branch(out, "staging", serial)
            changed.append(timed(lambda tool=tool: run_peer(tool, out)))
        results[f"{tool} cold"] = median(cold)
        results[f"{tool} warm"] = median(warm)
        results[f"{tool} one change"] = median(changed)

    cold, noop, changed, single, export, process = [], [], [], [], [], []
    files = 0
    for _ in range(args.repeat):
        datadir = base / "gitstate"
        shutil.rmtree(datadir, ignore_errors=True)
        cold.append(timed(lambda datadir=datadir: deploy_all(datadir, remote)))
        noop.append(timed(lambda datadir=datadir: deploy_all(datadir, remote)))
        script = (
            f"from bench.deploy_bench import deploy_all; deploy_all({str(datadir)!r}, {remote!r})"
        )
        command = [sys.executable, "-c", script]
        process.append(
            timed(lambda command=command: subprocess.run(command, check=True, cwd=HERE.parent))
        )
        serial += 1
        change_branch(out, "staging", serial)
        changed.append(timed(lambda datadir=datadir: deploy_all(datadir, remote)))
        serial += 1
        change_branch(out, "staging", serial)
        single.append(timed(lambda datadir=datadir: deploy_one(datadir, remote, "staging")))
        start = time.perf_counter()
        files = export_all(datadir, base / "export")
        export.append(time.perf_counter() - start)
    results["gitstate cold"] = median(cold)
    results["gitstate no-op"] = median(noop)
    results["gitstate no-op (new process)"] = median(process)
    results["gitstate one change (deploy-all)"] = median(changed)
    results["gitstate one change (that env)"] = median(single)
    results["gitstate export all envs to files"] = median(export)
    results["gitstate cold + export"] = (
        results["gitstate cold"] + results["gitstate export all envs to files"]
    )

    print(
        f"# {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cores  "
        f"{platform.python_implementation()} {platform.python_version()}  "
        f"fixture {args.envs} envs x {args.modules} modules, {files} files exported, "
        f"median of {args.repeat}"
    )
    for name, value in results.items():
        print(f"{name:40s} {value:8.3f} s")
    if "g10k cold" in results:
        g_cold, g_warm = results["g10k cold"], results["g10k warm"]
        print()
        print(f"{'cold / g10k cold':40s} {results['gitstate cold'] / g_cold:8.3f}  (target <= 0.5)")
        print(
            f"{'cold + export / g10k cold':40s} {results['gitstate cold + export'] / g_cold:8.3f}"
        )
        print(
            f"{'no-op / g10k warm':40s} {results['gitstate no-op'] / g_warm:8.3f}  (target <= 0.1)"
        )
        print(
            f"{'one change / g10k one change':40s} "
            f"{results['gitstate one change (deploy-all)'] / results['g10k one change']:8.3f}"
        )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
