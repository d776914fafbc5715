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
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping

from gitstate.errors import GitStateError
from gitstate.settings import SourceSettings, is_regex

log = logging.getLogger(__name__)

INVALID_CHARACTERS = re.compile(r"\W", re.ASCII)
DEFAULT_INVALID_BRANCHES = "error"


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

        Logs r10k's warning or error for branches with non-word characters.
        """
        if self.ignored(branch):
            log.warning(
                "Branch %s filtered out by ignore_branch_prefixes %s",
                branch,
                list(self.ignore_branch_prefixes),
            )
            return None
        name = self.stripped(branch)
        corrected = correct_name(name)
        if corrected != name:
            if self.invalid_branches == "error":
                log.error('Environment "%s" contained non-word characters, ignoring it.', name)
                return None
            if self.invalid_branches == "correct_and_warn":
                log.warning(
                    'Environment "%s" contained non-word characters, correcting name to %s',
                    name,
                    self.prefix_text + corrected,
                )
        return Branch(self.name, branch, name, self.prefix_text + corrected)


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

    def environments(self, branches: Mapping[str, Iterable[str]]) -> dict[str, Branch]:
        """Name every branch of every source, refusing collisions.

        Args:
            branches: source name → its branch names.

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
                    continue
                other = found.get(branch.environment)
                if other is not None:
                    raise EnvironmentCollision(branch.environment, other, branch)
                found[branch.environment] = branch
        return dict(sorted(found.items()))
