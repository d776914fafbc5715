"""The ``gitstate`` command.

Each subcommand is a thin wrapper: it parses flags, calls one function of the
service layer (or the demo/server runners) and turns errors into a message on
stderr and a documented exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gitstate import __version__
from gitstate.config import DEFAULT_PORT, Config
from gitstate.errors import GitStateError

#: Exit codes, documented in README.md.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _demo(args: argparse.Namespace) -> int:
    from gitstate import demo

    return demo.run(Path(args.dir), args.port)


def _serve(args: argparse.Namespace) -> int:
    from gitstate.server import serve

    config = Config.load(args.config)
    serve(config, str(Path(args.config).absolute()))
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

    serve = sub.add_parser("serve", help="run the server (gunicorn) for real use")
    serve.add_argument("--config", required=True, help="YAML config file")
    serve.set_defaults(func=_serve)
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
