"""The deploy path as a user waits for it, against g10k in the same run.

    python -m bench.deploy_path_bench [--envs 20] [--modules 15] [--runs 3] [--pushes 10]

What a user waits for is ``POST /code-manager/v1/deploys {"deploy-all": true,
"wait": true}``: it answers when every file-sync client has the result. This
benchmark times exactly that, through HTTP, against ``gitstate serve`` with
its default configuration (:class:`bench.site.Site`: two deploy workers,
fsync on, two file-sync clients, one of them over HTTP):

* **cold**: a new, empty installation (server started, clients checked in,
  then the clock starts), deploy-all with wait;
* **no-op**: deploy-all with wait again, nothing changed;
* **one push**: one branch changed, its deploy asked for (what a webhook
  does), until the change is readable in *both* live directories,
  ``--pushes`` times per run (p50 and p99 over all of them);

and g10k the way ../shared/bench/peers.sh runs it (a fresh process; cold
with its cache and basedir removed, warm right after), alternating with
gitstate run by run so noise falls on both. Each figure is the median over
``--runs``. Ratios are gitstate / g10k.

The answer of every deploy-all is checked: every environment ``complete``
and ``all-synced`` true afterwards; a run that is not is reported, not
timed.
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
from pathlib import Path

from bench.fixture import change_branch, environment_names, make_fixture
from bench.site import Site


def settle() -> None:
    """Write out what earlier steps left dirty, so no timed step pays for it."""
    os.sync()


def g10k(out: Path) -> float:
    """Run g10k on the fixture once; return the seconds it took."""
    settle()
    start = time.perf_counter()
    subprocess.run(["g10k", "-config", str(out / "g10k.yaml")], check=True, capture_output=True)
    return time.perf_counter() - start


def deploy_all(site: Site) -> float:
    """Deploy everything with wait; check the answer; return the seconds it took."""
    settle()
    start = time.perf_counter()
    answer = site.deploy({"deploy-all": True, "wait": True})
    took = time.perf_counter() - start
    bad = [item for item in answer if item.get("status") != "complete" or item.get("error")]
    if bad:
        raise RuntimeError(f"deploy-all did not complete: {bad[:3]} ({len(bad)} in all)")
    synced = site.status()["file-sync-client-status"]["all-synced"]
    if not synced:
        raise RuntimeError("deploy-all answered before every client was synced")
    return took


def push_to_live(site: Site, out: Path, branch: str, serial: int) -> float:
    """Change ``branch``, ask for its deploy; return seconds until both clients show it."""
    wanted = f"---\nprofile::base::motd: 'change {serial}'\n"
    change_branch(out, branch, serial)
    settle()
    start = time.perf_counter()
    site.deploy({"environments": [branch]})
    until = start + 120
    while True:
        if all(site.live_text(name, branch, "data/common.yaml") == wanted for name in site.live):
            return time.perf_counter() - start
        if time.perf_counter() > until:
            raise RuntimeError(f"{branch} did not reach both clients in 120 s")
        time.sleep(0.002)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", type=int, default=20)
    parser.add_argument("--modules", type=int, default=15)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="work here and keep it")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="gitstate-path-"))
    out = make_fixture(base / "fixture", args.envs, args.modules)
    names = environment_names(args.envs)
    figures: dict[str, list[float]] = {
        "g10k cold": [],
        "g10k warm": [],
        "cold": [],
        "no-op": [],
        "push": [],
    }
    serial = 0
    for run in range(args.runs):
        shutil.rmtree(out / "g10k", ignore_errors=True)
        figures["g10k cold"].append(g10k(out))
        figures["g10k warm"].append(g10k(out))
        site = Site(base / f"site-{run}", out / "control.git")
        try:
            site.start()
            figures["cold"].append(deploy_all(site))
            figures["no-op"].append(deploy_all(site))
            for push in range(args.pushes):
                serial += 1
                branch = names[(run * args.pushes + push) % len(names)]
                figures["push"].append(push_to_live(site, out, branch, serial))
            # The state after the pushes: nothing left behind, every client synced.
            figures["no-op"].append(deploy_all(site))
        finally:
            site.stop()
        print(
            f"run {run + 1}: g10k cold {figures['g10k cold'][-1]:.2f} s, "
            f"warm {figures['g10k warm'][-1]:.2f} s; gitstate cold {figures['cold'][-1]:.2f} s, "
            f"no-op {figures['no-op'][-2]:.3f} s, push p50 "
            f"{statistics.median(figures['push'][-args.pushes :]):.3f} s",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(base / f"site-{run}", ignore_errors=True)

    median = {name: statistics.median(values) for name, values in figures.items()}
    print()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} cores  "
        f"fixture {args.envs} envs x {args.modules} modules, median of {args.runs} runs "
        f"({len(figures['push'])} pushes)"
    )
    print(f"{'measure':44s} {'gitstate':>10s} {'g10k':>10s} {'ratio':>8s}  target")
    rows = [
        ("cold deploy-all, wait (vs g10k cold)", median["cold"], median["g10k cold"], "<= 0.3"),
        ("no-op deploy-all, wait (vs g10k warm)", median["no-op"], median["g10k warm"], "<= 0.1"),
    ]
    for label, ours, peer, target in rows:
        print(f"{label:44s} {ours:10.3f} {peer:10.3f} {ours / peer:8.3f}  {target}")
    pushes = figures["push"]
    print(
        f"{'one push, on both clients: p50 / p99':44s} "
        f"{percentile(pushes, 0.5):10.3f} {percentile(pushes, 0.99):10.3f} {'':8s}  p50 <= 0.5 s"
    )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
