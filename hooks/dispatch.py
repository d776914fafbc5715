"""Run one server-side git hook by name: ``python -m gitstate.hooks NAME``.

The installed hook scripts are two-line shell files that ``exec`` this with
the absolute path of the Python gitstate is installed in, so a hook works
whether or not a virtualenv is activated in the shell that runs git. The
name may also come from the program name (``hooks/post-receive`` linked to
``gitstate-hook``), as sourcehut's single hook binary does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from . import post_receive, state_guard

#: Hook name → its entry point (reads stdin, returns the exit status).
HOOKS: dict[str, Callable[[], int]] = {
    "post-receive": post_receive.main,
    "pre-receive": state_guard.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the hook named by the first argument (or by the program name)."""
    args = list(sys.argv if argv is None else argv)
    name = args[1] if len(args) > 1 else os.path.basename(args[0]) if args else ""
    hook = HOOKS.get(name)
    if hook is None:
        print(
            f"gitstate hooks: unknown hook {name!r}; known: {', '.join(sorted(HOOKS))}",
            file=sys.stderr,
        )
        return 2
    return hook()
