"""``gitstate demo``: a complete installation in one folder, on defaults.

The folder holds the sample control repository and its module repositories
(built from ``sample-control-repo/`` with plain git), a config file and a
datadir with the state and storage repositories. The demo starts the server
and the deploy workers under the supervisor, deploys every environment and
prints what to try next. Running it again reuses the folder, so the state
branch and its history survive restarts.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from pathlib import Path

from ruamel.yaml import YAML

from gitstate.auth import AuthError, Tokens
from gitstate.base.private import open_private
from gitstate.cli.sample import SampleRepos, build
from gitstate.client import Client, ClientError
from gitstate.config import Config
from gitstate.hooks.install import install_post_receive, install_state_guard
from gitstate.process.supervisor import Supervisor, serve_children
from gitstate.process.supervisor import prepare as prepare_serving
from gitstate.services import open_store
from gitstate.store.branch import init_repository

DEFAULT_DIR = "gitstate-demo"
DEPLOY_WORKERS = 2


def prepare(directory: Path, port: int) -> tuple[Config, Path, SampleRepos]:
    """Create (or reuse) the demo folder; return its config, config path and repos."""
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    repos = build(directory / "repos")
    config_path = directory / "gitstate.yaml"
    config = Config.from_mapping(
        {
            "datadir": str(directory / "data"),
            "listen": f"127.0.0.1:{port}",
            "workers": 2,
            "threads": 4,
            # The demo runs on laptops; an unflushed commit there is fine.
            "state": {"fsync": False},
            "sources": {
                "puppet": {
                    "remote": repos.control_url,
                    # Show r10k's name correction: feature/login-banner
                    # becomes the environment feature_login_banner.
                    "invalid_branches": "correct_and_warn",
                }
            },
            "deploy": {
                "pool_size": DEPLOY_WORKERS,
                # The sample Puppetfiles name module repositories in this folder.
                "local_module_sources": [str(repos.modules)],
            },
            # git push waits for its deploys and says how each ended.
            "hooks": {"wait": True, "wait_timeout": 120},
            # Writes need a token, as in production; the demo's admin token
            # is in DIR/token.
            "auth": {"enabled": True},
            # Two file-sync clients, as on a primary and a compiler: the
            # primary reads storage directly, the compiler over HTTP.
            "file_sync": {
                "token": _file_sync_token(config_path),
                "clients": [
                    {"name": "primary", "live": str(directory / "live" / "primary")},
                    {
                        "name": "compiler",
                        "live": str(directory / "live" / "compiler"),
                        "storage": f"http://127.0.0.1:{port}",
                    },
                ],
            },
        },
        str(config_path),
    )
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    # The config holds the file-sync token: only its owner may read it.
    with open_private(config_path) as stream:
        yaml.dump(config.to_mapping(), stream)
    init_repository(config.state_repo)
    _admin_token(config, directory / "token")
    # git push to the control repository deploys; pushes to the state
    # repository may never rewrite its history.
    install_post_receive(
        repos.control, url=f"http://{config.listen}", token_file=str(directory / "token")
    )
    install_state_guard(config.state_repo)
    return config, config_path, repos


def _admin_token(config: Config, path: Path) -> None:
    """Issue the demo's admin token into ``path`` unless a valid one is there."""
    tokens = Tokens(open_store(config), config.auth)
    if path.exists():
        try:
            tokens.verify(path.read_text(encoding="utf-8").strip())
            return
        except AuthError:
            pass
    issued = tokens.issue(
        "admin",
        permissions=["admin"],
        lifetime=0,
        description="gitstate demo",
        actor="gitstate-demo",
    )
    with open_private(path) as stream:
        stream.write(issued.token + "\n")


def _file_sync_token(config_path: Path) -> str:
    """Return the file-sync token of an earlier run of the demo, or a new one."""
    if config_path.exists():
        old = YAML(typ="safe").load(config_path.read_text(encoding="utf-8")) or {}
        token = (old.get("file_sync") or {}).get("token")
        if token:
            return str(token)
    return secrets.token_urlsafe(24)


def _deploy_everything(
    base: str, repos: SampleRepos, config: Config, ready: threading.Event
) -> None:
    """Once the server answers, deploy all environments and print what to try."""
    ready.wait()
    token_file = config.datadir.parent / "token"
    client = Client(base, token_file=str(token_file), timeout=600)
    until = time.monotonic() + 60
    while True:
        try:
            client.request("GET", "/internal/health")
            break
        except ClientError:
            if time.monotonic() > until:
                print("gitstate demo: the server did not come up", file=sys.stderr, flush=True)
                return
            time.sleep(0.2)
    try:
        answer = client.request(
            "POST", "/code-manager/v1/deploys", {"deploy-all": True, "wait": True}
        )
    except ClientError as ex:
        print(f"gitstate demo: deploy-all failed: {ex}", file=sys.stderr, flush=True)
        return
    print(f"Deployed {len(answer)} environments:", flush=True)
    for entry in answer:
        signature = (entry.get("deploy-signature") or "")[:12]
        print(f"  {entry['environment']:<24} {entry['status']:<9} {signature}", flush=True)
    lines = [
        "",
        f"Writes need a token; the demo's admin token is in {token_file}.",
        "Try:",
        f"  curl {base}/internal/health",
        f"  curl {base}/code-manager/v1/deploys/status",
        f"  gitstate status --service-url {base}",
        f"  gitstate deploy production --wait --service-url {base} --token-file {token_file}",
        f"  ls -l {config.datadir.parent / 'live' / 'compiler' / 'environments'}   # file sync",
        f"  gitstate rollback production --service-url {base} --token-file {token_file}",
        f'  curl -X POST -H "X-Authentication: $(cat {token_file})" {base}/api/gates/code/puppet'
        + ' -d \'{"environments": ["production"]}\'   # now production\'s deploys obey this gate',
        f"  git clone {repos.control} control && cd control   # edit, commit, git push: deployed",
        "  git push origin --delete <branch>   # the post-receive hook removes its environment",
        f"  git --git-dir {config.state_repo} log --format='%h %an %s' state   # the audit trail",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)


def run(directory: Path, port: int) -> int:
    """Build the demo folder, start everything, deploy, serve until interrupted."""
    config, config_path, repos = prepare(directory, port)
    base = f"http://{config.listen}"
    print(f"gitstate demo in {directory.absolute()}", flush=True)
    print(f"  control repository: {repos.control}", flush=True)
    print(f"  state repository:   {config.state_repo}", flush=True)
    print(f"  health:             curl {base}/internal/health", flush=True)
    ready = threading.Event()
    threading.Thread(
        target=_deploy_everything, args=(base, repos, config, ready), daemon=True
    ).start()
    prepare_serving(config)
    supervisor = Supervisor(serve_children(str(config_path), DEPLOY_WORKERS))
    return supervisor.run(ready)
