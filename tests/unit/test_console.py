"""The demo's console: which log lines reach a person, and that all reach the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from gitstate.process.console import Console


def _line(level: str, message: str, **extra: object) -> str:
    return json.dumps({"level": level, "logger": "x", "message": message, **extra})


def test_a_person_sees_notable_lines_and_each_warning_once(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(tmp_path / "gitstate.log", out)
    console.line("web", _line("INFO", "GET /file-sync/v1/latest-commit 200"))
    for process in ("web", "deploy-worker-0", "deploy-worker-1"):
        console.line(process, _line("WARNING", "branch x/y corrected to x_y"))
    console.line("deploy-worker-0", _line("INFO", "deployed dev at abc (#1)", notable=True))
    console.line("deploy-worker-0", _line("ERROR", "deploy of dev failed: boom", notable=False))
    console.line("deploy-worker-0", _line("ERROR", "deploy #2 of dev failed: boom", notable=True))
    console.line("deploy-worker-0", _line("ERROR", "deploy #2 of dev failed: boom", notable=True))
    console.line("sync-primary", "gitstate: storage.git: not a git repository")
    console.line("web", "Traceback (most recent call last):")
    console.close()
    shown = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert shown == [
        "warning: branch x/y corrected to x_y",
        "deployed dev at abc (#1)",
        "error: deploy #2 of dev failed: boom",
        "error: deploy #2 of dev failed: boom",
        "error: gitstate: storage.git: not a git repository",
    ]
    records = [json.loads(line) for line in (tmp_path / "gitstate.log").read_text().splitlines()]
    assert len(records) == 10
    assert records[0]["process"] == "web"
    assert records[-1] == {
        "level": "INFO",
        "logger": "output",
        "message": "Traceback (most recent call last):",
        "process": "web",
    }
