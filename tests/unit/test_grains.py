"""UTC bucket arithmetic, as tables of cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from aggjobs.catalog.grains import (
    SUPPORTED_FROM,
    SUPPORTED_UNTIL,
    Grain,
    chunks,
    parse_timestamp,
)
from aggjobs.errors import InvalidTimestamp

IST = timezone(timedelta(hours=5, minutes=30))


@pytest.mark.parametrize(
    ("grain", "ts", "floor"),
    [
        (Grain.HOUR, datetime(2026, 11, 28, 13, 59, 59, tzinfo=UTC), datetime(2026, 11, 28, 13, tzinfo=UTC)),
        (Grain.HOUR, datetime(2026, 11, 28, 5, 10, tzinfo=IST), datetime(2026, 11, 27, 23, tzinfo=UTC)),
        (Grain.DAY, datetime(2026, 11, 28, 0, 0, tzinfo=UTC), datetime(2026, 11, 28, tzinfo=UTC)),
        (Grain.DAY, datetime(2026, 11, 28, 3, 0, tzinfo=IST), datetime(2026, 11, 27, tzinfo=UTC)),
        (Grain.WEEK, datetime(2026, 11, 28, 12, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC)),
        (Grain.WEEK, datetime(2026, 11, 23, 0, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC)),
        (Grain.WEEK, datetime(2026, 11, 23, 2, tzinfo=IST), datetime(2026, 11, 16, tzinfo=UTC)),
        (Grain.WEEK, datetime(2027, 1, 1, tzinfo=UTC), datetime(2026, 12, 28, tzinfo=UTC)),
        (Grain.HOUR, datetime(2026, 3, 29, 1, 30), datetime(2026, 3, 29, 1, tzinfo=UTC)),  # naive = UTC
    ],
)
def test_floor(grain: Grain, ts: datetime, floor: datetime) -> None:
    assert grain.floor(ts) == floor
    assert grain.floor(ts).tzinfo == UTC


@pytest.mark.parametrize(
    ("grain", "ts", "ceil"),
    [
        (Grain.HOUR, datetime(2026, 11, 28, 13, tzinfo=UTC), datetime(2026, 11, 28, 13, tzinfo=UTC)),
        (Grain.HOUR, datetime(2026, 11, 28, 13, 0, 1, tzinfo=UTC), datetime(2026, 11, 28, 14, tzinfo=UTC)),
        (Grain.DAY, datetime(2026, 11, 28, 13, tzinfo=UTC), datetime(2026, 11, 29, tzinfo=UTC)),
        (Grain.WEEK, datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)),
    ],
)
def test_ceil(grain: Grain, ts: datetime, ceil: datetime) -> None:
    assert grain.ceil(ts) == ceil


def test_buckets_and_chunks() -> None:
    start = datetime(2026, 11, 28, tzinfo=UTC)
    assert len(Grain.HOUR.buckets(start, start + timedelta(days=1))) == 24
    pieces = chunks(start, start + timedelta(hours=7), timedelta(hours=3))
    assert [(b - a).seconds // 3600 for a, b in pieces] == [3, 3, 1]
    assert pieces[0][0] == start and pieces[-1][1] == start + timedelta(hours=7)
    assert chunks(start, start, timedelta(hours=1)) == []


def test_hierarchy() -> None:
    assert (Grain.HOUR.finer, Grain.DAY.finer, Grain.WEEK.finer) == (None, Grain.HOUR, Grain.DAY)
    assert Grain.HOUR.coarser is Grain.DAY and Grain.WEEK.coarser is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28", datetime(2026, 11, 28, tzinfo=UTC)),
        ("2026-11-28T13:00Z", datetime(2026, 11, 28, 13, tzinfo=UTC)),
        ("2026-11-28 13:00+05:30", datetime(2026, 11, 28, 7, 30, tzinfo=UTC)),
        (" 2026-11-28T13:00:00 ", datetime(2026, 11, 28, 13, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "2026-11-28T25:00", "1; DROP"])
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(InvalidTimestamp, match="cannot parse timestamp"):
        parse_timestamp(text)


@pytest.mark.parametrize("text", [
    "0001-01-01T00:00+01:00",  # an offset past year 1 in UTC (OverflowError)
    "9999-12-31T23:59-23:59",  # past year 9999 in UTC
    "1969-12-31T23:59:59Z", "2200-01-01", "0044-03-15",
])
def test_parse_timestamp_refuses_unsupported_times(text: str) -> None:
    with pytest.raises(InvalidTimestamp, match=r"outside the supported times \[1970-01-01, "
                       r"2200-01-01\) UTC"):
        parse_timestamp(text)


def test_supported_times_bounds() -> None:
    assert parse_timestamp("1970-01-01") == SUPPORTED_FROM
    assert parse_timestamp("2199-12-31T23:59:59.999999Z") < SUPPORTED_UNTIL
