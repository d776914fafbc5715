"""Puppetfiles that use Ruby, evaluated by the system Ruby (opt-in).

r10k ``instance_eval``s a Puppetfile, so some control repositories use Ruby
in it: a ``def`` for the default branch, variables, strings built from
pieces. :mod:`gitstate.engine.puppetfile` reads the DSL without Ruby and
refuses those; with ``deploy.puppetfile_ruby: true`` such a file is handed
to :class:`RubyEvaluator`, which runs ``puppetfile_eval.rb`` (shipped next
to this module) in a subprocess:

* the Puppetfile text is a copy fed on stdin; the working directory and
  ``HOME`` are an empty temporary directory, removed afterwards;
* no network: the process runs in a network namespace of its own
  (``unshare -n``, or ``unshare -rn`` as an unprivileged user) when the
  host allows one; otherwise, and always in addition, the environment has
  no proxy variables and the script removes Ruby's socket classes and
  refuses ``require`` of socket, net/http, open-uri and the like;
* no writes and no subprocesses: ``RLIMIT_FSIZE`` is 0, File/Dir methods
  that change the file system and ``system``/backticks/``spawn``/``fork``
  raise; memory and CPU are limited; the whole run has a time limit
  (``deploy.timeouts.puppetfile``), after which its process group is killed.

This is a fence against accidents and casual misuse, not a sandbox for
hostile code: Ruby is too dynamic for stubs to be a boundary. Turn it on
only for control repositories whose committers may run code as the
gitstate user (r10k runs every Puppetfile that way).

The script prints the declarations as JSON; they go through
:func:`gitstate.engine.puppetfile.build`, the checks parsed files get (names,
versions, ``ext::`` and other refused URLs, install paths, duplicates).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from gitstate.engine.puppetfile import (
    Puppetfile,
    PuppetfileError,
    UnrecognizedDeclaration,
    build,
)

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("puppetfile_eval.rb")
DEFAULT_RUBY = "/usr/bin/ruby"
#: Largest answer read from the evaluator, in bytes.
MAX_OUTPUT = 4 * 1024 * 1024
_MEMORY = 512 * 1024 * 1024
_UNRECOGNIZED = "unrecognized declaration '"


class PuppetfileRubyError(PuppetfileError):
    """Ruby refused the Puppetfile, or could not be run on it."""


@functools.cache
def network_isolation() -> tuple[str, ...]:
    """Return the command prefix that takes the network away, or ``()``.

    ``unshare -n`` needs CAP_SYS_ADMIN; ``unshare -rn`` works for an
    unprivileged user where user namespaces are allowed. Probed once.
    """
    for prefix in (("unshare", "-n"), ("unshare", "-rn")):
        try:
            done = subprocess.run(
                [*prefix, "true"], capture_output=True, timeout=10, check=False, env={}
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return prefix
    log.warning(
        "no network namespace for Puppetfile evaluation (unshare -n/-rn failed);"
        " relying on the Ruby stubs and an environment without proxies"
    )
    return ()


@dataclasses.dataclass(frozen=True)
class RubyEvaluator:
    """Evaluate Puppetfiles with the system Ruby, fenced (see the module doc).

    Attributes:
        ruby: the Ruby interpreter.
        timeout: seconds one evaluation may take.
    """

    ruby: str = DEFAULT_RUBY
    timeout: float = 10.0

    def evaluate(self, text: str) -> Puppetfile:
        """Return the Puppetfile ``text`` declares, as r10k would read it.

        Raises:
            PuppetfileError: Ruby refused the text (its words, with the
                line), Ruby could not be run or did not finish in time, or
                the declarations fail the checks parsed files get.
        """
        answer = self._run(text)
        if "error" in answer:
            message = str(answer["error"])
            line = answer.get("line") if isinstance(answer.get("line"), int) else None
            if message.startswith(_UNRECOGNIZED) and message.endswith("'"):
                raise UnrecognizedDeclaration(message[len(_UNRECOGNIZED) : -1], line=line)
            raise PuppetfileRubyError(f"Failed to evaluate the Puppetfile: {message}", line=line)
        return build(_statements(answer.get("statements")))

    def _run(self, text: str) -> dict[str, Any]:
        cpu = math.ceil(self.timeout) + 1
        argv = [
            *network_isolation(),
            self.ruby,
            "--disable-gems",
            str(SCRIPT),
            str(_MEMORY),
            str(cpu),
        ]
        with tempfile.TemporaryDirectory(prefix="gitstate-puppetfile-") as scratch:
            env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=scratch,
                    env=env,
                    start_new_session=True,
                )
            except OSError as ex:
                raise PuppetfileRubyError(
                    f"deploy.puppetfile_ruby is on but {self.ruby} cannot be run: {ex}"
                ) from ex
            try:
                out, err = process.communicate(text.encode("utf-8"), timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill(process)
                raise PuppetfileRubyError(
                    f"Ruby did not finish evaluating the Puppetfile within {self.timeout:g} s"
                    " (deploy.timeouts.puppetfile)"
                ) from None
        if len(out) > MAX_OUTPUT:
            raise PuppetfileRubyError("Ruby's answer about the Puppetfile is too large")
        try:
            answer = json.loads(out)
        except ValueError:
            answer = None
        if process.returncode != 0 or not isinstance(answer, dict):
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise PuppetfileRubyError(
                f"Ruby could not evaluate the Puppetfile (exit {process.returncode}): {last[0]}"
            )
        return answer


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the evaluator's whole process group and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


def _statements(items: Any) -> list[tuple[str, list[Any], dict[str, Any], int]]:
    """Check the evaluator's JSON and return :func:`build`'s statements."""
    if not isinstance(items, list):
        raise PuppetfileRubyError("Ruby's answer about the Puppetfile has no statements")
    statements = []
    for item in items:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("call"), str)
            and isinstance(item.get("args"), list)
            and isinstance(item.get("kwargs"), dict)
            and isinstance(item.get("line"), int | None)
        ):
            raise PuppetfileRubyError(f"Ruby's answer about the Puppetfile is malformed: {item!r}")
        statements.append((item["call"], item["args"], item["kwargs"], item["line"] or 0))
    return statements
