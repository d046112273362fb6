"""The beat schedule, driven by a simulated clock through Celery's own `crontab.is_due`
(what beat calls on every tick): no sleeping, no broker.

Also: AGGJOBS_SCHEDULE overrides and "off", `slot_of` for late executions, and a scheduler
that was down for hours firing once, that one hourly run catching every missed hour up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from celery.schedules import crontab

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain
from aggjobs.errors import ConfigError
from aggjobs.jobs.app import beat_schedule, create_app, slot_of
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.settings import Settings
from tests import platform as p
from tests.reference import assert_matches

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, 00:00 UTC
DAYS = 8
JOBS = {"hourly_rollup", "daily_rollup", "weekly_rollup", "cleanup_old_data",
        "refresh_materialized_views"}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def every_minute(start: datetime, days: int) -> Iterator[datetime]:
    t = start
    while t < start + timedelta(days=days):
        yield t
        t += timedelta(minutes=1)


def simulate(settings: Settings, start: datetime, days: int,
             tick: timedelta = timedelta(0)) -> dict[str, list[datetime]]:
    """Beat's loop over a simulated clock: each entry starts with last_run_at = the clock
    at startup (a tick before `start`), is checked every minute (at `tick` past it) and,
    when due, is sent and its last_run_at moved to now. Returns the sending instants."""
    app = create_app(settings)
    clock = Clock(start - timedelta(seconds=30))
    entries = {}
    for name, entry in app.conf.beat_schedule.items():
        schedule = entry["schedule"]
        assert isinstance(schedule, crontab), name
        schedule.app = app  # as beat's ScheduleEntry does
        schedule.nowfun = clock
        entries[name] = {"schedule": schedule, "last_run_at": clock()}
    sent: dict[str, list[datetime]] = {name: [] for name in entries}
    for minute in every_minute(start, days):
        clock.now = minute + tick
        for name, entry in entries.items():
            due, _next = entry["schedule"].is_due(entry["last_run_at"])
            if due:
                sent[name].append(clock.now)
                entry["last_run_at"] = clock.now
    app.close()
    return sent


def expected(start: datetime, days: int, fires) -> list[datetime]:
    return [t for t in every_minute(start, days) if fires(t)]


DEFAULTS = {
    "hourly_rollup": lambda t: t.minute == 5,
    "daily_rollup": lambda t: (t.hour, t.minute) == (1, 0),
    "weekly_rollup": lambda t: (t.weekday(), t.hour, t.minute) == (0, 2, 0),
    "cleanup_old_data": lambda t: (t.hour, t.minute) == (3, 0),
    "refresh_materialized_views": lambda t: t.minute % 15 == 0,
}


@pytest.mark.parametrize("tick", [timedelta(0), timedelta(seconds=7)], ids=["on-time", "late"])
def test_default_schedule_fires_exactly_at_its_times(tick: timedelta) -> None:
    sent = simulate(Settings(schedule={}), MONDAY, DAYS, tick)
    assert set(sent) == JOBS
    for name, fires in DEFAULTS.items():
        want = [t + tick for t in expected(MONDAY, DAYS, fires)]
        assert sent[name] == want, f"{name}: sent {len(sent[name])}, expected {len(want)}"
    assert len(sent["hourly_rollup"]) == DAYS * 24
    assert len(sent["daily_rollup"]) == DAYS
    assert len(sent["cleanup_old_data"]) == DAYS
    assert sent["weekly_rollup"] == [MONDAY + timedelta(hours=2) + tick,
                                     MONDAY + timedelta(days=7, hours=2) + tick]
    assert len(sent["refresh_materialized_views"]) == DAYS * 24 * 4


def test_schedule_overrides_and_off_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("AGGJOBS_SCHEDULE", json.dumps({
        "hourly_rollup": "* * * * *", "daily_rollup": "off",
        "refresh_materialized_views": "30 */6 * * *", "weekly_rollup": " off ",
    }))
    settings = Settings()
    assert set(beat_schedule(settings)) == {"hourly_rollup", "cleanup_old_data",
                                            "refresh_materialized_views"}
    sent = simulate(settings, MONDAY, 2)
    assert sent["hourly_rollup"] == list(every_minute(MONDAY, 2))
    assert sent["refresh_materialized_views"] == expected(
        MONDAY, 2, lambda t: t.minute == 30 and t.hour % 6 == 0)
    assert sent["cleanup_old_data"] == expected(MONDAY, 2, DEFAULTS["cleanup_old_data"])
    for entry in beat_schedule(settings).values():
        assert entry["kwargs"] == {"trigger": "schedule"}


@pytest.mark.parametrize("text", ["5 * * *", "every hour", "5 * * * * *"])
def test_a_bad_schedule_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="hourly_rollup"):
        beat_schedule(Settings(schedule={"hourly_rollup": text}))


def test_slot_is_the_minute_the_schedule_last_fired() -> None:
    entries = beat_schedule(Settings(schedule={}))
    hourly = entries["hourly_rollup"]["schedule"]
    weekly = entries["weekly_rollup"]["schedule"]
    views = entries["refresh_materialized_views"]["schedule"]
    at = MONDAY + timedelta(days=2, hours=10)  # Wednesday 10:00
    assert slot_of(hourly, at + timedelta(minutes=5)) == at + timedelta(minutes=5)
    assert slot_of(hourly, at + timedelta(minutes=5, seconds=59.9)) == at + timedelta(minutes=5)
    # a late execution (queue backed up, worker restarted) still names its firing minute
    assert slot_of(hourly, at + timedelta(minutes=37, seconds=12)) == at + timedelta(minutes=5)
    assert slot_of(hourly, at + timedelta(minutes=4)) == at - timedelta(minutes=55)
    assert slot_of(views, at + timedelta(minutes=44)) == at + timedelta(minutes=30)
    assert slot_of(weekly, at) == MONDAY + timedelta(hours=2)
    assert slot_of(weekly, MONDAY + timedelta(hours=1, minutes=59)) == \
        MONDAY - timedelta(days=7) + timedelta(hours=2)
    # any offset is normalized to UTC
    from zoneinfo import ZoneInfo
    paris = (at + timedelta(minutes=20)).astimezone(ZoneInfo("Europe/Paris"))
    assert slot_of(hourly, paris) == at + timedelta(minutes=5)
    assert slot_of(hourly, paris).tzinfo == UTC


def test_scheduler_down_five_hours_fires_once(settings: Settings) -> None:
    app = create_app(settings)
    schedule = app.conf.beat_schedule["hourly_rollup"]["schedule"]
    schedule.app = app
    now = MONDAY + timedelta(hours=10, minutes=20)
    clock = Clock(now)
    schedule.nowfun = clock
    last_run_at = now - timedelta(hours=5)  # beat's state file says so: it was down since
    fired = []
    for minute in range(0, 120):
        clock.now = now + timedelta(minutes=minute)
        due, _next = schedule.is_due(last_run_at)
        if due:
            fired.append(clock.now)
            last_run_at = clock.now
    # once at once (not five times), then at minute 5 of the following hours
    assert fired == [now, MONDAY + timedelta(hours=11, minutes=5),
                     MONDAY + timedelta(hours=12, minutes=5)]
    app.close()


def test_one_hourly_run_catches_five_missed_hours_up(settings: Settings,
                                                    conn: psycopg.Connection) -> None:
    p.seed_sources(conn, MONDAY, rows=12 * 6, every=timedelta(minutes=10))
    before = MONDAY + timedelta(hours=5, minutes=5)  # the last run before the outage
    first = run_job(RunRequest(job="hourly_rollup", as_of=before, trigger="schedule",
                               slot=before), settings)
    assert first.status == "succeeded", first.error
    for rollup in BUILTIN_ROLLUPS:
        assert_matches(conn, rollup.name, Grain.HOUR, MONDAY + timedelta(hours=5))

    after = MONDAY + timedelta(hours=10, minutes=20)  # the one run when the scheduler is back
    result = run_job(RunRequest(job="hourly_rollup", as_of=after, trigger="schedule",
                                slot=after.replace(minute=5)), settings)
    assert result.status == "succeeded", result.error
    by_name = {s.name: s for s in result.steps}
    for rollup in BUILTIN_ROLLUPS:
        step = by_name[f"{rollup.name}.hour"]
        assert step.status == "succeeded"
        assert step.detail["hour"]["new_buckets"] == 5, step.detail
        assert step.detail["hour"]["watermark"] == (MONDAY + timedelta(hours=10)).isoformat()
        assert assert_matches(conn, rollup.name, Grain.HOUR, MONDAY + timedelta(hours=10)) > 0
    # nothing of the incomplete hour
    assert conn.execute("SELECT count(*) FROM analytics.execution_metrics_hourly"
                        " WHERE hour >= %s", (MONDAY + timedelta(hours=10),)).fetchone()[0] == 0
    rows = conn.execute("SELECT status, trigger, slot FROM aggjobs.job_runs ORDER BY id"
                        ).fetchall()
    assert rows == [("succeeded", "schedule", before),
                    ("succeeded", "schedule", MONDAY + timedelta(hours=10, minutes=5))]
