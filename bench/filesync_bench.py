"""File-sync benchmark: push → live on two clients, and cold deploy-all into a live dir.

    python -m bench.filesync_bench [--pushes 20] [--envs 20] [--modules 15] [--repeat 3]

1. **Push to live.** ``gitstate serve`` (real gunicorn, one deploy worker)
   with two file-sync clients: ``primary`` reads the storage repository
   (inotify), ``compiler`` fetches over smart HTTP (long poll). Each round
   pushes a change to ``production`` of the sample control repository,
   asks for the deploy through the API right after the push (webhooks are
   another issue; a post-receive hook would do the same request), then
   waits until the new content is readable in *both* live directories.
   Reports p50/p99 over ``--pushes`` rounds.
2. **Cold deploy-all into a live dir vs g10k cold.** On the fixture of
   bench/fixture.py: gitstate with an empty datadir
   (collect, fetch, deploy every environment into storage, then one file
   sync of every environment into an empty live directory) against
   ``g10k -config OUT/g10k.yaml`` with its cache and basedir removed, as
   ../shared/bench/peers.sh does. Median of ``--repeat`` runs, same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2
import requests
from ruamel.yaml import YAML

from bench.deploy_bench import deploy_all
from bench.fixture import make_fixture
from gitstate.cli.sample import build
from gitstate.engine.storage import CODE_REF
from gitstate.filesync.livedir import LiveDir

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, env=ENV, capture_output=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def push_to_live(base: Path, pushes: int) -> list[float]:
    repos = build(base / "repos")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    live = {name: base / "live" / name for name in ("primary", "compiler")}
    config = {
        "datadir": str(base / "data"),
        "listen": f"127.0.0.1:{port}",
        "workers": 2,
        "threads": 4,
        "state": {"fsync": False},
        "sources": {"puppet": {"remote": repos.control_url, "invalid_branches": "correct"}},
        "deploy": {"pool_size": 1, "local_module_sources": [str(repos.modules)]},
        "file_sync": {
            "token": "bench",
            "clients": [
                {"name": "primary", "live": str(live["primary"])},
                {"name": "compiler", "live": str(live["compiler"]), "storage": url},
            ],
        },
    }
    config_path = base / "gitstate.yaml"
    with config_path.open("w") as stream:
        YAML(typ="safe").dump(config, stream)
    log = (base / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "gitstate", "serve", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        until = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/internal/health", timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > until:
                    raise
                time.sleep(0.1)
        requests.post(
            f"{url}/code-manager/v1/deploys", json={"deploy-all": True, "wait": True}, timeout=300
        ).raise_for_status()
        work = base / "work"
        git("clone", "-q", "-b", "production", str(repos.control), str(work), cwd=base)
        samples = []
        for serial in range(pushes):
            text = f"---\nprofile::base::motd: 'push {serial}'\nprofile::time::servers: []\n"
            (work / "data" / "common.yaml").write_text(text)
            git("commit", "-q", "-am", f"push {serial}", cwd=work)
            start = time.perf_counter()
            git("push", "-q", "origin", "production", cwd=work)
            requests.post(
                f"{url}/code-manager/v1/deploys",
                json={"environments": ["production"]},
                timeout=60,
            ).raise_for_status()
            targets = [
                path / "environments" / "production" / "data" / "common.yaml"
                for path in live.values()
            ]
            deadline = time.monotonic() + 60
            while not all(_reads(target) == text for target in targets):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"push {serial} did not reach both clients")
                time.sleep(0.002)
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _reads(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cold_into_live(out: Path, scratch: Path) -> tuple[float, int]:
    datadir = scratch / "data"
    live_root = scratch / "live"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    start = time.perf_counter()
    deploy_all(datadir, (out / "control.git").as_uri())
    repo = pygit2.Repository(str(datadir / "storage.git"))
    live = LiveDir(live_root)
    with live.locked():
        report = live.apply(repo, str(repo.references[CODE_REF].target))
    return time.perf_counter() - start, report.written + report.linked


def g10k_cold(out: Path) -> float:
    shutil.rmtree(out / "g10k", ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(["g10k", "-config", str(out / "g10k.yaml")], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--envs", type=int, default=20)
    parser.add_argument("--modules", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="gitstate-filesync-bench-"))
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} cores", flush=True)

    samples = push_to_live(base / "push", args.pushes)
    print(
        f"push → live on both clients ({len(samples)} pushes): "
        f"p50 {statistics.median(samples):.3f}s  p99 {percentile(samples, 0.99):.3f}s  "
        f"min {min(samples):.3f}s  max {max(samples):.3f}s",
        flush=True,
    )

    out = base / "fixture"
    make_fixture(out, args.envs, args.modules)
    ours, theirs, files = [], [], 0
    for run in range(args.repeat):
        if shutil.which("g10k"):
            theirs.append(g10k_cold(out))
        seconds, files = cold_into_live(out, base / f"cold-{run}")
        ours.append(seconds)
    print(
        f"cold deploy-all into one live dir ({files} files): "
        f"gitstate {statistics.median(ours):.3f}s (runs {', '.join(f'{x:.3f}' for x in ours)})",
        flush=True,
    )
    if theirs:
        g = statistics.median(theirs)
        print(
            f"g10k cold: {g:.3f}s (runs {', '.join(f'{x:.3f}' for x in theirs)}); "
            f"ratio gitstate / g10k = {statistics.median(ours) / g:.3f} (target <= 0.5)",
            flush=True,
        )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
