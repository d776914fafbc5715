"""Time rules and holidays: when the API may pass through a gate.

gatekeeper kept a table of ``days_range``/``hours_range`` rules per
environment, with whole hours only, no windows past midnight and the
server's local clock. Here an environment has a list of *windows*, each a set
of weekdays and a ``HH:MM-HH:MM`` span read in one configured timezone. A
span whose end is not after its start crosses midnight: ``22:00-02:00`` on
``fri`` is open from Friday 22:00 until Saturday 02:00, so a window belongs
to the day it starts on.

An environment with no windows at all is **open** (gatekeeper 3.0 closed
it); rules only ever narrow when the API may pass, and a gate that must stay
shut is closed by hand.

A *holiday* closes the environments it lists for one calendar day in the
configured timezone. Holidays come from the config file (fixed) and from the
API (stored on the state branch); both count.

The module only parses and evaluates; it keeps no state and has no clock of
its own, so callers (and tests) decide what "now" is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gitstate.config import ConfigError

#: Weekday names, Monday first (``datetime.weekday()`` order).
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Minutes in a day; ``24:00`` is allowed as the end of a span.
DAY_MINUTES = 24 * 60
#: The environment name a holiday uses to close every environment.
ALL_ENVIRONMENTS = "*"

_SPAN = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


class RuleError(ConfigError):
    """A time rule, timezone or holiday in the config cannot be used.

    Attributes:
        source: where in the config the bad value is (``gates.rules.live[0]``).
        detail: what is wrong with it.
    """


class HolidayError(ValueError):
    """A holiday is malformed; callers turn it into their own error.

    Attributes:
        detail: what is wrong, in words a client can act on.
    """

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


@dataclasses.dataclass(frozen=True)
class Window:
    """One span of minutes on a set of weekdays.

    Attributes:
        days: the weekdays (0 = Monday) on which the span starts.
        start: first open minute after midnight.
        end: first closed minute; ``end <= start`` means the span runs past
            midnight into the next day.
    """

    days: frozenset[int]
    start: int
    end: int

    def matches(self, when: dt.datetime) -> bool:
        """Return whether the local time ``when`` falls inside the window."""
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Crosses midnight: the evening of a listed day or the early hours
        # of the day after one.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


@dataclasses.dataclass(frozen=True)
class Holiday:
    """A day on which the listed environments are closed for the API.

    Attributes:
        date: the calendar day, in the configured timezone.
        reason: why, shown to people.
        environments: the environments it closes; ``"*"`` closes all.
        source: ``"config"`` or ``"api"``.
    """

    date: dt.date
    reason: str
    environments: tuple[str, ...]
    source: str = "api"

    def applies(self, environment: str, day: dt.date) -> bool:
        """Return whether the holiday closes ``environment`` on ``day``."""
        return day == self.date and (
            environment in self.environments or ALL_ENVIRONMENTS in self.environments
        )

    def to_record(self) -> dict[str, Any]:
        """Return the holiday as stored on the state branch."""
        return {
            "date": self.date.isoformat(),
            "reason": self.reason,
            "environments": list(self.environments),
        }


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Every environment's windows, read in one timezone.

    Attributes:
        timezone: the zone rules and holidays are read in.
        rules: windows per environment; a missing or empty list means open.
    """

    timezone: dt.tzinfo = dt.UTC
    rules: Mapping[str, tuple[Window, ...]] = dataclasses.field(default_factory=dict)

    def local(self, when: float) -> dt.datetime:
        """Return the Unix time ``when`` as a local time in the timezone."""
        return dt.datetime.fromtimestamp(when, self.timezone)

    def open_by_rules(self, environment: str, when: float) -> bool:
        """Return whether the rules let the API through ``environment`` at ``when``."""
        windows = self.rules.get(environment)
        if not windows:
            return True
        local = self.local(when)
        return any(window.matches(local) for window in windows)

    def holiday(self, environment: str, when: float, holidays: Iterable[Holiday]) -> Holiday | None:
        """Return the first holiday closing ``environment`` on the day of ``when``."""
        day = self.local(when).date()
        for holiday in holidays:
            if holiday.applies(environment, day):
                return holiday
        return None


