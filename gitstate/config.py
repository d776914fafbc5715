"""Service configuration: one YAML file, with defaults for every key.

Precedence is the usual one: command-line flags, then ``GITSTATE_*``
environment variables, then the file, then the defaults below. Sections the
running code does not use yet are kept as plain mappings so that a config
written for a newer gitstate still loads.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gitstate.errors import GitStateError

DEFAULT_PORT = 8170
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


class ConfigError(GitStateError, ValueError):
    """The configuration file is missing, unreadable or has a bad value."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        self.detail = detail
        super().__init__(f"{source}: {detail}")


@dataclasses.dataclass
class StateConfig:
    """How the state branch is written.

    Attributes:
        fsync: flush objects and refs before acknowledging a write.
        deadline: seconds a write may wait for the lock and retry conflicts.
        stale_lock_after: age at which a ref ``.lock`` is deemed abandoned.
    """

    fsync: bool = True
    deadline: float = 10.0
    stale_lock_after: float = 5.0


@dataclasses.dataclass
class Config:
    """Everything ``gitstate serve`` needs to know."""

    datadir: Path
    listen: str = DEFAULT_LISTEN
    workers: int = 4
    # Requests that wait on purpose (deploy wait, long polls) hold a thread
    # while they sleep; threads are cheap, so allow plenty.
    threads: int = 8
    state: StateConfig = dataclasses.field(default_factory=StateConfig)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def state_repo(self) -> Path:
        """The bare repository holding the state branch."""
        return self.datadir / "state.git"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<config>") -> Config:
        """Build a config from parsed YAML, checking the types of known keys."""
        if not isinstance(data, Mapping):
            raise ConfigError(source, "the top level must be a mapping")
        datadir = os.environ.get("GITSTATE_DATADIR") or data.get("datadir")
        if not datadir:
            raise ConfigError(source, "datadir is required")
        state = data.get("state") or {}
        if not isinstance(state, Mapping):
            raise ConfigError(source, "state must be a mapping")
        return cls(
            datadir=Path(str(datadir)).expanduser().absolute(),
            listen=str(os.environ.get("GITSTATE_LISTEN") or data.get("listen") or DEFAULT_LISTEN),
            workers=_number(data, "workers", 4, int, source),
            threads=_number(data, "threads", 8, int, source),
            state=StateConfig(
                fsync=bool(state.get("fsync", True)),
                deadline=_number(state, "deadline", 10.0, float, source),
                stale_lock_after=_number(state, "stale_lock_after", 5.0, float, source),
            ),
            raw=dict(data),
        )

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
        )
        return data


def _number(data: Mapping[str, Any], key: str, default: Any, kind: type, source: str) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, f"{key} must be a number, got {value!r}")
    if value < 0:
        raise ConfigError(source, f"{key} must not be negative")
    return kind(value)
