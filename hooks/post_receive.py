"""The control repository's ``post-receive`` hook: pushes become deploys.

git runs it after the refs are updated, with one ``old new ref`` line per
updated ref on stdin. The hook sends *one* request for the whole push to the
server's webhook endpoint with gitstate's own payload type
(``POST /code-manager/v1/webhook?type=gitstate-hook``, body
``{"updates": [{"ref", "old", "new"}, …]}``): the server queues a deploy of
every pushed branch and removes the environments of deleted ones, exactly as
for a git host's webhook, and answers what it did. The hook prints that in
one line and exits 0 whatever happens: the push has already succeeded and
must never look failed because the deploy service is down.

Settings come from the repository's git config, written by
``gitstate install-hook``:

* ``gitstate.url`` — the server's base URL (required);
* ``gitstate.tokenFile`` — a file holding the API token, sent in
  ``X-Authentication`` (optional);
* ``gitstate.prefix`` — the ``?prefix=`` to send (optional);
* ``gitstate.timeout`` — seconds to wait for the server (default 10).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import IO, Any

ZERO = "0" * 40
DEFAULT_TIMEOUT = 10.0
HEADS = "refs/heads/"


@dataclasses.dataclass(frozen=True)
class RefUpdate:
    """One line of a receive hook's input: ``old new ref``."""

    old: str
    new: str
    ref: str

    @property
    def branch(self) -> str | None:
        """The branch updated, or None for tags and other refs."""
        return self.ref[len(HEADS) :] if self.ref.startswith(HEADS) else None

    @property
    def deleted(self) -> bool:
        """Whether the push deleted the ref."""
        return self.new == ZERO


def read_updates(lines: Iterable[str]) -> list[RefUpdate]:
    """Parse receive-hook input, skipping lines that are not ``old new ref``."""
    updates = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            updates.append(RefUpdate(*parts))
    return updates


def git_config(key: str) -> str | None:
    """Return a value of the repository's git config, or None when unset."""
    result = subprocess.run(
        ["git", "config", "--get", key], capture_output=True, text=True, check=False
    )
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def webhook_path(prefix: str | None = None) -> str:
    """Return the request path the hook posts to."""
    query = {"type": "gitstate-hook"}
    if prefix:
        query["prefix"] = prefix
    return "/code-manager/v1/webhook?" + urllib.parse.urlencode(query)


def summary(answer: Any) -> str:
    """Describe the server's answer in one line for the pusher."""
    if not isinstance(answer, dict):
        return "gitstate: the server answered, but not with what the hook expected"
    parts = []
    deploys = answer.get("deploys") or []
    if deploys:
        names = ", ".join(f"{entry['environment']} (#{entry['id']})" for entry in deploys)
        parts.append(f"queued deploy of {names}")
    if answer.get("removed"):
        parts.append(f"removed {', '.join(answer['removed'])}")
    if answer.get("kept"):
        parts.append(f"kept {', '.join(answer['kept'])} (branch still exists or fetch failed)")
    return "gitstate: " + ("; ".join(parts) or "nothing to do")


def notify(
    updates: Sequence[RefUpdate],
    *,
    url: str,
    token_file: str | None = None,
    prefix: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Send the branch updates to the server; return the line to print.

    Never raises: any failure becomes a line telling the pusher that the
    push is kept and how to deploy by hand.
    """
    branches = [update for update in updates if update.branch is not None]
    if not branches:
        return ""
    # Imported here so a push of tags only costs nothing but Python's start.
    from gitstate.client import Client, ClientError

    body = {"updates": [dataclasses.asdict(update) for update in branches]}
    try:
        answer = Client(url, token_file, timeout=timeout).request(
            "POST", webhook_path(prefix), body
        )
    except ClientError as ex:
        pushed = " ".join(update.branch or "" for update in branches if not update.deleted)
        hint = f"; deploy by hand: gitstate deploy {pushed}" if pushed else ""
        return f"gitstate: deploy not queued ({ex}); the push is kept{hint}"
    return summary(answer)


def run(stdin: IO[str], stdout: IO[str]) -> int:
    """Read the push from ``stdin``, notify the server, report on ``stdout``."""
    try:
        updates = read_updates(stdin)
        url = git_config("gitstate.url")
        if not url:
            print("gitstate: gitstate.url is not set; run gitstate install-hook", file=stdout)
            return 0
        try:
            timeout = float(git_config("gitstate.timeout") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
        line = notify(
            updates,
            url=url,
            token_file=git_config("gitstate.tokenFile"),
            prefix=git_config("gitstate.prefix"),
            timeout=timeout,
        )
        if line:
            print(line, file=stdout)
    except Exception as ex:  # a post-receive hook must never fail the push
        print(f"gitstate: post-receive hook error: {ex}", file=stdout)
    return 0


def main() -> int:
    """Entry point of the installed hook."""
    return run(sys.stdin, sys.stdout)
