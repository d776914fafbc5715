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

When the server's config has ``hooks.wait: true``, its answer carries
``"wait": SECONDS`` (``hooks.wait_timeout``) and the hook then follows each
queued deploy (``GET /code-manager/v1/deploys/status?id=N``) and prints one
line per environment as it ends: deployed at which commit, or the error
(a broken Puppetfile, say), so the pusher learns it before the prompt comes
back. Deploys still running at the bound are named with how to follow them.

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
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

ZERO = "0" * 40
DEFAULT_TIMEOUT = 10.0
HEADS = "refs/heads/"
STATUS_PATH = "/code-manager/v1/deploys/status"


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


def outcome(status: Mapping[str, Any]) -> str | None:
    """Describe a finished deploy (``deploys/status?id=N``) in one line; None while it runs."""
    name, deploy_id = status.get("environment"), status.get("id")
    if status.get("status") == "complete":
        signature = str(status.get("deploy-signature") or "")[:12]
        return f"gitstate: deployed {name} at {signature} (#{deploy_id})"
    if status.get("status") == "failed":
        error = status.get("error") or {}
        message = error.get("msg") if isinstance(error, Mapping) else None
        return f"gitstate: deploy of {name} failed (#{deploy_id}): {message or error}"
    return None


def follow(
    client: Any, deploys: Sequence[Mapping[str, Any]], bound: float, *, every: float = 0.5
) -> Iterator[str]:
    """Yield a line per deploy as it ends, polling its status for ``bound`` seconds at most.

    Never raises: an unreachable server ends the wait with a line saying so.
    """
    from gitstate.client import ClientError

    waiting = {int(entry["id"]): entry for entry in deploys if "id" in entry}
    until = time.monotonic() + bound
    while waiting:
        for deploy_id in list(waiting):
            try:
                status = client.request("GET", f"{STATUS_PATH}?id={deploy_id}")
            except ClientError as ex:
                yield f"gitstate: cannot follow the deploys ({ex}); see gitstate status"
                return
            if not isinstance(status, Mapping):
                continue
            line = outcome(status)
            if line is not None:
                del waiting[deploy_id]
                yield line
            else:
                waiting[deploy_id] = {**waiting[deploy_id], **status}
        if not waiting:
            return
        if time.monotonic() >= until:
            for deploy_id, entry in waiting.items():
                yield (
                    f"gitstate: {entry.get('environment')} still {entry.get('status', 'queued')} "
                    f"after {bound:g}s (#{deploy_id}); follow it with: gitstate status"
                )
            return
        time.sleep(every)


def notify(
    updates: Sequence[RefUpdate],
    *,
    url: str,
    token_file: str | None = None,
    prefix: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[str]:
    """Send the branch updates to the server; yield the lines to print, as they come.

    The first line says what the server did; with ``hooks.wait`` on the
    server, one line per deploy follows as each ends. Never raises: any
    failure becomes a line telling the pusher that the push is kept and how
    to deploy by hand.
    """
    branches = [update for update in updates if update.branch is not None]
    if not branches:
        return
    # Imported here so a push of tags only costs nothing but Python's start.
    from gitstate.client import Client, ClientError

    body = {"updates": [dataclasses.asdict(update) for update in branches]}
    client = Client(url, token_file, timeout=timeout)
    try:
        answer = client.request("POST", webhook_path(prefix), body)
    except ClientError as ex:
        pushed = " ".join(update.branch or "" for update in branches if not update.deleted)
        hint = f"; deploy by hand: gitstate deploy {pushed}" if pushed else ""
        yield f"gitstate: deploy not queued ({ex}); the push is kept{hint}"
        return
    yield summary(answer)
    if not isinstance(answer, dict):
        return
    bound = answer.get("wait")
    deploys = answer.get("deploys") or []
    if isinstance(bound, int | float) and bound > 0 and deploys:
        yield from follow(client, deploys, float(bound))


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
        for line in notify(
            updates,
            url=url,
            token_file=git_config("gitstate.tokenFile"),
            prefix=git_config("gitstate.prefix"),
            timeout=timeout,
        ):
            # Flushed line by line: git relays each to the pusher as it comes.
            print(line, file=stdout, flush=True)
    except Exception as ex:  # a post-receive hook must never fail the push
        print(f"gitstate: post-receive hook error: {ex}", file=stdout)
    return 0


def main() -> int:
    """Entry point of the installed hook."""
    return run(sys.stdin, sys.stdout)
