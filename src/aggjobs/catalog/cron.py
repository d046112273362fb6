"""Cron schedules as sets, and the two questions asked of them: when did a schedule last fire
at or before an instant (the slot of a scheduled run), and when does it fire next.

The grammar and the meaning are Celery's `crontab` (what beat fires on): five fields, minute
hour day-of-month month day-of-week, each a comma list of `*`, `n`, `a-b` (wrapping around,
as `fri-mon`), `*/s` and `a-b/s`; month and weekday names (`jan`, `mon`); day of week 0-6
with 0 Sunday; a minute fires when every field matches (day of month AND day of week, unlike
Vixie cron's OR). Everything is UTC.

Both searches jump field by field, as arq's `next_cron` does: a month that does not match
jumps to the next month's first minute, a day to the next day, an hour to the next listed
hour, a minute to the next listed minute. A few dozen steps at most instead of the up to
527,040 minutes a minute-by-minute walk takes. The search spans 366 days, as before: a
schedule that fires less often than that (`0 0 29 2 1`: a leap day that is a Monday) counts
as not firing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ..errors import ConfigError

HORIZON = timedelta(minutes=60 * 24 * 366 - 1)  # how far either search looks
MINUTE = timedelta(minutes=1)

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
               "dec")


class Fields(Protocol):
    """The five expanded fields: a `Cron`, or a Celery `crontab` (same attribute names)."""

    @property
    def minute(self) -> set[int] | frozenset[int]: ...
    @property
    def hour(self) -> set[int] | frozenset[int]: ...
    @property
    def day_of_month(self) -> set[int] | frozenset[int]: ...
    @property
    def month_of_year(self) -> set[int] | frozenset[int]: ...
    @property
    def day_of_week(self) -> set[int] | frozenset[int]: ...


@dataclass(frozen=True)
class Cron:
    minute: frozenset[int]
    hour: frozenset[int]
    day_of_month: frozenset[int]
    month_of_year: frozenset[int]
    day_of_week: frozenset[int]  # 0 Sunday .. 6 Saturday

    @classmethod
    def parse(cls, text: str) -> Cron:
        """A five-field expression; ValueError if it is not one (the caller names the job)."""
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"{text!r} is not a 5-field cron expression")
        minute, hour, day_of_month, month, day_of_week = fields
        return cls(expand(minute, 60), expand(hour, 24), expand(day_of_month, 31, 1),
                   expand(month, 12, 1), expand(day_of_week, 7))


# -- parsing: Celery's crontab_parser, same patterns, same order, same errors -------------
_RANGE, _STEPS, _STAR = r"(\w+?)-(\w+)", r"/(\w+)?", r"\*"


def expand(spec: str, max_: int, min_: int = 0) -> frozenset[int]:
    """The values of one field (`max_` values from `min_`)."""
    values: set[int] = set()
    for part in spec.split(","):
        if not part:
            raise ValueError("empty part")
        values.update(_part(part, max_, min_))
    for value in values:
        if value >= max_ + min_ or value < min_:
            raise ValueError(f"{value} is out of range {min_}-{max_ - 1 + min_}")
    return frozenset(values)


def _part(part: str, max_: int, min_: int) -> list[int]:
    patterns: tuple[tuple[str, Callable[[tuple[str | None, ...]], list[int]]], ...] = (
        (_RANGE + _STEPS, lambda g: _stepped(_range(g[0], g[1], max_, min_), g[2])),
        (_RANGE, lambda g: _range(g[0], g[1], max_, min_)),
        (_STAR + _STEPS, lambda g: _stepped(list(range(min_, max_ + min_)), g[0])),
        ("^" + _STAR + "$", lambda g: list(range(min_, max_ + min_))),
    )
    for pattern, handler in patterns:
        if m := re.match(pattern, part):
            return handler(m.groups())
    return [_number(part, max_, min_)]


def _range(lo: str | None, hi: str | None, max_: int, min_: int) -> list[int]:
    fr, to = _number(lo or "", max_, min_), _number(hi or "", max_, min_)
    if to < fr:  # wraps around: fri-mon
        return list(range(fr, min_ + max_)) + list(range(min_, to + 1))
    return list(range(fr, to + 1))


def _stepped(values: list[int], step: str | None) -> list[int]:
    if not step:
        raise ValueError("empty filter")
    return values[::int(step)]


def _number(text: str, max_: int, min_: int) -> int:
    if text.startswith("-"):
        raise ValueError("negative numbers not supported")
    try:
        value = int(text)
    except ValueError:
        name = text[:3].lower()
        if name in MONTH_NAMES:
            value = MONTH_NAMES.index(name) + 1
        elif name in DAY_NAMES:
            value = DAY_NAMES.index(name)
        else:
            raise ValueError(f"invalid literal {text!r}") from None
    if value > min_ + max_ - 1:
        raise ValueError(f"invalid end of range: {value} > {min_ + max_ - 1}")
    if value < min_:
        raise ValueError(f"invalid beginning of range: {value} < {min_}")
    return value


# -- time ---------------------------------------------------------------------------------
def fires_at(schedule: Fields, t: datetime) -> bool:
    return (t.minute in schedule.minute and t.hour in schedule.hour
            and t.isoweekday() % 7 in schedule.day_of_week
            and t.day in schedule.day_of_month and t.month in schedule.month_of_year)


def minute_of(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def first_at_or_after(schedule: Fields, start: datetime) -> datetime | None:
    """The first minute at or after `start` (a UTC minute) the schedule fires, within
    HORIZON; None if none."""
    t, limit = start, start + HORIZON
    while t <= limit:
        day = t.replace(hour=0, minute=0)
        if t.month not in schedule.month_of_year:
            t = (day.replace(day=1) + timedelta(days=32)).replace(day=1)  # next month
        elif t.day not in schedule.day_of_month or t.isoweekday() % 7 not in schedule.day_of_week:
            t = day + timedelta(days=1)
        elif t.hour not in schedule.hour:
            later = [h for h in schedule.hour if h > t.hour]
            t = t.replace(hour=min(later), minute=0) if later else day + timedelta(days=1)
        elif t.minute not in schedule.minute:
            later = [m for m in schedule.minute if m > t.minute]
            t = (t.replace(minute=min(later)) if later
                 else t.replace(minute=0) + timedelta(hours=1))
        else:
            return t
    return None


def last_at_or_before(schedule: Fields, end: datetime) -> datetime | None:
    """The last minute at or before `end` (a UTC minute) the schedule fired, within
    HORIZON; None if none."""
    t, limit = end, end - HORIZON
    while t >= limit:
        day = t.replace(hour=0, minute=0)
        if t.month not in schedule.month_of_year:
            t = day.replace(day=1) - MINUTE  # the previous month's last minute
        elif t.day not in schedule.day_of_month or t.isoweekday() % 7 not in schedule.day_of_week:
            t = day - MINUTE
        elif t.hour not in schedule.hour:
            earlier = [h for h in schedule.hour if h < t.hour]
            t = t.replace(hour=max(earlier), minute=59) if earlier else day - MINUTE
        elif t.minute not in schedule.minute:
            earlier = [m for m in schedule.minute if m < t.minute]
            t = (t.replace(minute=max(earlier)) if earlier
                 else t.replace(minute=0) - MINUTE)
        else:
            return t
    return None


def slot_of(schedule: Fields, now: datetime) -> datetime:
    """The minute the schedule last fired at or before `now`: what identifies a scheduled
    run, whichever beat sent it and whenever a worker took it."""
    slot = last_at_or_before(schedule, minute_of(now))
    if slot is None:
        raise ConfigError(f"schedule {schedule} never fires")
    return slot


def next_after(schedule: Fields, now: datetime) -> datetime | None:
    """The next minute the schedule fires after `now` (None: not within 366 days)."""
    return first_at_or_after(schedule, minute_of(now) + MINUTE)
