"""Service configuration: one YAML file, read and checked once, at load.

Precedence is the usual one: command-line flags, then ``GITSTATE_*``
environment variables, then the file, then the defaults. :class:`Config` is
the file's top level; every section is a typed object from
:mod:`gitstate.settings`, which declares each key once (type, default,
validation, description). Unknown keys are ignored with a warning so that a
config written for a newer gitstate still loads.

``python -m gitstate.config`` prints ``docs/configuration.md``, the reference
of every key, from the same declarations.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gitstate.base.schema import (
    ConfigError,
    SettingError,
    count,
    named,
    path,
    read_section,
    required,
    rows,
    section,
    setting,
    text,
)
from gitstate.settings import (
    DEFAULT_LISTEN,
    DEFAULT_PORT,
    AuthSettings,
    DeploySettings,
    FileSyncSettings,
    GateSettings,
    HookSettings,
    LogSettings,
    MaintenanceSettings,
    MetricsSettings,
    SourceSettings,
    StateSettings,
    StorageSettings,
    WebhookSettings,
)

__all__ = ["DEFAULT_LISTEN", "DEFAULT_PORT", "Config", "ConfigError", "SettingError"]


@dataclasses.dataclass(kw_only=True)
class Config:
    """Everything ``gitstate serve`` needs to know: the file's top level.

    ``raw`` is the file as it was read, kept only so :meth:`to_mapping` can
    write back sections this gitstate does not know; nothing reads settings
    from it.
    """

    datadir: Path = required(
        path(), "where all state lives (relative: to the config file; $GITSTATE_DATADIR wins)"
    )
    listen: str = setting(
        text(), DEFAULT_LISTEN, "host:port of the HTTP server ($GITSTATE_LISTEN wins)"
    )
    workers: int = setting(count(), 4, "gunicorn worker processes")
    # Requests that wait on purpose (deploy wait, long polls) hold a thread
    # while they sleep; threads are cheap, so allow plenty.
    threads: int = setting(
        count(), 8, "threads per worker; deploy waits and long polls hold one each"
    )
    state: StateSettings = section(StateSettings, "how the state branch is written")
    storage: StorageSettings = section(StorageSettings, "the file-sync storage repository")
    auth: AuthSettings = section(AuthSettings, "tokens")
    sources: dict[str, SourceSettings] = named(
        SourceSettings, "control repositories by name, configured as r10k configures them"
    )
    deploy: DeploySettings = section(DeploySettings, "deploys")
    gates: GateSettings = section(GateSettings, "gates")
    file_sync: FileSyncSettings = section(FileSyncSettings, "file sync")
    webhooks: WebhookSettings = section(WebhookSettings, "webhooks")
    hooks: HookSettings = section(HookSettings, "the post-receive hook")
    metrics: MetricsSettings = section(MetricsSettings, "metrics")
    logging: LogSettings = section(LogSettings, "logs")
    maintenance: MaintenanceSettings = section(MaintenanceSettings, "git maintenance")
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def state_repo(self) -> Path:
        """The bare repository holding the state branch."""
        return self.datadir / "state.git"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<config>") -> Config:
        """Build a config from parsed YAML, checking every key.

        Raises:
            ConfigError: the top level is not a mapping, or a key (named in
                the message, as a :class:`SettingError`) has a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(source, "the top level must be a mapping")
        given = dict(data)
        for key, variable in (("datadir", "GITSTATE_DATADIR"), ("listen", "GITSTATE_LISTEN")):
            if os.environ.get(variable):
                given[key] = os.environ[variable]
        try:
            config = read_section(cls, given)
        except SettingError as ex:
            raise SettingError(ex.key, ex.reason, source) from None
        config.datadir = config.datadir.absolute()
        config.raw = dict(data)
        return config

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Config:
        """Read a config file.

        Raises:
            ConfigError: the file cannot be read or holds a bad value.
        """
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as ex:
            raise ConfigError(source, f"cannot read: {ex.strerror}") from ex
        try:
            data = YAML(typ="safe").load(text) or {}
        except YAMLError as ex:
            raise ConfigError(source, f"not valid YAML: {ex}") from ex
        config = cls.from_mapping(data, source)
        if (
            not Path(str(data.get("datadir", ""))).is_absolute()
            and "GITSTATE_DATADIR" not in os.environ
        ):
            # A relative datadir is relative to the config file, not to the cwd.
            config.datadir = (Path(path).absolute().parent / str(data["datadir"])).resolve()
        return config

    def to_mapping(self) -> dict[str, Any]:
        """Return the config as it would be written to a file."""
        data = dict(self.raw)
        data.update(
            datadir=str(self.datadir),
            listen=self.listen,
            workers=self.workers,
            threads=self.threads,
            state=dataclasses.asdict(self.state),
            storage=dataclasses.asdict(self.storage),
        )
        return data


def reference() -> str:
    """Return ``docs/configuration.md``: every key with its type, default and meaning."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from gitstate/settings.py by `python -m gitstate.config`;",
        "     tests/unit/test_settings.py fails when this file and the schema differ. -->",
        "",
        "gitstate reads one YAML file (`gitstate serve --config FILE`); every key is",
        "optional except `datadir` (and the keys marked *required* inside a source or",
        "a file-sync client). A key given as `null` takes its default. A bad value",
        "stops the start with a message naming its key, such as",
        "`deploy.timeouts.fetch: not a duration: 'soon'`. Unknown keys are ignored",
        "with a warning, except in `gates`, where they are refused.",
        "",
        "A *duration* is a number of seconds or a string with a unit: `30`, `'30s'`,",
        "`'10m'`, `'1h'`, `'1d'` (also `ms`). `deploy/gitstate.yaml.example` is an",
        "annotated example.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{row.key}` | {row.kind} | {_cell(row.default)} | {row.doc} |" for row in rows(Config)
    ]
    return "\n".join(lines) + "\n"


def _cell(default: str) -> str:
    return default if default in ("required", "none", "empty") else f"`{default}`"


if __name__ == "__main__":
    print(reference(), end="")
