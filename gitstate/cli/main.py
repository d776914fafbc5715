"""The ``gitstate`` command.

Each subcommand is a thin wrapper: it parses flags, calls one function of the
service layer (or the demo/server runners) and turns errors into a message on
stderr and a documented exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gitstate import __version__
from gitstate.base import logs
from gitstate.base.private import open_private
from gitstate.cli.exits import EXIT_DEPLOY_FAILED, EXIT_ERROR, EXIT_OK, EXIT_USAGE
from gitstate.config import DEFAULT_PORT, Config
from gitstate.errors import GitStateError


def _demo(args: argparse.Namespace) -> int:
    from gitstate.cli import demo

    return demo.run(Path(args.dir), args.port)


def _serve(args: argparse.Namespace) -> int:
    from gitstate.process.supervisor import Supervisor, prepare, serve_children

    config = Config.load(args.config)
    prepare(config)
    workers = config.deploy.pool_size
    return Supervisor(serve_children(str(Path(args.config).absolute()), workers)).run()


def _web(args: argparse.Namespace) -> int:
    from gitstate.process.server import serve

    config = Config.load(args.config)
    serve(config, str(Path(args.config).absolute()))
    return EXIT_OK


def _deploy_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from gitstate.deploys.worker import DeployWorker, hold_slot
    from gitstate.services import Services

    config = Config.load(args.config)
    logs.configure(config.logging)
    services = Services(config)
    code_manager = services.code_manager
    lockdir = config.datadir / "locks"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    with hold_slot(lockdir, args.slot):
        upstream = services.store.upstream
        DeployWorker(
            code_manager.queue,
            code_manager.engine,
            args.slot,
            lockdir,
            services.deploy_guard,
            node=upstream.node if upstream is not None else None,
        ).run(stop)
    return EXIT_OK


def _follow(args: argparse.Namespace) -> int:
    import signal
    import threading

    from gitstate.process.follower import follow

    config = Config.load(args.config)
    logs.configure(config.logging)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    follow(config, stop)
    return EXIT_OK


def _client(args: argparse.Namespace) -> Any:
    from gitstate.client import Client

    return Client(args.service_url, args.token_file)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _deploy(args: argparse.Namespace) -> int:
    if not args.environments and not args.all and not args.dry_run:
        print("gitstate: name environments to deploy, or use --all", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"wait": bool(args.wait or args.dry_run)}
    if args.dry_run:
        body["dry-run"] = True
        if args.format != "json":
            print("--dry-run implies --wait.")
            print("--dry-run implies --all.")
            print("Dry-run deploying all environments.")
    elif args.all:
        body["deploy-all"] = True
    else:
        body["environments"] = args.environments
    answer = _client(args).request("POST", "/code-manager/v1/deploys", body)
    if args.format != "json":
        print(f"Found {len(answer)} environments.")
    _print_json(answer)
    failed = [entry for entry in answer if entry.get("status") == "failed" or "error" in entry]
    return EXIT_DEPLOY_FAILED if failed else EXIT_OK


def _status(args: argparse.Namespace) -> int:
    answer = _client(args).request("GET", "/code-manager/v1/deploys/status")
    if args.format == "json":
        _print_json(answer)
        return EXIT_OK
    queue = answer.get("deploys-status", {})
    for section in ("new", "queued", "deploying", "failed"):
        entries = queue.get(section, [])
        print(f"{section}: {len(entries)}")
        for entry in entries:
            print(f"  #{entry['id']} {entry['environment']} (queued {entry.get('queued-at')})")
    deployed = answer.get("file-sync-storage-status", {}).get("deployed", [])
    print(f"deployed: {len(deployed)}")
    for entry in deployed:
        print(f"  {entry['environment']} {entry.get('deploy-signature')} at {entry.get('date')}")
    return EXIT_OK


def _sync(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import signal
    import threading
    from types import FrameType

    from gitstate.filesync.client import run_client
    from gitstate.settings import FileSyncSettings, LogSettings

    config = Config.load(args.config) if args.config else None
    settings = config.file_sync if config is not None else FileSyncSettings()
    token = settings.token or os.environ.get("GITSTATE_FILE_SYNC_TOKEN")
    if args.token_file:
        token = Path(args.token_file).expanduser().read_text(encoding="utf-8").strip()
    settings = dataclasses.replace(
        settings, token=token, keep_versions=args.keep_versions or settings.keep_versions
    )
    # As every other gitstate process logs (JSON unless on a terminal); each
    # line names the client.
    logs.configure(config.logging if config is not None else LogSettings())
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Every step of a sync is safe to interrupt (see gitstate.filesync.livedir).
        stop.set()
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    run_client(args.storage, Path(args.live), args.name, settings, stop)
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"environment": args.environment, "wait": bool(args.wait)}
    if args.to:
        body["to"] = args.to
    answer = _client(args).request("POST", "/code-manager/v1/rollbacks", body)
    if args.format == "json":
        _print_json(answer)
    else:
        print(
            f"{answer['environment']} rolled back to {answer['deploy-signature']} "
            f"(was {answer['rolled-back-from']})"
            if answer.get("changed")
            else f"{answer['environment']} is already at {answer['deploy-signature']}"
        )
        if "error" in answer:
            print(answer["error"].get("msg"), file=sys.stderr)
    return EXIT_DEPLOY_FAILED if "error" in answer else EXIT_OK


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    from gitstate.client import (
        DEFAULT_SERVICE_URL,
        DEFAULT_TOKEN_FILE,
        TOKEN_FILE_ENV,
        URL_ENV,
        default_service_url,
        default_token_file,
    )

    # The defaults are read when the parser is built, so --help shows the
    # value a command would use; a flag wins over the environment.
    parser.add_argument(
        "--service-url",
        default=default_service_url(),
        help=f"server base URL (default: %(default)s; ${URL_ENV} sets it, "
        f"else {DEFAULT_SERVICE_URL})",
    )
    parser.add_argument(
        "--token-file",
        default=default_token_file(),
        help=f"file holding a token (default: %(default)s; ${TOKEN_FILE_ENV} sets it, "
        f"else {DEFAULT_TOKEN_FILE})",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")


def _local_config(args: argparse.Namespace) -> Config:
    """Find the config of a command that works on the datadir directly."""
    import os

    path = args.config or os.environ.get("GITSTATE_CONFIG") or "gitstate.yaml"
    return Config.load(path)


def _lifetime(text: str) -> float:
    """Parse ``--lifetime`` (argparse type): a unit is required, 0 never expires."""
    from gitstate.auth import TokenRequestError, parse_lifetime

    try:
        return parse_lifetime(text)
    except TokenRequestError as ex:
        raise argparse.ArgumentTypeError(str(ex)) from ex


def _token(args: argparse.Namespace) -> int:
    import getpass

    from gitstate.auth import Tokens
    from gitstate.services import open_store

    config = _local_config(args)
    # The store as the server opens it: a token write is as durable as any other.
    tokens = Tokens(open_store(config), config.auth)
    actor = f"local:{getpass.getuser()}"
    if args.token_command == "create":
        issued = tokens.issue(
            args.user,
            permissions=args.permission or [],
            lifetime=args.lifetime,
            description=args.description,
            actor=actor,
        )
        if args.out:
            with open_private(args.out) as stream:
                stream.write(issued.token + "\n")
            print(
                f"token {issued.token_id} for {issued.user} written to {args.out}", file=sys.stderr
            )
        else:
            print(issued.token)
        return EXIT_OK
    if args.token_command == "revoke":
        record = tokens.revoke(args.id, actor=actor)
        print(f"revoked token {record['id']} of {record['user']}")
        return EXIT_OK
    records = tokens.list()
    if args.format == "json":
        _print_json(records)
        return EXIT_OK
    for record in records:
        state = _token_state(record)
        rights = ",".join(record["permissions"]) or "-"
        print(f"{record['id']}  {record['user']:<16} {rights:<30} {state}")
    return EXIT_OK


def _token_state(record: dict[str, Any], now: float | None = None) -> str:
    """Say whether a token is revoked, expired, or when it expires."""
    import time

    from gitstate.base.times import parse_iso

    if record.get("revoked_at"):
        return f"revoked {record['revoked_at']}"
    expires = record.get("expires_at")
    if not expires:
        return "never expires"
    if parse_iso(expires).timestamp() <= (time.time() if now is None else now):
        return f"EXPIRED {expires}"
    return f"expires {expires}"


def _install_hook(args: argparse.Namespace) -> int:
    from gitstate.hooks.install import install_post_receive, install_state_guard

    if args.state:
        path = install_state_guard(Path(args.repo), force=args.force)
        print(f"installed {path}: pushes may not rewrite or delete refs/heads/state")
        return EXIT_OK
    path = install_post_receive(
        Path(args.repo),
        url=args.url,
        token_file=args.token_file,
        prefix=args.prefix,
        force=args.force,
    )
    print(f"installed {path}: pushes deploy through {args.url}")
    return EXIT_OK


def _state(args: argparse.Namespace) -> int:
    """``gitstate state check|accept-tip``: the state branch's rewind check, by hand."""
    from gitstate.services import open_store

    store = open_store(_local_config(args))
    if args.state_command == "accept-tip":
        before, after = store.accept_tip()
        print(f"accepted {after or 'no commit'} as the state tip (it was {before or 'unset'})")
        return EXIT_OK
    rewind = store.rewound()
    if rewind is not None:
        print(rewind.message, file=sys.stderr)
        return EXIT_ERROR
    print(f"ok: the state branch contains the last commit gitstate made ({store.head()})")
    return EXIT_OK


