"""A terminal for a person beside a log file for machines (``gitstate demo``).

Under ``gitstate serve`` every process writes JSON lines to stderr, for
journald or Loki. In the demo a person watches the terminal, so the
supervisor hands it a :class:`Console`: each child's output goes through a
pipe into one JSON-lines file, and only what a person wants to see reaches
the terminal, one short line each:

* records logged with ``extra={"notable": True}`` (a deploy finished or
  failed, a file-sync client synced, an environment rolled back);
* warnings and errors, unless logged with ``notable: False`` because a
  notable line says the same; a warning's text is shown once, however many
  processes or deploys repeat it (the branch-name correction, say).

Notable lines are shown every time: each is a distinct event.

Everything, shown or not, is in the file, with the child's name added.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, TextIO

from gitstate.base import logs

_LOUD = ("WARNING", "ERROR", "CRITICAL")
_PREFIX = {"WARNING": "warning: ", "ERROR": "error: ", "CRITICAL": "error: "}


class Console:
    """Route log lines to ``log_path`` and the few that matter to ``out``.

    Args:
        log_path: the JSON-lines file (appended to).
        out: the terminal (default stdout).
    """

    def __init__(self, log_path: Path, out: TextIO | None = None) -> None:
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.log_path.open("a", encoding="utf-8")
        self._out = out if out is not None else sys.stdout
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._readers: list[threading.Thread] = []

    def attach(self, source: str, stream: IO[bytes]) -> None:
        """Read ``stream`` (a child's output) line by line until it ends."""

        def read() -> None:
            with stream:
                for raw in iter(stream.readline, b""):
                    self.line(source, raw.decode("utf-8", errors="replace").rstrip("\n"))

        reader = threading.Thread(target=read, name=f"console-{source}", daemon=True)
        reader.start()
        self._readers.append(reader)

    def line(self, source: str, text: str) -> None:
        """Take one line of ``source``'s output: file it; show it if it matters."""
        if not text.strip():
            return
        record = _record(source, text)
        shown = self.human(record)
        with self._lock:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
            if shown is not None:
                print(shown, file=self._out, flush=True)

    def say(self, text: str) -> None:
        """Print a line of the program's own (a banner, a hint) to the terminal."""
        with self._lock:
            print(text, file=self._out, flush=True)

    def human(self, record: dict[str, Any]) -> str | None:
        """Return the terminal line for a record, or None when it is for the file only."""
        notable = record.get("notable")
        level = str(record.get("level", "INFO")).upper()
        if notable is False or (notable is not True and level not in _LOUD):
            return None
        message = str(record.get("message", "")).strip()
        if level == "WARNING" and notable is not True:
            with self._lock:
                if message in self._said:
                    return None
                self._said.add(message)
        return f"{time.strftime('%H:%M:%S')} {_PREFIX.get(level, '')}{message}"

    def handler(self) -> logging.Handler:
        """Return a logging handler feeding this process's own records in."""
        return _ConsoleHandler(self)

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the children's output to drain, then close the file."""
        for reader in self._readers:
            reader.join(timeout)
        with self._lock:
            self._file.close()


def _record(source: str, text: str) -> dict[str, Any]:
    """Decode a JSON log line, or wrap a plain one; name the process it came from."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        # Plain output: gunicorn before logging is set up, a traceback, or a
        # command's own error line ("gitstate: ..."), which a person should see.
        level = "ERROR" if text.startswith("gitstate: ") else "INFO"
        record = {"level": level, "logger": "output", "message": text}
    record.setdefault("process", source)
    return record


class _ConsoleHandler(logging.Handler):
    """Format records as the children do (JSON) and hand them to a console."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logs.formatter(json=True))
        self.addFilter(logs.RequestContext())

    def emit(self, record: logging.LogRecord) -> None:
        """Pass one formatted record to the console."""
        try:
            self.console.line("supervisor", self.format(record))
        except Exception:
            self.handleError(record)


def configure(console: Console, level: str = "INFO") -> None:
    """Send this process's logging to ``console`` only."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(console.handler())
    root.setLevel(level)
