"""The settings schema: every key of the configuration file, declared once.

Each section of the file is a frozen dataclass here, each key a field that
carries its type, default, validation and one-line description
(:mod:`gitstate.base.schema` says how). The root section, with ``datadir``
and the server's keys, is :class:`gitstate.config.Config`; the file's
reference, ``docs/configuration.md``, is generated from these declarations
(``python -m gitstate.config``) and a test keeps the two equal.

Services receive these objects; none of them reads the file's mappings.
Only :mod:`gitstate.base` and :mod:`gitstate.errors` may be imported here:
configuration is a low layer (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from gitstate.base.schema import (
    BOOL,
    SettingError,
    as_list,
    as_mapping,
    choice,
    count,
    fraction,
    listed,
    minutes,
    path,
    required,
    seconds,
    section,
    setting,
    simple,
    text,
)

DEFAULT_PORT = 8170
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_FORGE_URL = "https://forgeapi.puppet.com"
#: Client names become file names on the server.
CLIENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,99}$")
INVALID_BRANCH_MODES = ("error", "correct", "correct_and_warn")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAINTENANCE_STRATEGIES = ("incremental", "gc")


# -- values only these sections use -------------------------------------------------------


def _timezone(value: Any) -> dt.tzinfo:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a zone name such as Europe/Berlin, got {value!r}")
    try:
        return zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as ex:
        raise ValueError(f"unknown timezone {value!r}") from ex


def _json_mode(value: Any) -> bool | None:
    if value not in (True, False, "auto"):
        raise ValueError(f"must be true, false or auto, not {value!r}")
    return None if value == "auto" else bool(value)


def _prefix(value: Any) -> bool | str:
    if not isinstance(value, bool | str):
        raise ValueError(f"must be true, false or a string, got {value!r}")
    return value


def _prefixes(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) for p in items):
        raise ValueError("must be a list of strings")
    return tuple(items)


def _strip_component(value: Any) -> str | None:
    if value is False:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a string, a /regex/, false, or omitted; got {value!r}")
    if is_regex(value):
        try:
            re.compile(value[1:-1])
        except re.error as ex:
            raise ValueError(f"bad regex: {ex}") from ex
    return value


def is_regex(text: str) -> bool:
    """Tell whether a ``strip_component`` is a ``/regex/`` rather than a plain prefix."""
    return len(text) >= 2 and text.startswith("/") and text.endswith("/")


def _directories(value: Any) -> tuple[Path, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) and p for p in items):
        raise ValueError("must be a list of directories")
    paths = tuple(Path(item).expanduser() for item in items)
    relative = [str(item) for item in paths if not item.is_absolute()]
    if relative:
        raise ValueError(f"directories must be absolute paths, got {relative}")
    return paths


def _client_name(value: Any) -> str:
    name = str(value)
    if not CLIENT_NAME.match(name):
        raise ValueError(f"{name!r} is not a name")
    return name


# -- the sections ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class StateSettings:
    """``state``: how the state branch is written."""

    fsync: bool = setting(BOOL, True, "flush objects and refs before acknowledging a write")
    deadline: float = setting(
        seconds(), 10.0, "longest a write may wait for the lock and retry conflicts"
    )
    stale_lock_after: float = setting(
        seconds(), 5.0, "age at which a ref `.lock` is taken as abandoned"
    )
    remote: str | None = setting(
        text(),
        None,
        "git URL of the state repository several servers share (docs/cluster.md;"
        " none: this host alone)",
    )
    refresh_interval: float = setting(
        seconds(positive=True), 1.0, "with `remote`: longest a node serves reads without a fetch"
    )
    remote_timeout: float = setting(
        seconds(positive=True),
        10.0,
        "with `remote`: longest one fetch or push may take before the git server counts as down",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """``storage``: the file-sync storage repository deploys are published to."""

    remote: str | None = setting(
        text(),
        None,
        "git URL of the storage repository several servers share (docs/cluster.md;"
        " none: this host alone)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnonymousReads:
    """``auth.anonymous_reads``: which API family answers reads without a token.

    Each follows the product it replaces: Code Manager asks for a token on
    every request, gatekeeper has no authentication at all.
    """

    code_manager: bool = setting(
        BOOL,
        False,
        "`GET /code-manager/v1/...` without a token (Code Manager: no); also gitstate's"
        " views of deploys, `/api/deploys/...` and the audit trail `/api/audit...`",
    )
    gates: bool = setting(
        BOOL,
        True,
        "`GET /api/gates|tickets|holidays/...` and `/internal/status` without a token"
        " (gatekeeper: yes)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """``auth``: tokens (docs/api.md)."""

    enabled: bool = setting(
        BOOL, True, "require tokens at all (turn off only on a trusted network)"
    )
    webhook_authentication: bool = setting(
        BOOL, True, "require a token on webhooks (false: a type's own secret may stand in)"
    )
    read_requires_token: bool = setting(
        BOOL, False, "require a token on every read (and /metrics), whatever `anonymous_reads` says"
    )
    anonymous_reads: AnonymousReads = section(
        AnonymousReads, "which API family answers reads without a token"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceSettings:
    """``sources.<name>``: one control repository, configured as r10k configures it."""

    remote: str = required(text(), "git URL (or path) of the control repository")
    prefix: bool | str = setting(
        simple("boolean or string", _prefix),
        False,
        "put `<source>_` (true) or `<string>_` in front of environment names",
    )
    invalid_branches: str = setting(
        choice(*INVALID_BRANCH_MODES), "error", "what to do with branches that are not valid names"
    )
    ignore_branch_prefixes: tuple[str, ...] = setting(
        simple("list of strings", _prefixes), (), "branches starting with these are not deployed"
    )
    strip_component: str | None = setting(
        simple("string or /regex/", _strip_component),
        None,
        "removed from the start of branch names (a /regex/ anywhere) before naming",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeployTimeouts:
    """``deploy.timeouts``: the longest each step may take."""

    wait: float = setting(seconds(), 700.0, "longest a `wait: true` deploy request is held")
    deploy: float = setting(seconds(), 600.0, "longest one environment's deploy may take")
    fetch: float = setting(seconds(), 30.0, "longest one git fetch or Forge request may take")
    sync: float = setting(seconds(), 60.0, "longest `wait: true` waits for the file-sync clients")
    puppetfile: float = setting(
        seconds(), 10.0, "longest Ruby may take to evaluate one Puppetfile (`puppetfile_ruby`)"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuardSettings:
    """``deploy.gates``: which gate guards an environment's deploys.

    ``service`` and ``environment`` are templates: ``{source}`` is the
    source the environment comes from, ``{environment}`` its name.
    """

    enabled: bool = setting(BOOL, True, "closed gates stop deploys (`deploy.gates: false` = off)")
    group: str = setting(text(), "code", "the gate group guarding deploys")
    service: str = setting(text(), "{source}", "the gate's service (template)")
    environment: str = setting(text(), "{environment}", "the gate's environment (template)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeploySettings:
    """``deploy``: the deploy queue, its workers and the engine."""

    pool_size: int = setting(count(), 2, "deploy worker processes `gitstate serve` runs")
    deploy_ttl: float = setting(seconds(), 3600.0, "how long failed deploys stay in the status")
    poll_interval: float = setting(
        seconds(), 1.0, "how often an idle worker looks again at deploys a gate holds back"
    )
    forge_url: str = setting(text(), DEFAULT_FORGE_URL, "Forge v3 API for Forge modules")
    default_ref: str | None = setting(
        text(),
        None,
        "ref for Puppetfile git modules that name none, r10k 4's git.default_ref"
        " (none: 'master' as r10k 3, else the remote's default branch)",
    )
    puppetfile_ruby: bool = setting(
        BOOL,
        False,
        "evaluate Puppetfiles the parser cannot read (Ruby: def, variables) with `ruby`,"
        " fenced (docs/deploys.md); off: they fail",
    )
    ruby: str = setting(text(), "/usr/bin/ruby", "the Ruby that `puppetfile_ruby` runs")
    fetch_workers: int = setting(count(1), 8, "remotes fetched at once")
    private_key: str | None = setting(
        text(), None, "SSH private key for ssh remotes (none: the ssh agent)"
    )
    local_module_sources: tuple[Path, ...] = setting(
        simple("list of absolute paths", _directories),
        (),
        "directories Puppetfile modules may name as local paths or file:// URLs"
        " (empty: none; never the datadir)",
    )
    fetch_timeout: float | None = setting(
        seconds(), None, "older spelling of `deploy.timeouts.fetch`; wins when given"
    )
    timeouts: DeployTimeouts = section(DeployTimeouts, "the longest each step may take")
    gates: GuardSettings = section(
        GuardSettings, "which gate guards an environment's deploys", off=True
    )

    def checked(self, key: str) -> DeploySettings:
        """Let the older ``fetch_timeout`` stand for ``timeouts.fetch``."""
        if not self.fetch_timeout:
            return self
        timeouts = dataclasses.replace(self.timeouts, fetch=self.fetch_timeout)
        return dataclasses.replace(self, timeouts=timeouts)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientSpec:
    """``file_sync.clients[]``: one file-sync client ``gitstate serve`` runs."""

    name: str = required(
        simple("name", _client_name), "how the client reports itself (a certname in PE)"
    )
    live: Path = required(path(), "its live code directory (relative: to the config file)")
    storage: str | None = setting(
        text(), None, "the server's base URL for the network transport (none: same host)"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileSyncSettings:
    """``file_sync``: live code directories kept current from storage."""

    token: str | None = setting(
        text(numbers=True),
        None,
        "shared secret of the network transport (none: it is off)",
        secret=True,
    )
    clients: tuple[ClientSpec, ...] = listed(
        ClientSpec, "the clients `gitstate serve` runs and `wait` waits for", unique="name"
    )
    keep_versions: int = setting(count(1), 3, "versions of each environment kept in a live dir")
    reconcile_interval: float = setting(
        seconds(), 60.0, "least time between full checks of a live dir"
    )
    reconcile_budget: float = setting(
        fraction(), 0.02, "share of one core full checks may use (a costly check waits longer)"
    )
    long_poll_timeout: float = setting(seconds(), 30.0, "longest a latest-commit request is held")
    check_in_interval: float = setting(seconds(), 30.0, "time between heartbeats of an idle client")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateSettings:
    """``gates``: gatekeeper's gates (docs/gates.md); lifetimes are read in minutes."""

    unknown_keys: ClassVar[str] = "error"

    current_ticket_lifetime: int = setting(
        minutes(), 720 * 60, "how long an `ok` ticket lives (0: forever)", shown="720"
    )
    queued_ticket_lifetime: int = setting(
        minutes(), 2 * 60, "how long a queued ticket lives after its last re-send", shown="2"
    )
    queued_ticket_slack: int = setting(
        minutes(), 5 * 60, "added to a queued ticket's stored expiry", shown="5"
    )
    timezone: dt.tzinfo = setting(
        simple("IANA zone name", _timezone), dt.UTC, "zone of rules and holidays", shown="UTC"
    )
    rules: Mapping[str, Any] = setting(
        simple("mapping", as_mapping),
        None,
        "time windows per environment (docs/gates.md)",
        factory=dict,
    )
    holidays: tuple[Any, ...] = setting(
        simple("list", lambda value: tuple(as_list(value))),
        (),
        "days that close environments (docs/gates.md)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProviderWebhook:
    """``webhooks.<type>``: whether one webhook type is served at all.

    A type without a secret of its own (Bitbucket Cloud signs nothing, the
    post-receive hook sends a token) has only this switch; the others add
    their secret. :attr:`shared_secret` is what a request of the type must
    prove it knows, or None when only a token can vouch for it.
    """

    enabled: bool = setting(BOOL, True, "serve this webhook type (false: it is refused)")

    @property
    def shared_secret(self) -> bytes | None:
        """The secret requests of this type prove, if one is configured."""
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignedWebhook(ProviderWebhook):
    """A webhook type whose requests prove a shared ``secret`` (a signature key)."""

    secret: str | None = setting(text(), None, "the shared secret", secret=True)
    secret_file: Path | None = setting(path(), None, "a file holding the shared secret")

    @property
    def shared_secret(self) -> bytes | None:
        """The configured secret, as bytes."""
        return self.secret.encode() if self.secret else None

    def checked(self, key: str) -> SignedWebhook:
        """Read ``secret_file``; refuse both."""
        return dataclasses.replace(
            self, secret=_from_file(key, "secret", self.secret, self.secret_file)
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GitHubWebhook(SignedWebhook):
    """``webhooks.github``: the key of GitHub's ``X-Hub-Signature-256`` HMAC."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BitbucketServerWebhook(SignedWebhook):
    """``webhooks.bitbucket_server`` / ``stash``: the key of ``X-Hub-Signature`` (HMAC)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfsGitWebhook(SignedWebhook):
    """``webhooks.tfs_git``: the basic-authentication password Azure DevOps sends."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class GitLabWebhook(ProviderWebhook):
    """``webhooks.gitlab``: what GitLab sends in ``X-Gitlab-Token``."""

    token: str | None = setting(text(), None, "the token", secret=True)
    token_file: Path | None = setting(path(), None, "a file holding the token")

    @property
    def shared_secret(self) -> bytes | None:
        """The configured token, as bytes."""
        return self.token.encode() if self.token else None

    def checked(self, key: str) -> GitLabWebhook:
        """Read ``token_file``; refuse both."""
        return dataclasses.replace(
            self, token=_from_file(key, "token", self.token, self.token_file)
        )


def _from_file(key: str, name: str, value: str | None, file: Path | None) -> str | None:
    if file is None:
        return value
    if value is not None:
        raise SettingError(f"{key}.{name}", f"give {name} or {name}_file, not both")
    try:
        found = file.read_text(encoding="utf-8").strip()
    except OSError as ex:
        raise SettingError(f"{key}.{name}_file", f"cannot read {file}: {ex}") from ex
    if not found:
        raise SettingError(f"{key}.{name}_file", f"{file} is empty")
    return found


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """``webhooks``: per webhook type, whether it is served and its secret (docs/webhooks.md).

    The keys are the types of ``?type=`` with ``-`` written ``_``.
    """

    github: GitHubWebhook = section(GitHubWebhook, "GitHub: switch and signature key", off=True)
    gitlab: GitLabWebhook = section(GitLabWebhook, "GitLab: switch and token", off=True)
    bitbucket: ProviderWebhook = section(
        ProviderWebhook, "Bitbucket Cloud: switch (no secret)", off=True
    )
    bitbucket_server: BitbucketServerWebhook = section(
        BitbucketServerWebhook, "Bitbucket Server: switch and signature key", off=True
    )
    stash: BitbucketServerWebhook = section(
        BitbucketServerWebhook, "Stash: switch and signature key", off=True
    )
    tfs_git: TfsGitWebhook = section(
        TfsGitWebhook, "Azure DevOps: switch and basic-auth password", off=True
    )
    gitstate_hook: ProviderWebhook = section(
        ProviderWebhook, "the post-receive hook: switch (it sends a token)", off=True
    )

    def of(self, webhook_type: str) -> ProviderWebhook:
        """Return the section of one ``?type=`` (``bitbucket-server`` → ``bitbucket_server``).

        Raises:
            KeyError: no section is declared for it.
        """
        name = webhook_type.replace("-", "_")
        if name not in {field.name for field in dataclasses.fields(self)}:
            raise KeyError(webhook_type)
        return getattr(self, name)

    @property
    def github_secret(self) -> bytes | None:
        """The key of GitHub's HMAC, if one is configured."""
        return self.github.shared_secret

    @property
    def gitlab_token(self) -> bytes | None:
        """The token GitLab must send, if one is configured."""
        return self.gitlab.shared_secret


@dataclasses.dataclass(frozen=True, kw_only=True)
class HookSettings:
    """``hooks``: what the control repository's post-receive hook does after a push."""

    wait: bool = setting(
        BOOL,
        False,
        "the hook waits for the deploys a push queued and prints each one's outcome",
    )
    wait_timeout: float = setting(
        seconds(positive=True),
        120.0,
        "longest the hook waits (the pusher's terminal is held meanwhile)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    """``metrics``: Prometheus metrics at /metrics."""

    enabled: bool = setting(BOOL, True, "record and serve metrics")
    dir: Path | None = setting(
        path(),
        None,
        "shared multiprocess directory ($PROMETHEUS_MULTIPROC_DIR wins)",
        shown="DATADIR/metrics",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogSettings:
    """``logging``: log lines on stderr."""

    json: bool | None = setting(
        simple("true \\| false \\| auto", _json_mode),
        None,
        "JSON lines; auto: JSON unless stderr is a terminal",
        shown="auto",
    )
    level: str = setting(choice(*LOG_LEVELS, upper=True), "INFO", "the lowest level written")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaintenanceSettings:
    """``maintenance``: ``gitstate maintenance`` (git repacking)."""

    strategy: str = setting(
        choice(*MAINTENANCE_STRATEGIES),
        "incremental",
        "incremental (work bounded by what is new) or gc (full repack)",
    )
    interval: float = setting(
        seconds(positive=True), 3600.0, "time between runs of `gitstate maintenance --every`"
    )
