"""A bucket whose recompute fails for good is retried alone, counted, then quarantined: it no
longer holds back the others, `status` reports it, and a backfill once fixed clears it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from aggjobs.catalog import Grain, get_rollup
from aggjobs.engine.backfill import backfill
from aggjobs.engine.refresh import refresh
from aggjobs.engine.status import rollup_status
from aggjobs.settings import Settings
from tests import platform as p
from tests.reference import assert_matches

T0 = datetime(2026, 11, 16, tzinfo=UTC)
H = timedelta(hours=1)
BAD = T0 + 2 * H
ROLLUP = get_rollup("execution_metrics")


def hourly(conn: psycopg.Connection, settings: Settings, as_of: datetime):
    return refresh(conn, ROLLUP, as_of=as_of, settings=settings, grains=[Grain.HOUR])


def hour_watermark(conn: psycopg.Connection) -> datetime:
    return p.watermarks(conn)[("execution_metrics", "hour")]


def quarantine_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT grain, bucket, failures, quarantined_at IS NOT NULL"
                        " FROM aggjobs.quarantine ORDER BY bucket").fetchall()


@pytest.fixture
def poisoned(conn: psycopg.Connection) -> psycopg.Connection:
    """Six hours of runs; the hourly table refuses the hour BAD (a stand-in for bad data)."""
    for h in range(6):
        for ws in (1, 2):
            p.run(conn, ws=ws, at=T0 + h * H + timedelta(minutes=10), runtime=1.0 + h)
    conn.execute("ALTER TABLE analytics.execution_metrics_hourly ADD CONSTRAINT poison"
                 f" CHECK (hour <> '{BAD.isoformat()}'::timestamptz)")
    return conn


def test_new_bucket_failing_repeatedly_is_quarantined_and_cleared_by_backfill(
        poisoned, settings) -> None:
    conn, settings = poisoned, settings.model_copy(update={"quarantine_after": 2})
    with pytest.raises(psycopg.errors.CheckViolation):
        hourly(conn, settings, T0 + 6 * H)
    # The hours before the bad one were kept; the bad one counted once.
    assert hour_watermark(conn) == BAD
    assert quarantine_rows(conn) == [("hour", BAD, 1, False)]

    report = hourly(conn, settings, T0 + 6 * H)  # second failure: quarantined, the rest goes on
    assert report.grains[0].quarantined == [BAD]
    assert hour_watermark(conn) == T0 + 6 * H
    assert quarantine_rows(conn) == [("hour", BAD, 2, True)]
    status = {(r["rollup"], r["grain"]): r for r in rollup_status(conn, now=T0 + 6 * H)}
    assert status[("execution_metrics", "hour")]["quarantined_buckets"] == 1
    stored = conn.execute("SELECT hour FROM analytics.execution_metrics_hourly"
                          " GROUP BY hour ORDER BY hour").fetchall()
    assert [h for (h,) in stored] == [T0, T0 + H, T0 + 3 * H, T0 + 4 * H, T0 + 5 * H]

    conn.execute("ALTER TABLE analytics.execution_metrics_hourly DROP CONSTRAINT poison")
    backfill(conn, ROLLUP, BAD, BAD + H, settings=settings)
    assert quarantine_rows(conn) == []
    assert_matches(conn, "execution_metrics", Grain.HOUR, T0 + 6 * H)


def test_dirty_bucket_failing_repeatedly_does_not_block_other_dirty_buckets(
        conn, settings) -> None:
    settings = settings.model_copy(update={"quarantine_after": 2})
    for h in range(6):
        p.run(conn, ws=1, at=T0 + h * H + timedelta(minutes=10), runtime=1.0 + h)
    hourly(conn, settings, T0 + 6 * H)
    conn.execute("ALTER TABLE analytics.execution_metrics_hourly ADD CONSTRAINT poison"
                 f" CHECK (hour <> '{BAD.isoformat()}'::timestamptz OR total_executions < 2)")
    # Late rows in the bad hour (now refused) and in a good one.
    p.run(conn, ws=1, at=BAD + timedelta(minutes=30), runtime=9.0)
    p.run(conn, ws=1, at=T0 + 4 * H + timedelta(minutes=30), runtime=9.0)

    with pytest.raises(psycopg.errors.CheckViolation):
        hourly(conn, settings, T0 + 6 * H)
    report = hourly(conn, settings, T0 + 6 * H)
    assert report.grains[0].quarantined == [BAD]
    assert conn.execute("SELECT count(*) FROM aggjobs.pending_groups WHERE grain = 'hour'"
                        " AND rollup = %s", (ROLLUP.name,)).fetchone()[0] == 0
    good = conn.execute("SELECT total_executions FROM analytics.execution_metrics_hourly"
                        " WHERE hour = %s", (T0 + 4 * H,)).fetchone()[0]
    assert good == 2  # the good late row was recomputed despite the bad bucket
    bad = conn.execute("SELECT total_executions FROM analytics.execution_metrics_hourly"
                       " WHERE hour = %s", (BAD,)).fetchone()[0]
    assert bad == 1  # kept as it was: quarantined, not half-written
