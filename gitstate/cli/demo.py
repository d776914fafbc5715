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
import shlex
import threading
import time
from pathlib import Path

from ruamel.yaml import YAML

from gitstate.auth import AuthError, Tokens
from gitstate.base.private import open_private
from gitstate.cli.sample import SampleError, SampleRepos, build, git, push_change
from gitstate.client import Client, ClientError
from gitstate.config import Config
from gitstate.hooks.install import install_post_receive, install_state_guard
from gitstate.process.console import Console
from gitstate.process.supervisor import Supervisor, serve_children
from gitstate.process.supervisor import prepare as prepare_serving
from gitstate.services import open_store
from gitstate.store.branch import init_repository

DEFAULT_DIR = "gitstate-demo"
DEPLOY_WORKERS = 2
#: The JSON log of every process, in the demo folder.
LOG_FILE = "gitstate.log"
#: The gate the demo creates (open) for production; the hints close and open it.
GATE_GROUP = "code"
GATE_SERVICE = "puppet"
#: Production's data in the second version the demo pushes.
SECOND_VERSION = """---
profile::base::motd: "Managed by Puppet from the production environment, deployed by gitstate."
profile::time::servers:
  - 0.pool.ntp.org
  - 1.pool.ntp.org
"""


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
            # Every process's log lines go to DIR/gitstate.log as JSON; the
            # terminal gets a short line per notable event (process.console).
            "logging": {"json": True},
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
    base: str, repos: SampleRepos, config: Config, ready: threading.Event, console: Console
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
                console.say("gitstate demo: the server did not come up; see the log")
                return
            time.sleep(0.2)
    console.say(f"Serving on {base}/")
    try:
        _ensure_gate(client)
        answer = client.request(
            "POST", "/code-manager/v1/deploys", {"deploy-all": True, "wait": True}
        )
        console.say(f"Deployed {len(answer)} environments:")
        for entry in answer:
            signature = (entry.get("deploy-signature") or "")[:12]
            console.say(f"  {entry['environment']:<24} {entry['status']:<9} {signature}")
        _second_version(client, repos, config, console)
    except (ClientError, SampleError) as ex:
        console.say(f"gitstate demo: setting up failed: {ex}")
        return
    console.say("\n".join(hints(base, repos, config)))


def _ensure_gate(client: Client) -> None:
    """Create the gate ``code/puppet/production`` (open) unless it exists.

    The hints close and open it: both work on every run, where creating it
    in a hint would be refused the second time.
    """
    try:
        client.request("GET", f"/api/gates/{GATE_GROUP}/{GATE_SERVICE}")
    except ClientError as ex:
        if ex.status != 404:
            raise
        client.request(
            "POST", f"/api/gates/{GATE_GROUP}/{GATE_SERVICE}", {"environments": ["production"]}
        )


def _versions(config: Config, environment: str) -> int:
    """Return how many different trees ``environment`` has had in storage."""
    storage = config.datadir / "storage.git"
    try:
        trees = git(
            "--git-dir", str(storage), "log", "--format=%T", f"refs/environments/{environment}"
        )
    except SampleError:
        return 0
    return len(set(trees.split()))


def _second_version(client: Client, repos: SampleRepos, config: Config, console: Console) -> None:
    """Make sure production has an earlier version, so the rollback hint has a target.

    On the first run the demo commits a change to production and pushes it
    (the post-receive hook deploys it); later runs find both versions there.
    """
    if _versions(config, "production") >= 2:
        return
    console.say("Pushing a second version of production (something to roll back to):")
    said = push_change(
        repos.control,
        "production",
        "data/common.yaml",
        SECOND_VERSION,
        "Say in the motd that gitstate deployed it",
    )
    # The hook waits for the deploy (hooks.wait) and says how it ended.
    for line in said.splitlines():
        if line.startswith("remote: gitstate:"):
            console.say("  " + line.rstrip())


def hints(base: str, repos: SampleRepos, config: Config) -> list[str]:
    """Return the "Try:" lines: each works when pasted, in order, in another terminal."""
    directory = config.datadir.parent
    token_file = shlex.quote(str(directory / "token"))
    live = shlex.quote(str(directory / "live" / "compiler" / "environments"))
    gate = f"{GATE_GROUP}/{GATE_SERVICE}/production"
    branch = "try_me"
    return [
        "",
        f"Writes need a token; the demo's admin token is in {directory / 'token'}.",
        "Try: (in another terminal, in an empty folder, in this order)",
        f"  export GITSTATE_URL={base} GITSTATE_TOKEN_FILE={token_file}",
        f"  curl {base}/internal/health",
        '  curl -H "X-Authentication: $(cat "$GITSTATE_TOKEN_FILE")"'
        f" {base}/code-manager/v1/deploys/status",
        "  gitstate status",
        "  gitstate deploy production --wait",
        f"  ls -l {live}   # file sync",
        "  gitstate rollback production --wait   # to the version before; again to come back",
        f"  gitstate gate close {gate} -m 'release freeze'   # production's deploys now wait",
        f"  gitstate gate open {gate}",
        f"  git clone -q {shlex.quote(str(repos.control))} control && cd control",
        f"  git checkout -q -b {branch} && echo '# tried' >> manifests/site.pp"
        f" && git commit -qam 'Try gitstate' && git push origin {branch}"
        "   # the hook deploys it and says how it went",
        f"  git push origin --delete {branch}   # the hook removes its environment",
        f"  git --git-dir {shlex.quote(str(config.state_repo))} log -n 20"
        " --format='%h %an %s' state   # the audit trail",
        "Press Ctrl-C to stop.",
    ]


def run(directory: Path, port: int) -> int:
    """Build the demo folder, start everything, deploy, serve until interrupted."""
    config, config_path, repos = prepare(directory, port)
    base = f"http://{config.listen}"
    console = Console(directory.absolute() / LOG_FILE)
    console.say(f"gitstate demo in {directory.absolute()}")
    console.say(f"  control repository: {repos.control}")
    console.say(f"  state repository:   {config.state_repo}")
    console.say(f"  logs (JSON lines):  {console.log_path}")
    console.say("  this terminal shows deploys, file syncs and warnings")
    ready = threading.Event()
    threading.Thread(
        target=_deploy_everything, args=(base, repos, config, ready, console), daemon=True
    ).start()
    prepare_serving(config, console)
    supervisor = Supervisor(serve_children(str(config_path), DEPLOY_WORKERS), console=console)
    try:
        return supervisor.run(ready)
    finally:
        console.close()