def _maintenance(args: argparse.Namespace) -> int:
    import dataclasses
    import threading

    from gitstate.process.maintenance import maintain_all

    config = Config.load(args.config)
    settings = config.maintenance
    if args.strategy:
        settings = dataclasses.replace(settings, strategy=args.strategy)
    stop = threading.Event()
    while True:
        for report in maintain_all(config.datadir, settings):
            if args.format == "json":
                print(json.dumps(report.to_json()), flush=True)
            else:
                before, after = report.before, report.after
                print(
                    f"{report.repo}: {before.loose} loose objects, {before.total_bytes} bytes"
                    f" -> {after.loose} loose, {after.total_bytes} bytes"
                    f" in {after.packs} pack(s) ({report.seconds:.1f}s)",
                    flush=True,
                )
        if args.every is None or stop.wait(args.every or settings.interval):
            return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="gitstate",
        description="Deploy Puppet code and guard deployments with gates; all state in git.",
    )
    parser.add_argument("--version", action="version", version=f"gitstate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a complete demo installation on embedded defaults")
    demo.add_argument(
        "--dir", default="gitstate-demo", help="demo folder (default ./gitstate-demo)"
    )
    demo.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default 8170)")
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="run the server, deploy workers and clients for real use")
    serve.add_argument("--config", required=True, help="YAML config file")
    serve.set_defaults(func=_serve)

    web = sub.add_parser("web", help="run only the HTTP server (gunicorn)")
    web.add_argument("--config", required=True, help="YAML config file")
    web.set_defaults(func=_web)

    worker = sub.add_parser("deploy-worker", help="run one deploy worker")
    worker.add_argument("--config", required=True, help="YAML config file")
    worker.add_argument("--slot", type=int, default=0, help="worker slot number (default 0)")
    worker.set_defaults(func=_deploy_worker)

    follower = sub.add_parser(
        "follow", help="keep this node's copies current from the git server (state.remote)"
    )
    follower.add_argument("--config", required=True, help="YAML config file")
    follower.set_defaults(func=_follow)

    deploy = sub.add_parser("deploy", help="deploy environments, like `puppet code deploy`")
    deploy.add_argument("environments", nargs="*", metavar="ENV", help="environments to deploy")
    deploy.add_argument("--all", action="store_true", help="deploy every environment")
    deploy.add_argument("--wait", "-w", action="store_true", help="wait until deployed")
    deploy.add_argument(
        "--dry-run", action="store_true", help="list environments (implies --all --wait)"
    )
    _add_client_options(deploy)
    deploy.set_defaults(func=_deploy)

    status = sub.add_parser("status", help="show the deploy queue, like `puppet code status`")
    _add_client_options(status)
    status.set_defaults(func=_status)

    sync = sub.add_parser("sync", help="run a file-sync client keeping a live code dir current")
    sync.add_argument(
        "--storage",
        required=True,
        help="DATADIR/storage.git (path or file:// URL) or the server's http(s):// base URL",
    )
    sync.add_argument(
        "--live", required=True, help="live code dir (environmentpath: LIVE/environments)"
    )
    sync.add_argument("--name", required=True, help="the client's name in check-ins and status")
    sync.add_argument("--config", help="config file to read file_sync settings and token from")
    sync.add_argument("--token-file", help="file holding the file-sync token (remote storage)")
    sync.add_argument("--keep-versions", type=int, help="versions of each environment to keep")
    sync.set_defaults(func=_sync)

    rollback = sub.add_parser("rollback", help="republish an earlier version of an environment")
    rollback.add_argument("environment", metavar="ENV", help="the environment to roll back")
    rollback.add_argument("--to", help="deploy signature to roll back to (default: previous)")
    rollback.add_argument("--wait", "-w", action="store_true", help="wait until clients synced")
    _add_client_options(rollback)
    rollback.set_defaults(func=_rollback)

    from gitstate.cli import gates as gate_cli

    gate_cli.add_parsers(sub, _add_client_options)

    token = sub.add_parser("token", help="issue, list and revoke API tokens (on the datadir)")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_sub.add_parser("create", help="issue a token and print it (shown only once)")
    create.add_argument("--user", required=True, help="who the token acts for")
    create.add_argument(
        "--lifetime",
        default="1h",
        type=_lifetime,
        help="how long it is valid: a number with a unit, s, m, h, d or y (30m, 12h, 7d, 1y, "
        "300s); 0 = never expires (default: %(default)s)",
    )
    create.add_argument(
        "--permission",
        action="append",
        help="admin, deploy:<env>, deploy:*, gates:<group> or gates:* (repeatable)",
    )
    create.add_argument("--description", default="", help="a note kept with the token")
    create.add_argument("--out", help="write the token to this file (mode 0600) instead of stdout")
    listing = token_sub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", help="the token id shown by create/list")
    for action in (create, listing, revoke):
        action.add_argument(
            "--config", help="config file (default $GITSTATE_CONFIG or ./gitstate.yaml)"
        )
    token.set_defaults(func=_token)

    state = sub.add_parser("state", help="check the state branch, or accept its tip after a rewind")
    state_sub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    check = state_sub.add_parser(
        "check", help="exit 1 if the state branch moved back behind gitstate's back"
    )
    accept = state_sub.add_parser(
        "accept-tip",
        help="take the branch's current tip as right, ending a rewind (writes resume)",
    )
    for action in (check, accept):
        action.add_argument(
            "--config", help="config file (default $GITSTATE_CONFIG or ./gitstate.yaml)"
        )
    state.set_defaults(func=_state)

    maintenance = sub.add_parser(
        "maintenance", help="pack and index the state and storage repositories (safe while live)"
    )
    maintenance.add_argument("--config", required=True, help="YAML config file")
    maintenance.add_argument("--strategy", choices=("incremental", "gc"), help="override config")
    maintenance.add_argument(
        "--every",
        type=float,
        nargs="?",
        const=0,
        help="repeat every N seconds (no N: maintenance.interval, default 3600)",
    )
    maintenance.add_argument("--format", choices=("text", "json"), default="text")
    maintenance.set_defaults(func=_maintenance)

    hook = sub.add_parser("install-hook", help="install gitstate's server-side git hook in REPO")
    hook.add_argument("repo", metavar="REPO", help="the repository (bare or not)")
    hook.add_argument(
        "--state",
        action="store_true",
        help="REPO is DATADIR/state.git: refuse pushes rewriting or deleting the state branch",
    )
    hook.add_argument(
        "--url", default=f"http://127.0.0.1:{DEFAULT_PORT}", help="the gitstate server's base URL"
    )
    hook.add_argument("--token-file", help="file holding the API token the hook sends")
    hook.add_argument("--prefix", help="environment prefix to send (?prefix=)")
    hook.add_argument("--force", action="store_true", help="replace a hook gitstate did not write")
    hook.set_defaults(func=_install_hook)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GitStateError as ex:
        print(f"gitstate: {ex}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