def _day(value: Any, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 6:
        return value
    if isinstance(value, str) and value.strip().lower()[:3] in DAY_NAMES:
        return DAY_NAMES.index(value.strip().lower()[:3])
    raise RuleError(source, f"{value!r} is not a weekday (mon..sun or 0..6)")


def _day_range(first: int, last: int) -> set[int]:
    """Return the days from ``first`` to ``last`` inclusive, wrapping past Sunday."""
    return {(first + offset) % 7 for offset in range((last - first) % 7 + 1)}


def parse_days(value: Any, source: str) -> frozenset[int]:
    """Parse ``mon-fri``, ``sat``, ``daily``/``*`` or a list of those.

    Raises:
        RuleError: a day is not a weekday name or number.
    """
    if value is None or value in ("*", "daily"):
        return frozenset(range(7))
    items = value if isinstance(value, list) else [value]
    days: set[int] = set()
    for item in items:
        if isinstance(item, str) and "-" in item:
            first, _, last = item.partition("-")
            days |= _day_range(_day(first, source), _day(last, source))
        else:
            days.add(_day(item, source))
    if not days:
        raise RuleError(source, "names no day")
    return frozenset(days)


def parse_span(value: Any, source: str) -> tuple[int, int]:
    """Parse ``HH:MM-HH:MM`` into minutes; None means the whole day.

    Raises:
        RuleError: the span is malformed or empty.
    """
    if value is None:
        return 0, DAY_MINUTES
    match = _SPAN.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise RuleError(source, f"hours must look like 08:00-16:30, got {value!r}")
    sh, sm, eh, em = (int(part) for part in match.groups())
    start, end = sh * 60 + sm, eh * 60 + em
    if sm > 59 or em > 59 or start >= DAY_MINUTES or end > DAY_MINUTES:
        raise RuleError(source, f"{value!r} is not a time of day")
    if start == end:
        raise RuleError(source, f"{value!r} is empty; use 00:00-24:00 for the whole day")
    if end == DAY_MINUTES and start == 0:
        return 0, DAY_MINUTES
    return start, end % DAY_MINUTES if end == DAY_MINUTES else end


def parse_window(value: Any, source: str) -> Window:
    """Parse one rule: ``{days, hours}`` or gatekeeper's ``{days_range, hours_range}``.

    Raises:
        RuleError: the rule is malformed.
    """
    if not isinstance(value, Mapping):
        raise RuleError(source, "a rule must be a mapping with days and hours")
    unknown = set(value) - {"days", "hours", "days_range", "hours_range"}
    if unknown:
        raise RuleError(source, f"unknown keys {sorted(unknown)}")
    if "days_range" in value:
        pair = value["days_range"]
        if not isinstance(pair, list) or len(pair) != 2:
            raise RuleError(source, "days_range must be [first, last]")
        days = frozenset(_day_range(_day(pair[0], source), _day(pair[1], source)))
    else:
        days = parse_days(value.get("days"), source)
    if "hours_range" in value:
        pair = value["hours_range"]
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(h, int) and not isinstance(h, bool) for h in pair)
        ):
            raise RuleError(source, "hours_range must be [first hour, end hour]")
        start, end = parse_span(f"{pair[0]:02d}:00-{pair[1]:02d}:00", source)
    else:
        start, end = parse_span(value.get("hours"), source)
    return Window(days, start, end)


def parse_rules(value: Any, source: str = "gates.rules") -> dict[str, tuple[Window, ...]]:
    """Parse ``{environment: [rule, ...]}``.

    Raises:
        RuleError: the section or one of its rules is malformed.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RuleError(source, "must map environment names to lists of rules")
    rules: dict[str, tuple[Window, ...]] = {}
    for env, items in value.items():
        where = f"{source}.{env}"
        if items is None:
            items = []
        if not isinstance(items, list):
            raise RuleError(where, "must be a list of rules")
        rules[str(env)] = tuple(
            parse_window(item, f"{where}[{number}]") for number, item in enumerate(items)
        )
    return rules


def parse_holiday(value: Any, source: str = "api") -> Holiday:
    """Parse ``{date: YYYY-MM-DD, reason, environments: [...]}``.

    Raises:
        HolidayError: the holiday is malformed.
    """
    if not isinstance(value, Mapping):
        raise HolidayError("a holiday must be an object with date, reason and environments")
    raw_date = value.get("date")
    if isinstance(raw_date, dt.datetime):
        raw_date = raw_date.date()
    if isinstance(raw_date, dt.date):
        day = raw_date
    elif isinstance(raw_date, str):
        try:
            day = dt.date.fromisoformat(raw_date.strip())
        except ValueError as ex:
            raise HolidayError(f"date {raw_date!r} is not YYYY-MM-DD") from ex
    else:
        raise HolidayError(f"date must be YYYY-MM-DD, got {raw_date!r}")
    reason = value.get("reason", "")
    if not isinstance(reason, str):
        raise HolidayError("reason must be a string")
    envs = value.get("environments")
    if (
        not isinstance(envs, list)
        or not envs
        or not all(isinstance(env, str) and env.strip() for env in envs)
    ):
        raise HolidayError("environments must be a non-empty list of environment names")
    names = tuple(dict.fromkeys(env.strip() for env in envs))
    return Holiday(day, reason, names, source)


def parse_config_holidays(value: Any, source: str = "gates.holidays") -> tuple[Holiday, ...]:
    """Parse the holidays listed in the config file.

    Raises:
        RuleError: the list or one of its holidays is malformed.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RuleError(source, "must be a list of holidays")
    holidays = []
    for number, item in enumerate(value):
        try:
            holidays.append(parse_holiday(item, "config"))
        except HolidayError as ex:
            raise RuleError(f"{source}[{number}]", ex.detail) from ex
    return tuple(holidays)
