"""``gitstate gate`` and ``gitstate ticket``: gates from the command line.

Both talk to a running server through :class:`gitstate.client.Client`, so
they work from any host with a token file. Exit codes (docs/gates.md) let
pipelines branch without parsing output: 0 ok, 1 error, 2 usage,
:data:`EXIT_GATE_CLOSED` (4) when a gate is closed or a ticket is denied,
and :data:`EXIT_QUEUED` (5) when a ticket waits in a queue (``gitstate.cli.main``
defines 0 to 3).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

from gitstate.cli.exits import EXIT_GATE_CLOSED, EXIT_OK, EXIT_QUEUED, EXIT_USAGE


class GateSpecError(ValueError):
    """A gate was not named as ``GROUP/SERVICE/ENV`` (or ``GROUP/SERVICE``)."""

    def __init__(self, spec: str, expected: str) -> None:
        self.spec = spec
        super().__init__(f"{spec!r} is not {expected}")


def parse_gate(spec: str, *, service_only: bool = False) -> tuple[str, ...]:
    """Split ``GROUP/SERVICE/ENV`` (or also ``GROUP/SERVICE`` when allowed).

    Raises:
        GateSpecError: the spec has the wrong number of parts or empty parts.
    """
    parts = tuple(spec.split("/"))
    allowed = (2, 3) if service_only else (3,)
    if len(parts) not in allowed or not all(parts):
        expected = "GROUP/SERVICE[/ENV]" if service_only else "GROUP/SERVICE/ENV"
        raise GateSpecError(spec, expected)
    return parts


def _path(parts: tuple[str, ...], suffix: str = "") -> str:
    return "/api/gates/" + "/".join(urllib.parse.quote(part, safe="") for part in parts) + suffix


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _reasons(env: dict[str, Any]) -> str:
    reasons = env.get("closed_by")
    if reasons:
        return "; ".join(reason["detail"] for reason in reasons)
    if env.get("state") == "closed" and env.get("queue"):
        return f"held by ticket {env['queue'][0]['id']}"
    return ""


def _env_line(label: str, env: dict[str, Any]) -> str:
    line = f"{label:<40} {env['state']:<6}"
    why = _reasons(env)
    if why:
        line += f"  ({why})"
    if env.get("message"):
        line += f"  {env['message']!r}"
    if env.get("queue"):
        line += f"  queue: {', '.join(ticket['id'] for ticket in env['queue'])}"
    return line


def _gate_list(client: Any, args: argparse.Namespace) -> int:
    answer = client.request("GET", "/api/gates")
    if args.format == "json":
        _print_json(answer)
        return EXIT_OK
    for doc in answer["services"]:
        for name, env in doc["environments"].items():
            print(_env_line(f"{doc['group']}/{doc['name']}/{name}", env))
    return EXIT_OK


def _gate_show(client: Any, args: argparse.Namespace) -> int:
    parts = parse_gate(args.gate, service_only=True)
    answer = client.request("GET", _path(parts))
    if len(parts) == 2:
        if args.format == "json":
            _print_json(answer)
        else:
            for name, env in answer["environments"].items():
                print(_env_line(f"{args.gate}/{name}", env))
        return EXIT_OK
    if args.format == "json":
        _print_json(answer)
    else:
        print(_env_line(args.gate, answer))
        if answer.get("state_timestamp"):
            print(f"state since {answer['state_timestamp']}")
    return EXIT_GATE_CLOSED if answer["state"] == "closed" else EXIT_OK


def _gate_set(client: Any, args: argparse.Namespace) -> int:
    parts = parse_gate(args.gate)
    state = "open" if args.gate_command == "open" else "closed"
    body: dict[str, Any] = {"state": state}
    if args.message is not None:
        body["message"] = args.message
    answer = client.request("PUT", _path(parts), body)
    if args.format == "json":
        _print_json(answer)
    else:
        env = answer["environments"][parts[2]]
        print(f"{args.gate} is {env['state']} by hand")
    return EXIT_OK


def _gate_history(client: Any, args: argparse.Namespace) -> int:
    parts = parse_gate(args.gate)
    query = f"?limit={args.limit}" if args.limit else ""
    answer = client.request("GET", _path(parts, "/history" + query))
    if args.format == "json":
        _print_json(answer)
        return EXIT_OK
    for entry in answer["history"]:
        print(f"{entry['commit'][:12]} {entry['time']} {entry['actor']}: {entry['subject']}")
    return EXIT_OK


def _ticket_acquire(client: Any, args: argparse.Namespace) -> int:
    gates: dict[str, dict[str, list[str]]] = {}
    for spec in args.gates.split(","):
        group, service, env = parse_gate(spec.strip())
        gates.setdefault(group, {}).setdefault(service, []).append(env)
    body: dict[str, Any] = {"gates": gates}
    if args.ticket:
        body["ticket"] = args.ticket
    if args.link:
        body["link"] = args.link
    answer = client.request("PUT", "/api/gates" + ("?queue=true" if args.queue else ""), body)
    status = answer.get("status")
    ticket = answer.get("ticket") or {}
    if args.format == "json":
        _print_json(answer)
    elif ticket:
        # The id alone on stdout, so TICKET=$(gitstate ticket acquire ...) works.
        print(ticket["id"])
        print(f"gitstate: {status}: ticket {ticket['id']} for {args.gates}", file=sys.stderr)
    else:
        print(f"gitstate: denied: {args.gates} is closed or held", file=sys.stderr)
    if status == "ok":
        return EXIT_OK
    if status == "queued":
        return EXIT_QUEUED
    return EXIT_GATE_CLOSED


def _ticket_release(client: Any, args: argparse.Namespace) -> int:
    answer = client.request("DELETE", "/api/tickets/" + urllib.parse.quote(args.id, safe=""))
    if args.format == "json":
        _print_json(answer)
    else:
        print(f"released ticket {args.id}")
    return EXIT_OK


def _run(actions: dict[str, Callable[[Any, argparse.Namespace], int]], key: str) -> Callable:
    def run(args: argparse.Namespace) -> int:
        from gitstate.client import Client

        try:
            action = actions[getattr(args, key)]
            return action(Client(args.service_url, args.token_file), args)
        except GateSpecError as ex:
            print(f"gitstate: {ex}", file=sys.stderr)
            return EXIT_USAGE

    return run


def add_parsers(sub: Any, add_client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``gate`` and ``ticket`` to the ``gitstate`` subcommands.

    Args:
        sub: the subparsers of the ``gitstate`` parser.
        add_client_options: adds ``--service-url``, ``--token-file`` and
            ``--format`` to a parser.
    """
    gate = sub.add_parser("gate", help="list, show, open, close gates; their history")
    gate_sub = gate.add_subparsers(dest="gate_command", required=True, metavar="ACTION")
    listing = gate_sub.add_parser("list", help="every gate with its derived state")
    show = gate_sub.add_parser(
        "show", help="one service's gates, or one gate (exit 4 when it is closed)"
    )
    show.add_argument("gate", metavar="GROUP/SERVICE[/ENV]")
    opening = gate_sub.add_parser("open", help="open a gate by hand")
    closing = gate_sub.add_parser("close", help="close a gate by hand")
    for parser in (opening, closing):
        parser.add_argument("gate", metavar="GROUP/SERVICE/ENV")
        parser.add_argument("-m", "--message", help="set the gate's message too")
    history = gate_sub.add_parser("history", help="who changed a gate, newest first")
    history.add_argument("gate", metavar="GROUP/SERVICE/ENV")
    history.add_argument("--limit", type=int, help="show at most this many changes")
    for parser in (listing, show, opening, closing, history):
        add_client_options(parser)
    gate.set_defaults(
        func=_run(
            {
                "list": _gate_list,
                "show": _gate_show,
                "open": _gate_set,
                "close": _gate_set,
                "history": _gate_history,
            },
            "gate_command",
        )
    )

    ticket = sub.add_parser("ticket", help="take gates with a ticket (test-and-set), release it")
    ticket_sub = ticket.add_subparsers(dest="ticket_command", required=True, metavar="ACTION")
    acquire = ticket_sub.add_parser(
        "acquire", help="take gates at once; exit 0 ok, 4 denied, 5 queued"
    )
    acquire.add_argument("gates", metavar="GROUP/SERVICE/ENV[,GROUP/SERVICE/ENV...]")
    acquire.add_argument("--queue", action="store_true", help="wait in the queue if held")
    acquire.add_argument("--link", help="URL shown with the ticket (the pipeline run)")
    acquire.add_argument("--ticket", help="re-send this ticket (keeps a queued place)")
    release = ticket_sub.add_parser("release", help="release a ticket (unknown ids are fine)")
    release.add_argument("id", metavar="ID")
    for parser in (acquire, release):
        add_client_options(parser)
    ticket.set_defaults(
        func=_run({"acquire": _ticket_acquire, "release": _ticket_release}, "ticket_command")
    )
