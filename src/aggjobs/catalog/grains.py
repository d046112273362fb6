"""Time grains and UTC bucket arithmetic (pure functions, no I/O)."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta

from ..errors import InvalidRange, InvalidTimestamp


class Grain(enum.Enum):
    """A bucket width. `value` is the name users type; `column` names the bucket column."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"

    @property
    def column(self) -> str:
        return self.value

    @property
    def table_suffix(self) -> str:
        return {"hour": "hourly", "day": "daily", "week": "weekly"}[self.value]

    @property
    def step(self) -> timedelta:
        return {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[
            self.value
        ]

    @property
    def finer(self) -> Grain | None:
        """The grain this one is merged from; None for the hour, which reads raw rows."""
        return {"hour": None, "day": Grain.HOUR, "week": Grain.DAY}[self.value]

    @property
    def coarser(self) -> Grain | None:
        return {"hour": Grain.DAY, "day": Grain.WEEK, "week": None}[self.value]

    def floor(self, ts: datetime) -> datetime:
        """Start of the UTC bucket holding `ts` (hour, UTC midnight, or Monday UTC midnight)."""
        ts = as_utc(ts)
        if self is Grain.HOUR:
            return ts.replace(minute=0, second=0, microsecond=0)
        day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
        if self is Grain.DAY:
            return day
        return day - timedelta(days=day.weekday())

    def ceil(self, ts: datetime) -> datetime:
        """Start of the first bucket at or after `ts`."""
        start = self.floor(ts)
        return start if start == as_utc(ts) else start + self.step

    def buckets(self, start: datetime, end: datetime) -> list[datetime]:
        """Bucket starts in [start, end), both aligned."""
        out, cur = [], self.floor(start)
        while cur < end:
            out.append(cur)
            cur += self.step
        return out


def as_utc(ts: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken to be UTC already."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def bucket_date(ts: datetime) -> date:
    return as_utc(ts).date()


# The times aggjobs rolls up (docs/rollups.md, "Supported times"): a raw row whose time is
# outside [SUPPORTED_FROM, SUPPORTED_UNTIL) (infinite, BC, year 10000, ...) is in no bucket,
# and a timestamp given to a command or the API must lie within it too.
SUPPORTED_FROM = datetime(1970, 1, 1, tzinfo=UTC)
SUPPORTED_UNTIL = datetime(2200, 1, 1, tzinfo=UTC)


def supported(ts: datetime) -> bool:
    return SUPPORTED_FROM <= as_utc(ts) < SUPPORTED_UNTIL


# The bounds as the parameters of the named queries that apply them (queries.sql).
SUPPORTED_PARAMS = {"supported_from": SUPPORTED_FROM, "supported_until": SUPPORTED_UNTIL}


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 date or timestamp within the supported times; without an offset it is UTC.
    'now' is accepted."""
    text = text.strip()
    if text.lower() == "now":
        return datetime.now(UTC)
    try:
        parsed = as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise InvalidTimestamp(
            f"cannot parse timestamp {text[:64]!r}: use ISO 8601, e.g. 2026-11-28 or "
            "2026-11-28T13:00Z"
        ) from None
    except OverflowError:  # an offset that moves it past year 1 or 9999 in UTC
        parsed = None
    if parsed is None or not supported(parsed):
        raise InvalidTimestamp(
            f"timestamp {text[:64]!r} is outside the supported times "
            f"[{SUPPORTED_FROM:%Y-%m-%d}, {SUPPORTED_UNTIL:%Y-%m-%d}) UTC"
        )
    return parsed


def past(text: str, what: str) -> datetime:
    """parse_timestamp of an input named `what` that may not be in the future."""
    ts = parse_timestamp(text)
    if ts > datetime.now(UTC):
        raise InvalidRange(f"{what} {ts.isoformat()} is in the future")
    return ts


def past_range(lo_text: str, hi_text: str, lo_name: str, hi_name: str
               ) -> tuple[datetime, datetime]:
    """[lo, hi) of two inputs so named: both past, lo before hi."""
    lo, hi = past(lo_text, lo_name), past(hi_text, hi_name)
    if lo >= hi:
        raise InvalidRange(f"{lo_name} {lo.isoformat()} must be before {hi_name} "
                           f"{hi.isoformat()}")
    return lo, hi


def chunks(start: datetime, end: datetime, step: timedelta) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive pieces of at most `step`."""
    out, cur = [], start
    while cur < end:
        nxt = min(cur + step, end)
        out.append((cur, nxt))
        cur = nxt
    return out
