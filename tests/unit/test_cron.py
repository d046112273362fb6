"""Cron schedules (aggjobs.catalog.cron): parsing as Celery's crontab does, and the slot and
the next firing found by jumping field by field, as tables of cases; then checked against
Celery's own parser and against the minute-by-minute walk they replace."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab, crontab_parser

from aggjobs.catalog.cron import Cron, fires_at, next_after, slot_of
from aggjobs.catalog.jobs import JOB_SPECS, get_job_spec
from aggjobs.errors import ConfigError, UnknownJob
from aggjobs.settings import Settings


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


C = Cron.parse


@pytest.mark.parametrize(
    ("expr", "now", "slot", "nxt"),
    [
        # hourly at :05 (hourly_rollup)
        ("5 * * * *", at(2026, 11, 30, 4, 5), at(2026, 11, 30, 4, 5), at(2026, 11, 30, 5, 5)),
        ("5 * * * *", at(2026, 11, 30, 4, 4, 59), at(2026, 11, 30, 3, 5), at(2026, 11, 30, 4, 5)),
        ("5 * * * *", at(2026, 12, 31, 23, 59), at(2026, 12, 31, 23, 5), at(2027, 1, 1, 0, 5)),
        # every 15 minutes (refresh_materialized_views)
        ("*/15 * * * *", at(2026, 11, 30, 4, 44), at(2026, 11, 30, 4, 30), at(2026, 11, 30, 4, 45)),
        ("*/15 * * * *", at(2026, 11, 30, 4, 45), at(2026, 11, 30, 4, 45), at(2026, 11, 30, 5, 0)),
        ("*/15 * * * *", at(2026, 11, 30, 23, 59), at(2026, 11, 30, 23, 45), at(2026, 12, 1, 0, 0)),
        # daily at 01:00
        ("0 1 * * *", at(2026, 11, 30, 0, 59), at(2026, 11, 29, 1, 0), at(2026, 11, 30, 1, 0)),
        # Monday weeks (weekly_rollup: Monday 02:00; 0 is Sunday)
        ("0 2 * * 1", at(2026, 11, 29, 12), at(2026, 11, 23, 2), at(2026, 11, 30, 2)),  # a Sunday
        ("0 2 * * 1", at(2026, 11, 30, 2), at(2026, 11, 30, 2), at(2026, 12, 7, 2)),
        ("0 2 * * mon", at(2026, 11, 30, 1, 59), at(2026, 11, 23, 2), at(2026, 11, 30, 2)),
        ("0 0 * * 0", at(2026, 11, 30, 0, 0), at(2026, 11, 29, 0, 0), at(2026, 12, 6, 0, 0)),
        # month ends: the 31st skips the months without one; the 1st after a 31-day month
        ("0 0 31 * *", at(2026, 4, 15), at(2026, 3, 31), at(2026, 5, 31)),
        ("0 0 1 * *", at(2026, 1, 31, 23, 59), at(2026, 1, 1), at(2026, 2, 1)),
        ("30 23 28-31 2 *", at(2026, 3, 1), at(2026, 2, 28, 23, 30), at(2027, 2, 28, 23, 30)),
        # leap days: 29 February 2028 (leap), none in 2027 nor 2026
        ("0 12 29 2 *", at(2028, 2, 29, 12), at(2028, 2, 29, 12), None),
        ("0 12 29 2 *", at(2028, 1, 1), None, at(2028, 2, 29, 12)),
        ("0 0 * * *", at(2028, 2, 29, 0, 1), at(2028, 2, 29), at(2028, 3, 1)),
        ("0 0 * * *", at(2027, 2, 28, 0, 1), at(2027, 2, 28), at(2027, 3, 1)),
        # year ends and ranges that wrap around
        ("0 0 1 1 *", at(2026, 12, 31, 23, 59), at(2026, 1, 1), at(2027, 1, 1)),
        ("0 9 * * fri-mon", at(2026, 12, 2, 12), at(2026, 11, 30, 9), at(2026, 12, 4, 9)),
        ("50-10/5 23-1 * * *", at(2026, 11, 30, 0, 3), at(2026, 11, 30, 0, 0), at(2026, 11, 30, 0, 5)),
        # day of month AND day of week (Celery's meaning, not Vixie cron's OR)
        ("0 0 13 * 5", at(2026, 11, 30), at(2026, 11, 13), at(2027, 8, 13)),
        # never within 366 days (a leap day that is a Monday is next in 2044)
        ("0 0 29 2 1", at(2026, 11, 30), None, None),
    ],
)
def test_slot_and_next_firing(expr: str, now: datetime, slot: datetime | None,
                              nxt: datetime | None) -> None:
    schedule = C(expr)
    if slot is None:
        with pytest.raises(ConfigError, match="never fires"):
            slot_of(schedule, now)
    else:
        assert slot_of(schedule, now) == slot and fires_at(schedule, slot)
    assert next_after(schedule, now) == nxt


@pytest.mark.parametrize("zone", [ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York"),
                                  timezone(timedelta(hours=5, minutes=30))])
def test_daylight_saving_time_is_irrelevant_everything_is_utc(zone) -> None:
    # 2026-03-29 01:00 UTC Paris springs forward; 2026-11-01 06:00 UTC New York falls back.
    for instant in (at(2026, 3, 29, 0, 30), at(2026, 3, 29, 1, 30), at(2026, 11, 1, 5, 30),
                    at(2026, 11, 1, 6, 30)):
        local = instant.astimezone(zone)
        for expr in ("5 * * * *", "0 1 * * *", "*/15 * * * *"):
            assert slot_of(C(expr), local) == slot_of(C(expr), instant)
            assert slot_of(C(expr), local).tzinfo == UTC
            assert next_after(C(expr), local) == next_after(C(expr), instant)
    # an hourly schedule fires every UTC hour across a change: no hour doubled or skipped
    t, fired = at(2026, 3, 28, 22), []
    while t < at(2026, 3, 29, 4):
        t = next_after(C("5 * * * *"), t.astimezone(ZoneInfo("Europe/Paris")))
        fired.append(t)
    assert fired == [at(2026, 3, 28, 22, 5) + timedelta(hours=h) for h in range(7)]


EXPRESSIONS = [
    "5 * * * *", "0 1 * * *", "0 2 * * 1", "0 3 * * *", "*/15 * * * *", "* * * * *",
    "30 */6 * * *", "0 0 1,15 * *", "0 9-17 * * mon-fri", "0 0 * jan,jul *", "*/7 */5 */9 * *",
    "50-10/5 23-1 * * *", "0 12 29 2 *", "59 23 31 12 *", "0 0 13 * 5", "1-5/2 0 * * sat,sun",
    "0 0 * feb-apr/2 *", "15,45 3 28-31 * tue",
]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_the_fields_are_celerys(expr: str) -> None:
    minute, hour, dom, month, dow = expr.split()
    theirs = crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month,
                     day_of_week=dow)
    ours = C(expr)
    for name in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week"):
        assert set(getattr(ours, name)) == set(getattr(theirs, name)), name


@pytest.mark.parametrize("expr", ["5 * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
                                  "* * * 13 *", "* * * * 7", "*/ * * * *", "1-2/ * * * *",
                                  "x * * * *", "-1 * * * *", ",5 * * * *"])
def test_what_celery_refuses_is_refused(expr: str) -> None:
    with pytest.raises(ValueError):
        C(expr)
    fields = expr.split()
    if len(fields) == 5:
        with pytest.raises((ValueError, crontab_parser.ParseException)):
            crontab(*fields[:2], day_of_week=fields[4], day_of_month=fields[2],
                    month_of_year=fields[3])


def walk(schedule: Cron, t: datetime, step: timedelta) -> datetime | None:
    """The minute-by-minute search the jumps replace (up to 527,040 minutes)."""
    for _ in range(60 * 24 * 366):
        if fires_at(schedule, t):
            return t
        t += step
    return None


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_the_jumps_find_what_the_minute_walk_found(expr: str) -> None:
    rng = random.Random(expr)
    schedule = C(expr)
    for _ in range(3):
        now = at(2024, 1, 1) + timedelta(minutes=rng.randrange(5 * 366 * 24 * 60),
                                         seconds=rng.randrange(60))
        minute = now.replace(second=0)
        assert next_after(schedule, now) == walk(schedule, minute + timedelta(minutes=1),
                                                 timedelta(minutes=1))
        slot = walk(schedule, minute, timedelta(minutes=-1))
        if slot is None:
            with pytest.raises(ConfigError, match="never fires"):
                slot_of(schedule, now)
        else:
            assert slot_of(schedule, now) == slot


def test_every_job_has_a_schedule_and_its_override() -> None:
    settings = Settings(schedule={"weekly_rollup": " off ", "hourly_rollup": "10 * * * *"})
    now = at(2026, 11, 29, 4, 7)
    assert get_job_spec("hourly_rollup").next_run(settings, now) == at(2026, 11, 29, 4, 10)
    assert get_job_spec("weekly_rollup").next_run(settings, now) is None
    assert get_job_spec("weekly_rollup").next_run(Settings(schedule={}), now) == \
        at(2026, 11, 30, 2)
    assert all(spec.cron_in_force(Settings(schedule={})) for spec in JOB_SPECS.values())
    with pytest.raises(ConfigError, match="schedule of daily_rollup"):
        get_job_spec("daily_rollup").next_run(Settings(schedule={"daily_rollup": "61 * * * *"}),
                                              now)
    with pytest.raises(UnknownJob, match="jobs are: hourly_rollup"):
        get_job_spec("nightly")
