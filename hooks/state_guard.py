"""The state repository's ``pre-receive`` hook: pushed history stays history.

The state branch is gitstate's audit log. gitstate itself advances it by
compare-and-swap through libgit2, which runs no hooks; a *push* to
``DATADIR/state.git`` (an operator restoring a backup, a mirror gone wrong)
goes through ``git receive-pack``, and this hook refuses any push that would
delete ``refs/heads/state`` or move it to a commit that does not contain the
current tip. ``receive.denyNonFastForwards`` and ``receive.denyDeletes``,
which :func:`gitstate.store.branch.init_repository` sets, say the same; the hook
keeps saying it if someone turns those off.

pre-receive runs while the pushed objects are still in git's quarantine
directory; the ``git merge-base`` child inherits ``GIT_OBJECT_DIRECTORY``
and ``GIT_ALTERNATE_OBJECT_DIRECTORIES`` from the hook's environment, so it
sees them. The whole push is refused when one ref is: pre-receive is
all-or-nothing, which keeps the check simple and fast (one ``merge-base``
per protected ref, while the pusher waits).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import IO

from .post_receive import ZERO, RefUpdate, read_updates

#: The refs no push may rewrite or delete.
PROTECTED = ("refs/heads/state",)


def is_ancestor(old: str, new: str) -> bool:
    """Tell whether commit ``old`` is contained in ``new`` (a fast-forward)."""
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", old, new],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def refusals(
    updates: Sequence[RefUpdate],
    *,
    protected: Iterable[str] = PROTECTED,
    fast_forward: Callable[[str, str], bool] = is_ancestor,
) -> list[str]:
    """Return why each refused update is refused (empty: accept the push)."""
    guarded = set(protected)
    reasons = []
    for update in updates:
        if update.ref not in guarded or update.old == ZERO:
            continue  # not protected, or created (the first write)
        if update.new == ZERO:
            reasons.append(f"refusing to delete {update.ref}: it is gitstate's audit log")
        elif not fast_forward(update.old, update.new):
            reasons.append(
                f"refusing non-fast-forward update of {update.ref} "
                f"({update.old[:12]} is not in {update.new[:12]}): history is never rewritten"
            )
    return reasons


def run(stdin: IO[str], stderr: IO[str]) -> int:
    """Check the push on ``stdin``; return 1 (refuse) or 0 (accept)."""
    reasons = refusals(read_updates(stdin))
    for reason in reasons:
        print(f"gitstate: {reason}", file=stderr)
    return 1 if reasons else 0


def main() -> int:
    """Entry point of the installed hook."""
    return run(sys.stdin, sys.stderr)
