"""Time rules and holidays: minutes, midnight, timezones, config holidays."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gitstate.base.schema import read_section
from gitstate.config import ConfigError
from gitstate.gates.rules import (
    Holiday,
    RuleError,
    Schedule,
    parse_days,
    parse_rules,
    parse_span,
)
from gitstate.gates.service import Gates
from gitstate.settings import GateSettings
from tests.support.gates import make_client

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def schedule(rules: dict, tz: dt.tzinfo = UTC) -> Schedule:
    return Schedule(tz, parse_rules(rules))


# 2026-11-23 is a Monday, 2026-11-27 a Friday.


def test_business_hours_like_gatekeeper() -> None:
    s = schedule(
        {
            "live": [
                {"days_range": [0, 3], "hours_range": [8, 16]},
                {"days_range": [4, 4], "hours_range": [8, 14]},
            ],
            "develop": [{"days_range": [0, 6], "hours_range": [0, 24]}],
        }
    )
    assert not s.open_by_rules("live", at(2026, 11, 23, 7, 59))
    assert s.open_by_rules("live", at(2026, 11, 23, 8, 0))
    assert not s.open_by_rules("live", at(2026, 11, 23, 16, 1))
    assert s.open_by_rules("live", at(2026, 11, 26, 15, 59))
    assert s.open_by_rules("live", at(2026, 11, 27, 13, 59))
    assert not s.open_by_rules("live", at(2026, 11, 27, 14, 1))
    assert not s.open_by_rules("live", at(2026, 11, 28, 12, 0))
    for hour in range(24):
        assert s.open_by_rules("develop", at(2026, 11, 29, hour, 30))


def test_minutes_count() -> None:
    s = schedule({"live": [{"days": "mon-fri", "hours": "08:30-16:45"}]})
    assert not s.open_by_rules("live", at(2026, 11, 23, 8, 29))
    assert s.open_by_rules("live", at(2026, 11, 23, 8, 30))
    assert s.open_by_rules("live", at(2026, 11, 23, 16, 44))
    assert not s.open_by_rules("live", at(2026, 11, 23, 16, 45))


def test_window_across_midnight_belongs_to_its_start_day() -> None:
    s = schedule({"live": [{"days": "fri", "hours": "22:00-02:00"}]})
    assert not s.open_by_rules("live", at(2026, 11, 27, 21, 59))
    assert s.open_by_rules("live", at(2026, 11, 27, 22, 0))
    assert s.open_by_rules("live", at(2026, 11, 28, 1, 59))  # Saturday morning
    assert not s.open_by_rules("live", at(2026, 11, 28, 2, 0))
    assert not s.open_by_rules("live", at(2026, 11, 28, 23, 0))  # Saturday evening
    assert not s.open_by_rules("live", at(2026, 11, 27, 1, 0))  # Friday morning


def test_day_ranges_wrap_past_sunday() -> None:
    assert parse_days("fri-mon", "x") == {4, 5, 6, 0}
    assert parse_days(["mon", "wed"], "x") == {0, 2}
    assert parse_days("daily", "x") == set(range(7))
    assert parse_days(None, "x") == set(range(7))


def test_timezone_is_applied() -> None:
    s = schedule({"live": [{"days": "mon-fri", "hours": "09:00-17:00"}]}, BERLIN)
    # 08:30 UTC in November is 09:30 in Berlin.
    assert s.open_by_rules("live", at(2026, 11, 23, 8, 30))
    assert not s.open_by_rules("live", at(2026, 11, 23, 16, 30))
    # Summer time: 09:30 Berlin is 07:30 UTC.
    assert s.open_by_rules("live", at(2026, 7, 6, 7, 30))
    assert s.open_by_rules("live", at(2026, 11, 23, 9, 30, tz=BERLIN))


def test_no_rules_means_open() -> None:
    s = schedule({"live": [{"days": "mon", "hours": "08:00-09:00"}], "develop": []})
    assert s.open_by_rules("develop", at(2026, 11, 28, 3, 0))
    assert s.open_by_rules("unlisted", at(2026, 11, 28, 3, 0))


def test_holiday_uses_the_local_date() -> None:
    s = Schedule(BERLIN)
    holiday = Holiday(dt.date(2026, 12, 24), "Christmas Eve", ("live",))
    # 23:30 UTC on the 23rd is already the 24th in Berlin.
    assert s.holiday("live", at(2026, 12, 23, 23, 30), [holiday]) is holiday
    assert s.holiday("develop", at(2026, 12, 23, 23, 30), [holiday]) is None
    assert s.holiday("live", at(2026, 12, 24, 23, 30), [holiday]) is None
    everything = Holiday(dt.date(2026, 12, 25), "Christmas", ("*",))
    assert s.holiday("anything", at(2026, 12, 25, 12, 0), [everything]) is everything


@pytest.mark.parametrize(
    "span", ["8-16", "08:00-08:00", "25:00-26:00", "08:60-09:00", "08:00-24:01", 8]
)
def test_bad_spans(span: object) -> None:
    with pytest.raises(RuleError):
        parse_span(span, "gates.rules.live[0]")


@pytest.mark.parametrize(
    "section",
    [
        {"rules": {"live": [{"days": "someday"}]}},
        {"rules": {"live": {"days": "mon"}}},
        {"rules": {"live": [{"days": "mon", "when": "now"}]}},
        {"timezone": "Mars/Olympus"},
        {"holidays": [{"date": "24.12.2026", "reason": "x", "environments": ["live"]}]},
        {"current_ticket_lifetime": -1},
        {"queued_ticket_lifetime": "2m"},
        {"lifetime": 3},
    ],
)
def test_bad_config_names_the_key(section: dict) -> None:
    with pytest.raises(ConfigError) as caught:
        # The schema checks the keys; the gates service reads the rules' grammar.
        Gates(None, read_section(GateSettings, section, "gates"))  # type: ignore[arg-type]
    assert str(caught.value).startswith("gates")


def test_timezone_names() -> None:
    assert read_section(GateSettings, None, "gates").timezone is UTC
    assert read_section(GateSettings, {"timezone": "Europe/Berlin"}, "gates").timezone == BERLIN


def test_config_holidays_close_gates_and_are_listed(tmp_path: Path) -> None:
    section = {
        "timezone": "Europe/Berlin",
        "rules": {"live": [{"days": "daily", "hours": "00:00-24:00"}]},
        # YAML reads an unquoted date as a date; both forms are accepted.
        "holidays": [
            {"date": dt.date(2026, 12, 24), "reason": "Christmas Eve", "environments": ["live"]},
            {"date": "2026-12-31", "reason": "New Year's Eve", "environments": ["*"]},
        ],
    }
    c = make_client(tmp_path, section)
    c.clock.set(dt.datetime(2026, 12, 23, 12, 0, tzinfo=BERLIN))
    c.create()
    assert c.tas({"g": {"s": "live"}}).json["status"] == "ok"
    c.simulate_delete("/api/tickets/" + c.env(env="live")["queue"][0]["id"])
    c.clock.set(dt.datetime(2026, 12, 24, 0, 30, tzinfo=BERLIN))
    assert c.tas({"g": {"s": "live"}}).json == {"status": "denied"}
    assert c.env(env="live")["state"] == "closed"
    assert c.env(env="develop")["state"] == "open"
    listed = c.simulate_get("/api/holidays/").json["holidays"]
    assert [(h["date"], h["source"]) for h in listed] == [
        ("2026-12-24", "config"),
        ("2026-12-31", "config"),
    ]
    # An API POST replaces API holidays only; config holidays stay.
    body = {"holidays": [{"date": "2026-12-28", "reason": "R", "environments": ["develop"]}]}
    c.simulate_post("/api/holidays/", json=body)
    listed = c.simulate_get("/api/holidays/").json["holidays"]
    assert [h["date"] for h in listed] == ["2026-12-24", "2026-12-28", "2026-12-31"]
    c.clock.set(dt.datetime(2026, 12, 31, 12, 0, tzinfo=BERLIN))
    assert c.tas({"g": {"s": "develop"}}).json == {"status": "denied"}


def test_rules_close_gates_through_the_api(tmp_path: Path) -> None:
    section = {
        "timezone": "Europe/Berlin",
        "rules": {"live": [{"days": "mon-fri", "hours": "09:00-17:30"}]},
    }
    c = make_client(tmp_path, section)
    c.create()
    c.clock.set(dt.datetime(2026, 11, 23, 17, 29, tzinfo=BERLIN))
    assert c.env(env="live")["state"] == "open"
    c.clock.set(dt.datetime(2026, 11, 23, 17, 30, tzinfo=BERLIN))
    assert c.env(env="live")["state"] == "closed"
    assert c.tas({"g": {"s": "live"}}, "?queue=true").json == {"status": "denied"}
    # develop has no rules: open at any hour.
    assert c.env(env="develop")["state"] == "open"
