"""Server-side git hooks: real pushes into real repositories, a real server.

* The control repository's post-receive hook, installed by
  ``gitstate install-hook``, turns ``git push`` into a deploy and
  ``git push --delete`` into a removal, through ``gitstate serve`` (gunicorn
  plus a deploy worker) in a subprocess.
* The state repository's pre-receive hook refuses forced pushes and deletion
  of the state branch, even with git's own receive.deny* options off.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gitstate.cli.main import main
from gitstate.hooks.dispatch import main as dispatch
from gitstate.hooks.install import MARKER, HookExists, install_post_receive
from gitstate.hooks.post_receive import RefUpdate, read_updates, summary
from gitstate.hooks.post_receive import run as post_receive
from gitstate.hooks.state_guard import refusals
from gitstate.store.branch import Identity, Store, init_repository
from tests.support.deploy_fixtures import Remote
from tests.support.helpers import free_port, git, wait_for_http

ZERO = "0" * 40
A, B = "a" * 40, "b" * 40


# -- the hooks' logic ------------------------------------------------------------------


def test_read_updates_skips_junk_lines() -> None:
    lines = [f"{A} {B} refs/heads/dev\n", "\n", "garbage\n", f"{B} {ZERO} refs/tags/v1\n"]
    updates = read_updates(lines)
    assert updates == [RefUpdate(A, B, "refs/heads/dev"), RefUpdate(B, ZERO, "refs/tags/v1")]
    assert [(u.branch, u.deleted) for u in updates] == [("dev", False), (None, True)]


def test_refusals_guard_only_the_state_branch() -> None:
    def never(old: str, new: str) -> bool:
        return False

    updates = [
        RefUpdate(A, B, "refs/heads/other"),
        RefUpdate(ZERO, B, "refs/heads/state"),
    ]
    assert refusals(updates, fast_forward=never) == []
    (reason,) = refusals([RefUpdate(A, ZERO, "refs/heads/state")], fast_forward=never)
    assert reason.startswith("refusing to delete refs/heads/state")
    (reason,) = refusals([RefUpdate(A, B, "refs/heads/state")], fast_forward=never)
    assert reason.startswith("refusing non-fast-forward update of refs/heads/state")


def test_summary_is_one_line() -> None:
    answer = {
        "status": "OK",
        "deploys": [{"environment": "dev", "id": 3, "status": "queued"}],
        "removed": ["old"],
        "kept": [],
    }
    assert summary(answer) == "gitstate: queued deploy of dev (#3); removed old"
    assert summary({"status": "OK", "deploys": [], "removed": []}) == "gitstate: nothing to do"


def test_post_receive_never_fails_the_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "control.git"
    git("init", "-q", "--bare", str(repo))
    install_post_receive(repo, url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.chdir(repo)
    out = io.StringIO()
    status = post_receive(io.StringIO(f"{A} {B} refs/heads/dev\n"), out)
    assert status == 0
    assert out.getvalue().startswith("gitstate: deploy not queued (cannot reach")
    assert "gitstate deploy dev" in out.getvalue()


def test_dispatch_refuses_unknown_hook_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch(["x", "update"]) == 2
    assert "unknown hook 'update'" in capsys.readouterr().err


# -- installing ------------------------------------------------------------------------


def test_install_hook_writes_an_executable_script_and_config(tmp_path: Path) -> None:
    repo = tmp_path / "control.git"
    git("init", "-q", "--bare", str(repo))
    token = tmp_path / "token"
    token.write_text("secret\n")
    status = main(
        [
            "install-hook",
            str(repo),
            "--url",
            "http://gitstate.example.test:8170",
            "--token-file",
            str(token),
            "--prefix",
            "qa",
        ]
    )
    assert status == 0
    hook = repo / "hooks" / "post-receive"
    assert os.access(hook, os.X_OK)
    text = hook.read_text()
    assert MARKER in text
    assert f"exec {sys.executable} -m gitstate.hooks post-receive" in text
    assert git("config", "gitstate.url", cwd=repo).strip() == "http://gitstate.example.test:8170"
    assert git("config", "gitstate.tokenFile", cwd=repo).strip() == str(token)
    assert git("config", "gitstate.prefix", cwd=repo).strip() == "qa"
    # Installing again replaces gitstate's own hook.
    assert main(["install-hook", str(repo), "--url", "http://other:8170"]) == 0
    assert git("config", "gitstate.url", cwd=repo).strip() == "http://other:8170"


def test_install_hook_keeps_a_foreign_hook_unless_forced(tmp_path: Path) -> None:
    repo = tmp_path / "control.git"
    git("init", "-q", "--bare", str(repo))
    foreign = repo / "hooks" / "post-receive"
    foreign.write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(HookExists):
        install_post_receive(repo, url="http://x")
    assert main(["install-hook", str(repo), "--url", "http://x"]) == 1
    assert foreign.read_text() == "#!/bin/sh\necho mine\n"
    install_post_receive(repo, url="http://x", force=True)
    assert MARKER in foreign.read_text()


def test_install_hook_in_a_non_bare_repository_uses_its_git_dir(tmp_path: Path) -> None:
    repo = tmp_path / "work"
    git("init", "-q", str(repo))
    path = install_post_receive(repo, url="http://x")
    assert path == repo / ".git" / "hooks" / "post-receive"


def test_install_hook_needs_a_repository(tmp_path: Path) -> None:
    assert main(["install-hook", str(tmp_path), "--url", "http://x"]) == 1


# -- a real push through a real server -------------------------------------------------


def _install_hook(bare: Path, base: str) -> None:
    """Install the post-receive hook as an operator does, with the ``gitstate`` command."""
    installed = subprocess.run(
        [sys.executable, "-m", "gitstate", "install-hook", str(bare), "--url", base],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr


def _push(work: Path, *args: str) -> str:
    """Push from ``work``; return what the remote printed (git's stderr)."""
    result = subprocess.run(
        ["git", "push", "origin", *args],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stderr


def _deployed(base: str) -> dict[str, str]:
    status = requests.get(f"{base}/code-manager/v1/deploys/status", timeout=10).json()
    return {
        entry["environment"]: entry["deploy-signature"]
        for entry in status["file-sync-storage-status"]["deployed"]
    }


def _until(check: object, timeout: float = 90.0) -> bool:
    """Poll ``check()`` until it is true or ``timeout`` passes (a bound, not a limit)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return bool(check())  # type: ignore[operator]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Remote]]:
    """``gitstate serve`` on a one-branch control repo; yields its URL and the repo."""
    with _serving(tmp_path) as served:
        yield served


@contextlib.contextmanager
def _serving(tmp_path: Path, extra: dict | None = None) -> Iterator[tuple[str, Remote]]:
    """Run ``gitstate serve`` (config keys ``extra`` added) on a one-branch control repo."""
    remote = Remote(tmp_path / "remotes", "control")
    remote.commit("production", {"Puppetfile": "", "manifests/site.pp": "# production\n"})
    port = free_port()
    config = tmp_path / "gitstate.yaml"
    config.write_text(
        json.dumps(
            {
                "datadir": str(tmp_path / "data"),
                "listen": f"127.0.0.1:{port}",
                "workers": 1,
                "threads": 2,
                "state": {"fsync": False},
                "auth": {"enabled": False},
                "sources": {"puppet": {"remote": remote.url, "invalid_branches": "correct"}},
                "deploy": {"pool_size": 1},
                **(extra or {}),
            }
        )
    )
    init_repository(tmp_path / "data" / "state.git")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitstate", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/internal/health", timeout=60)
        yield base, remote
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_git_push_deploys_and_push_delete_removes(server: tuple[str, Remote]) -> None:
    base, remote = server
    _install_hook(remote.bare, base)

    git("checkout", "-q", "-b", "feature/hooked", "production", cwd=remote.work)
    (remote.work / "manifests" / "site.pp").write_text("# hooked\n")
    git("commit", "-qam", "hooked", cwd=remote.work)
    said = _push(remote.work, "feature/hooked")
    assert "remote: gitstate: queued deploy of feature/hooked (#" in said
    sha = remote.head("feature/hooked")
    assert _until(lambda: _deployed(base).get("feature_hooked") == sha)

    said = _push(remote.work, "--delete", "feature/hooked")
    assert "remote: gitstate: removed feature_hooked" in said
    assert _until(lambda: "feature_hooked" not in _deployed(base))


def test_push_waits_for_its_deploys_and_says_how_each_ended(tmp_path: Path) -> None:
    with _serving(tmp_path, {"hooks": {"wait": True, "wait_timeout": 120}}) as (base, remote):
        _install_hook(remote.bare, base)

        git("checkout", "-q", "-b", "good", "production", cwd=remote.work)
        (remote.work / "manifests" / "site.pp").write_text("# good\n")
        git("commit", "-qam", "good", cwd=remote.work)
        said = _push(remote.work, "good")
        sha = remote.head("good")
        assert "remote: gitstate: queued deploy of good (#" in said
        assert f"remote: gitstate: deployed good at {sha[:12]} (#" in said, said
        # Deployed when the push returns: no polling needed to see it.
        assert _deployed(base).get("good") == sha

        git("checkout", "-q", "-b", "broken", "production", cwd=remote.work)
        (remote.work / "Puppetfile").write_text("mod 'broken', :git =>\n")
        git("commit", "-qam", "a Puppetfile that does not parse", cwd=remote.work)
        said = _push(remote.work, "broken")
        assert "remote: gitstate: queued deploy of broken (#" in said
        assert "remote: gitstate: deploy of broken failed (#" in said, said
        assert "Puppetfile" in said.split("failed", 1)[1]
        assert "broken" not in _deployed(base)


def test_serve_guards_its_state_repo(server: tuple[str, Remote], tmp_path: Path) -> None:
    hook = tmp_path / "data" / "state.git" / "hooks" / "pre-receive"
    assert hook.exists()
    assert "gitstate.hooks" in hook.read_text()


# -- the state repository's guard ------------------------------------------------------


@pytest.fixture
def state_repo(tmp_path: Path) -> Path:
    """A state repository with two commits and the guard installed."""
    path = tmp_path / "data" / "state.git"
    init_repository(path)
    store = Store(path, fsync=False)
    for count in (1, 2):

        def change(draft, count: int = count) -> None:
            draft.put("counter/value.yaml", {"schema_version": 1, "count": count})

        store.transact(change, subject=f"count {count}", operation="test", identity=Identity("t"))
    assert main(["install-hook", "--state", str(path)]) == 0
    return path


def _state(path: Path) -> str:
    return git("rev-parse", "refs/heads/state", cwd=path).strip()


def _clone(state: Path, into: Path) -> Path:
    git("clone", "-q", "--branch", "state", str(state), str(into))
    return into


@pytest.mark.parametrize("git_options_on", [True, False])
def test_forced_push_rewriting_the_state_branch_is_refused(
    state_repo: Path, tmp_path: Path, git_options_on: bool
) -> None:
    if not git_options_on:
        # The hook alone must refuse, should someone turn git's own checks off.
        git("config", "receive.denyNonFastForwards", "false", cwd=state_repo)
        git("config", "receive.denyDeletes", "false", cwd=state_repo)
    before = _state(state_repo)
    work = _clone(state_repo, tmp_path / "clone")
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)
    (work / "counter" / "value.yaml").write_text("schema_version: 1\ncount: 99\n")
    git("commit", "-qam", "rewrite history", cwd=work)
    pushed = subprocess.run(
        ["git", "push", "--force", "origin", "state"], cwd=work, capture_output=True, text=True
    )
    assert pushed.returncode != 0
    if not git_options_on:
        assert "gitstate: refusing non-fast-forward update of refs/heads/state" in pushed.stderr
    assert _state(state_repo) == before

    deleted = subprocess.run(
        ["git", "push", "origin", "--delete", "state"], cwd=work, capture_output=True, text=True
    )
    assert deleted.returncode != 0
    if not git_options_on:
        assert "gitstate: refusing to delete refs/heads/state" in deleted.stderr
    assert _state(state_repo) == before


def test_fast_forward_push_to_the_state_branch_is_accepted(
    state_repo: Path, tmp_path: Path
) -> None:
    # The new commit is only in git's quarantine while pre-receive runs: the
    # guard must see it there to call the push a fast-forward.
    work = _clone(state_repo, tmp_path / "clone")
    (work / "counter" / "value.yaml").write_text("schema_version: 1\ncount: 3\n")
    git("commit", "-qam", "count 3", cwd=work)
    git("push", "-q", "origin", "state", cwd=work)
    assert _state(state_repo) == git("rev-parse", "HEAD", cwd=work).strip()


def test_demo_installs_both_hooks(tmp_path: Path) -> None:
    from gitstate.cli.demo import prepare

    config, _, repos = prepare(tmp_path / "demo", 18170)
    assert MARKER in (repos.control / "hooks" / "post-receive").read_text()
    assert git("config", "gitstate.url", cwd=repos.control).strip() == "http://127.0.0.1:18170"
    assert MARKER in (config.state_repo / "hooks" / "pre-receive").read_text()
    # Preparing again (the demo reuses its folder) replaces gitstate's own hooks.
    prepare(tmp_path / "demo", 18171)
    assert git("config", "gitstate.url", cwd=repos.control).strip() == "http://127.0.0.1:18171"
