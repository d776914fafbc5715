"""``python -m bench.soak``: see :mod:`bench.soak`."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pygit2

from bench.soak import checks, hostile, report
from bench.soak.cluster import HOSTILE_BRANCHES, Cluster, git
from bench.soak.faults import FaultInjector, LockSampler
from bench.soak.load import WAIT_TIMEOUT, Client, Recorder, run_clients
from gitstate.deploys.audit import replay_deploys
from tests.support.gate_replay import replay

DOCS = Path(__file__).resolve().parents[2] / "docs" / "soak.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32, help="client threads")
    parser.add_argument("--envs", type=int, default=20, help="fixture environments")
    parser.add_argument("--modules", type=int, default=15, help="fixture modules")
    parser.add_argument("--deploy-workers", type=int, default=4, help="deploy worker processes")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--out", type=Path, help="keep everything in DIR (default: a temp dir)")
    parser.add_argument("--no-docs", action="store_true", help="do not append to docs/soak.md")
    return parser.parse_args(argv)


def _count(repo: Path, ref: str) -> int:
    handle = pygit2.Repository(str(repo))
    try:
        tip = handle.references[ref].target
    except KeyError:
        return 0
    return sum(1 for _commit in handle.walk(tip))


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return 0 when every check passed."""
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    out = args.out or Path(tempfile.mkdtemp(prefix="gitstate-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    root = out / "run"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    print(f"soak: seed {seed}, {args.duration:g}s, {args.clients} clients, in {out}", flush=True)
    began = time.monotonic()
    cluster = Cluster(
        root, envs=args.envs, modules=args.modules, deploy_workers=args.deploy_workers
    )
    recorder = Recorder()
    sampler = LockSampler(
        [
            cluster.state_repo / "refs" / "heads" / "state.lock",
            cluster.storage_repo / "refs" / "heads" / "code.lock",
        ]
    )
    # Every kind of fault early on, then one every few seconds: about ten in a
    # minute's run, about a hundred in ten minutes.
    spacing = max(3.0, min(9.0, args.duration / 8))
    injector = FaultInjector(cluster, seed, interval=(spacing / 3, spacing))
    results: list[checks.Check] = []
    sizes: dict[str, dict[str, int]] = {}
    commits = {"state": 0, "code": 0}
    maintenance = "not run"
    try:
        cluster.build()
        cluster.start()
        cluster.prepare_state()
        state_before = _count(cluster.state_repo, "refs/heads/state")
        code_before = _count(cluster.storage_repo, "refs/heads/code")
        branches = [
            line.strip()
            for line in git(
                "for-each-ref", "--format=%(refname:short)", "refs/heads", cwd=cluster.control
            ).stdout.splitlines()
            if line.strip() and line.strip() not in HOSTILE_BRANCHES
        ]
        print(f"soak: serving on {cluster.base}; load for {args.duration:g}s", flush=True)
        sampler.start()
        injector.start()
        threads = run_clients(
            cluster,
            recorder,
            clients=args.clients,
            duration=args.duration,
            seed=seed,
            branches=branches,
            hostile=hostile.random_probe,
        )
        prober = Client(args.clients, cluster, recorder, seed, branches)
        coverage = threading.Timer(args.duration / 3, hostile.every_probe, args=(prober,))
        coverage.daemon = True
        coverage.start()
        deadline = time.monotonic() + args.duration + WAIT_TIMEOUT + 60
        for thread in [*threads, coverage]:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in [*threads, coverage] if thread.is_alive()]
        injector.stop()
        injector.join(60)
        print(f"soak: load done ({len(recorder.ops)} requests); checking", flush=True)
        ops = list(recorder.ops)
        if stuck:
            hung = checks.Check("every client thread finished")
            hung.fail(f"still running: {stuck}")
            results.append(hung)
        results.append(checks.drain(cluster, 180))
        results.append(checks.convergence(cluster, 90))
        sampler.stop()
        sampler.join(5)
        replayed = replay(cluster.state_repo)
        results += [
            checks.acknowledged_writes(cluster, ops, replayed),
            checks.gates_replay(replayed),
            checks.deploys_replay(replay_deploys(cluster.state_repo)),
            checks.locks(sampler),
            checks.live_dirs(cluster),
            checks.server_errors(ops, injector.kill_times("gunicorn-worker")),
            checks.hostile_inputs(ops, hostile.names(prober)),
            checks.traces(cluster),
            checks.faults(injector.faults),
        ]
        commits = {
            "state": _count(cluster.state_repo, "refs/heads/state") - state_before,
            "code": _count(cluster.storage_repo, "refs/heads/code") - code_before,
        }
    except Exception as ex:  # report it as a failed run
        broken = checks.Check("the harness ran to the end")
        broken.fail(f"{type(ex).__name__}: {ex}")
        results.append(broken)
        ops = list(recorder.ops)
    finally:
        injector.stop()
        sampler.stop()
        cluster.stop()
    repos = {"state.git": cluster.state_repo, "storage.git": cluster.storage_repo}
    if all(repo.exists() for repo in repos.values()):
        sizes = {name: {"before": report.repo_size(repo)} for name, repo in repos.items()}
        maintenance = report.maintain(cluster.config_path, repos.values())
        for name, repo in repos.items():
            sizes[name]["after"] = report.repo_size(repo)
    summary = report.summarize(
        args={
            "duration": args.duration,
            "clients": args.clients,
            "envs": args.envs,
            "modules": args.modules,
            "seed": seed,
        },
        ops=ops,
        faults=list(injector.faults),
        checks=results,
        commits=commits,
        sizes=sizes,
        maintenance=maintenance,
        elapsed=time.monotonic() - began,
    )
    print(report.text(summary), flush=True)
    report.write(summary, out, None if args.no_docs else DOCS)
    if summary["passed"]:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
        print("soak: every check passed", flush=True)
        return 0
    print(f"soak: FAILED; everything is kept in {out} (serve.log, summary.json)", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
