r"""Sources: which control repositories exist and how branches become environments.

A *source* is one control repository (``remote``) whose branches are
deployed as environments, configured as r10k configures it (the keys are declared in
:mod:`gitstate.settings`)::

    sources:
      puppet:
        remote: https://git.example.com/control.git
        prefix: false                 # true → "<source>_", "app1" → "app1_"
        invalid_branches: error       # error | correct | correct_and_warn
        ignore_branch_prefixes: [wip, tmp]
        strip_component: env/         # or "/regex/"

Naming follows r10k exactly, because people's Puppet code names
environments after what r10k made of their branches: ``strip_component``
first, then every ASCII non-word character becomes one ``_`` (no collapsing;
Ruby's ``\W`` is ASCII-only, so ``é`` is corrected too), then the prefix is
put in front without being corrected itself. ``invalid_branches: error`` (the
Code Manager default) skips such branches with r10k's log line instead.

An environment is a directory in every live directory, so a name no file
system takes (:func:`environment_name_problem`: too long, ``.``, ``..``,
``/`` or NUL) is never deployed, whatever the mode: no correction r10k knows
makes a long name fit, and a name cut short would be one nobody asked for
and could take another branch's place. ``error`` logs an error,
``correct`` and ``correct_and_warn`` a warning, and a deploy asking for it
fails saying why.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from gitstate.errors import GitStateError
from gitstate.settings import SourceSettings, is_regex

log = logging.getLogger(__name__)
#: Branch-name warnings this process has logged: each is said once per
#: process (later at DEBUG), not at every collect of every deploy.
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(message: str, *args: Any) -> None:
    """Log a warning about a branch the first time; at DEBUG after that."""
    text = message % args
    with _warned_lock:
        first = text not in _warned
        _warned.add(text)
    log.log(logging.WARNING if first else logging.DEBUG, "%s", text)


INVALID_CHARACTERS = re.compile(r"\W", re.ASCII)
DEFAULT_INVALID_BRANCHES = "error"
#: Bytes of one file name (NAME_MAX of ext4, xfs, btrfs, tmpfs).
FILE_NAME_MAX = 255
#: Bytes other file names add to an environment's name: a live directory's
#: swap link ``.<env>.swap-<pid>`` adds 7 and a pid of up to 7 digits (the
#: most; lock files and ref locks add ``.lock``).
NAME_ROOM = 14
#: Longest environment name, in bytes (UTF-8).
ENVIRONMENT_NAME_MAX = FILE_NAME_MAX - NAME_ROOM
#: What an environment name may hold: what r10k's correction leaves, dots
#: and dashes, not leading (a hidden file, an option).
ENVIRONMENT_CHARACTERS = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


class EnvironmentCollision(GitStateError):
    """Two branches, usually of two sources, map to the same environment.

    r10k aborts the whole deploy in this case, and so do we: deploying either
    one would silently replace the other.
    """

    def __init__(self, environment: str, first: Branch, second: Branch) -> None:
        self.environment = environment
        self.first = first
        self.second = second
        super().__init__(
            f"Environment collision at {environment} between "
            f"{second.source}:{second.name} and {first.source}:{first.name}"
        )


def correct_name(name: str) -> str:
    """Replace every ASCII non-word character with ``_`` (r10k's correction).

    This is also applied to environment names users ask to deploy, so that
    ``feature/x`` finds the environment ``feature_x``.
    """
    return INVALID_CHARACTERS.sub("_", name)


def environment_name_problem(name: str) -> str | None:
    """Say why ``name`` cannot be an environment's directory, or None if it can.

    Shared by the engine (which never deploys such a name) and file-sync
    clients (which never trust that it did not).
    """
    if name in ("", ".", ".."):
        return f"{name!r} is not a directory name"
    if "/" in name or "\0" in name:
        return "a directory name cannot hold '/' or NUL"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > ENVIRONMENT_NAME_MAX:
        return (
            f"the name is {size} bytes long; at most {ENVIRONMENT_NAME_MAX} fit in a "
            f"directory name ({FILE_NAME_MAX} bytes) with room for the live directory's "
            "and the locks' suffixes"
        )
    if not ENVIRONMENT_CHARACTERS.match(name):
        return (
            "only ASCII letters, digits, '_', '.' and '-' may be used, "
            "and the name must not start with '.' or '-'"
        )
    return None


@dataclasses.dataclass(frozen=True)
class Branch:
    """A branch of a source that is deployed as an environment.

    Attributes:
        source: the source's name.
        branch: the branch as the remote names it (``env/feature/x``).
        name: the branch after ``strip_component``; r10k's environment name,
            written as ``name`` in the deploy record.
        environment: the directory name (prefix + corrected name).
    """

    source: str
    branch: str
    name: str
    environment: str


@dataclasses.dataclass(frozen=True)
class Source:
    """One control repository and its naming rules."""

    name: str
    remote: str
    prefix: bool | str = False
    invalid_branches: str = DEFAULT_INVALID_BRANCHES
    ignore_branch_prefixes: tuple[str, ...] = ()
    strip_component: str | None = None

    @classmethod
    def from_settings(cls, name: str, settings: SourceSettings) -> Source:
        """Build the source called ``name`` from its checked ``sources.<name>`` section."""
        return cls(
            name=name,
            remote=settings.remote.strip(),
            prefix=settings.prefix,
            invalid_branches=settings.invalid_branches,
            ignore_branch_prefixes=settings.ignore_branch_prefixes,
            strip_component=settings.strip_component,
        )

    def ignored(self, branch: str) -> bool:
        """Tell whether ``ignore_branch_prefixes`` drops this branch."""
        return any(branch.startswith(prefix) for prefix in self.ignore_branch_prefixes)

    def stripped(self, branch: str) -> str:
        """Return the branch name after ``strip_component``."""
        strip = self.strip_component
        if not strip:
            return branch
        if is_regex(strip):
            return re.sub(strip[1:-1], "", branch)
        return branch[len(strip) :] if branch.startswith(strip) else branch

    @property
    def prefix_text(self) -> str:
        """What is put in front of every environment name of this source."""
        if self.prefix is True:
            return f"{self.name}_"
        if isinstance(self.prefix, str) and self.prefix:
            return f"{self.prefix}_"
        return ""

    def name_branch(self, branch: str) -> Branch | None:
        """Turn a branch into its environment, or None if it is not deployed.

        Logs r10k's warning or error for branches with non-word characters,
        and skips (logging why) a branch whose environment name cannot be a
        directory.
        """
        if self.ignored(branch):
            _warn_once(
                "Branch %s filtered out by ignore_branch_prefixes %s",
                branch,
                list(self.ignore_branch_prefixes),
            )
            return None
        name = self.stripped(branch)
        corrected = correct_name(name)
        if corrected != name and self.invalid_branches == "error":
            log.error('Environment "%s" contained non-word characters, ignoring it.', name)
            return None
        problem = self.name_problem(branch)
        if problem is not None:
            self._log_unusable(name, problem[1])
            return None
        if corrected != name and self.invalid_branches == "correct_and_warn":
            _warn_once(
                'Environment "%s" contained non-word characters, correcting name to %s',
                name,
                self.prefix_text + corrected,
            )
        return Branch(self.name, branch, name, self.prefix_text + corrected)

    def _log_unusable(self, name: str, why: str) -> None:
        """Log a branch skipped because no directory can have its name.

        An error in ``error`` mode, as r10k logs branches it ignores; a
        warning in the correcting modes, which have nothing to correct it to.
        """
        if self.invalid_branches == "error":
            log.error('Environment "%s" cannot be a directory (%s), ignoring it.', name, why)
        else:
            log.warning(
                'Environment "%s" cannot be a directory (%s) and no correction makes it one; '
                "skipping it.",
                name,
                why,
            )

    def name_problem(self, branch: str) -> tuple[str, str] | None:
        """Return ``(environment, why)`` if the branch's environment name is no directory name.

        Judged on the name as it would be corrected, whatever the mode, so
        that a deploy asking for it can say why it is not deployed.
        """
        environment = self.prefix_text + correct_name(self.stripped(branch))
        why = environment_name_problem(environment)
        return (environment, why) if why is not None else None


@dataclasses.dataclass(frozen=True)
class Sources:
    """Every configured source, in configuration order."""

    sources: tuple[Source, ...]

    @classmethod
    def from_settings(cls, sources: Mapping[str, SourceSettings]) -> Sources:
        """Build from the checked ``sources`` section (name → settings), in its order."""
        return cls(tuple(Source.from_settings(name, value) for name, value in sources.items()))

    def __iter__(self):  # noqa: ANN204 - iterator of Source
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def get(self, name: str) -> Source:
        """Return the source called ``name``.

        Raises:
            KeyError: there is no such source.
        """
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    def environments(
        self, branches: Mapping[str, Iterable[str]], refused: dict[str, str] | None = None
    ) -> dict[str, Branch]:
        """Name every branch of every source, refusing collisions.

        Args:
            branches: source name → its branch names.
            refused: filled with environment → why, for branches skipped
                because their environment's name cannot be a directory.

        Returns:
            environment name → branch, sorted by environment name.

        Raises:
            EnvironmentCollision: two branches give the same environment.
        """
        found: dict[str, Branch] = {}
        for source in self.sources:
            for branch_name in sorted(branches.get(source.name, ())):
                branch = source.name_branch(branch_name)
                if branch is None:
                    problem = source.name_problem(branch_name)
                    if refused is not None and problem is not None:
                        refused[problem[0]] = problem[1]
                    continue
                other = found.get(branch.environment)
                if other is not None:
                    raise EnvironmentCollision(branch.environment, other, branch)
                found[branch.environment] = branch
        return dict(sorted(found.items()))
