"""Tickets: who holds a gate or waits for it, and until when.

A ticket is one record, ``tickets/<first two characters>/<id>.yaml``, with
its expiry, link, status (``current`` once it got ``ok``, else ``queued``)
and the gates whose queues it stands in (``group/service/environment``).
The two-character fan-out keeps directories small, so a commit rewrites
small trees. A gate's queue is the list of ticket ids in its service's
record, in FIFO order: the first live ticket holds the gate.

Expired tickets are ignored when read and dropped from a queue the next time
a write touches that gate (:func:`prune`); a read never writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from gitstate.errors import NOT_FOUND, GitStateError
from gitstate.gates.records import SCHEMA_VERSION, Reader, Writer

TICKETS_DIR = "tickets"
#: Status of a ticket that got ``ok``: it holds its gates.
CURRENT = "current"
#: Status of a ticket that waits in at least one queue.
QUEUED = "queued"

_TICKET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


class TicketNotFound(GitStateError, LookupError):
    """The ticket does not exist or has expired."""

    status = 404
    kind = NOT_FOUND

    def __init__(self, ticket_id: str) -> None:
        self.ticket_id = ticket_id
        super().__init__("Ticket does not exist")


def ticket_path(ticket_id: str) -> str:
    """Return the record path of a ticket (fanned out by its first two characters)."""
    return f"{TICKETS_DIR}/{ticket_id[:2]}/{ticket_id}.yaml"


def read_ticket(reader: Reader, ticket_id: Any) -> dict[str, Any] | None:
    """Return a ticket's record, dead or alive; None if there is none.

    An id that could not name a ticket record reads as no ticket, so a
    client's id never becomes a path it chose.
    """
    if not isinstance(ticket_id, str) or not _TICKET_ID.fullmatch(ticket_id):
        return None
    return reader.get(ticket_path(ticket_id))


def alive(ticket: Mapping[str, Any] | None, now: float) -> bool:
    """Tell whether ``ticket`` exists and has not expired at ``now`` (0 never expires)."""
    if ticket is None:
        return False
    expiry = ticket.get("expiration_date", 0)
    return not expiry or now < expiry


def live_ticket(reader: Reader, ticket_id: str, now: float) -> dict[str, Any]:
    """Return a ticket a client names, which must be alive.

    Raises:
        TicketNotFound: there is no such ticket, or it has expired.
    """
    ticket = read_ticket(reader, ticket_id)
    if not alive(ticket, now):
        raise TicketNotFound(ticket_id)
    assert ticket is not None
    return ticket


def live_queue(reader: Reader, queue: Iterable[str], now: float) -> list[dict[str, Any]]:
    """Return the live tickets of a queue, in its order (the first holds the gate)."""
    tickets = []
    for ticket_id in queue:
        ticket = read_ticket(reader, ticket_id)
        if alive(ticket, now):
            assert ticket is not None
            tickets.append(ticket)
    return tickets


def prune(writer: Writer, doc: dict[str, Any], now: float) -> list[str]:
    """Drop dead tickets from every queue of a service's record; delete expired records.

    Changes ``doc`` in place (the caller writes it) and returns the ids
    dropped, sorted, so the commit can say so.
    """
    dropped: list[str] = []
    for env in doc["environments"].values():
        keep = []
        for ticket_id in env["queue"]:
            ticket = read_ticket(writer, ticket_id)
            if alive(ticket, now):
                keep.append(ticket_id)
                continue
            dropped.append(ticket_id)
            if ticket is not None:
                writer.delete(ticket_path(ticket_id))
        env["queue"] = keep
    return sorted(set(dropped))


def new_ticket(ticket_id: str, link: str | None) -> dict[str, Any]:
    """Return a new ticket's record, in no queue yet and not yet stamped."""
    return {
        "schema_version": SCHEMA_VERSION,
        "id": ticket_id,
        "link": link,
        "gates": [],
        "status": QUEUED,
        "updated": "",
        "expiration_date": 0,
    }


def expiry(lifetime: int, slack: int, now: float) -> float:
    """Return the expiry to store for a ticket that lives ``lifetime`` (0 = forever).

    An epoch float with microseconds, as gatekeeper writes it
    (``1453799405.26424``); the integer 0 for a ticket that never expires.
    """
    return 0 if lifetime == 0 else round(now + lifetime + slack, 6)


def needs_rewrite(ticket: Mapping[str, Any], status: str, lifetime: int, now: float) -> bool:
    """Tell whether a ticket's stored status or expiry must be written again.

    A re-send only writes when the status changes or the stored expiry no
    longer covers one lifetime from now (queued tickets store extra slack
    for that; see docs/gates.md), so heartbeats do not bury the history.
    """
    if ticket["status"] != status:
        return True
    stored = ticket["expiration_date"]
    if lifetime == 0:
        return stored != 0
    return stored == 0 or stored - now < lifetime


def public_ticket(ticket: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ticket as gatekeeper's API shows it."""
    return {
        "id": ticket["id"],
        "updated": ticket["updated"],
        "expiration_date": ticket["expiration_date"],
        "link": ticket.get("link"),
    }


def unlink(writer: Writer, ticket_id: str, labels: list[str]) -> None:
    """Take gates (``group/service/environment``) off a ticket's list of gates."""
    ticket = read_ticket(writer, ticket_id)
    if ticket is None:
        return
    keep = [label for label in ticket.get("gates", []) if label not in labels]
    if keep != ticket.get("gates", []):
        ticket["gates"] = keep
        writer.put(ticket_path(ticket_id), ticket)


def relink(writer: Writer, doc: Mapping[str, Any], old: str, new: str) -> None:
    """Rename gates on the tickets queued in a moved service (prefix ``old`` → ``new``)."""
    ids = {ticket_id for env in doc["environments"].values() for ticket_id in env["queue"]}
    for ticket_id in sorted(ids):
        ticket = read_ticket(writer, ticket_id)
        if ticket is None:
            continue
        ticket["gates"] = [
            new + label.removeprefix(old) if label.startswith(old) else label
            for label in ticket.get("gates", [])
        ]
        writer.put(ticket_path(ticket_id), ticket)
