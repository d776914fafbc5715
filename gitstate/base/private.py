"""Write files only their owner may read: tokens and configs holding secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO


def open_private(path: str | Path) -> TextIO:
    """Open ``path`` for writing as text, mode 0600, also when it already exists.

    ``O_CREAT``'s mode applies only to a new file; a file left by an earlier
    run keeps whatever mode it had, so the mode is set on the descriptor too.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "w", encoding="utf-8")
