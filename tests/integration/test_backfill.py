"""Backfill: recomputes a range of materialized buckets, chunk by chunk, resumably."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from aggjobs.catalog import Grain, get_rollup, rollups_on
from aggjobs.catalog.families import AGENT_RUNS
from aggjobs.engine.backfill import backfill
from aggjobs.engine.recompute import recompute_range
from aggjobs.errors import InvalidRange
from aggjobs.settings import Settings
from tests import platform as p
from tests.reference import assert_all_match, assert_matches

T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
H = timedelta(hours=1)
AS_OF = T0 + timedelta(days=9)  # two whole weeks materialized at every grain


def seed(conn: psycopg.Connection, hours: int = 9 * 24) -> None:
    """A few rows per hour in 3 workspaces for all three sources."""
    p.seed_sources(conn, T0, rows=hours * 12, every=timedelta(minutes=5),
                   event_offset=timedelta(minutes=1))


def tamper(conn: psycopg.Connection, table: str, column: str, at, ws: int, by: int = 7) -> None:
    """Corrupt one stored row, the way a bug or a manual edit would."""
    rows = conn.execute(
        f"UPDATE analytics.{table} SET total_executions = total_executions + %s"
        f" WHERE {column} = %s AND workspace_id = %s RETURNING total_executions", (by, at, ws)
    ).fetchall()
    assert len(rows) == 1, f"no {table} row for {at} / {ws}"


def total(conn: psycopg.Connection, table: str, column: str, at, ws: int) -> int:
    return conn.execute(
        f"SELECT total_executions FROM analytics.{table} WHERE {column} = %s"
        " AND workspace_id = %s", (at, ws)
    ).fetchone()[0]


def raw_total(conn: psycopg.Connection, lo: datetime, hi: datetime, ws: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM agent_runs WHERE started_at >= %s AND started_at < %s"
        " AND workspace_id = %s", (lo, hi, ws)
    ).fetchone()[0]


def backfill_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT id, status, grain, done_until, error, finished_at IS NOT NULL"
        " FROM aggjobs.backfills ORDER BY id"
    ).fetchall()


@pytest.fixture
def refreshed(conn: psycopg.Connection, settings: Settings) -> psycopg.Connection:
    seed(conn)
    p.refresh_all(conn, settings, AS_OF)
    assert_all_match(conn)
    marks = p.watermarks(conn)
    assert marks[("execution_metrics", "hour")] == AS_OF
    assert marks[("execution_metrics", "week")] == T0 + timedelta(weeks=1)
    return conn


def test_backfill_recomputes_the_range_and_only_it(refreshed, settings: Settings) -> None:
    conn = refreshed
    lo, hi = T0 + 5 * H, T0 + 30 * H  # partial days: widened to whole buckets per grain
    day1 = (T0 + timedelta(days=1)).date()
    tamper(conn, "execution_metrics_hourly", "hour", T0 + 6 * H, 1)
    tamper(conn, "execution_metrics_hourly", "hour", T0 + 29 * H, 2)
    tamper(conn, "execution_metrics_daily", "day", day1, 3)
    tamper(conn, "execution_metrics_weekly", "week", T0.date(), 1)
    tamper(conn, "execution_metrics_hourly", "hour", T0 + 60 * H, 3)  # outside the range
    conn.execute("UPDATE analytics.credit_consumption_hourly SET credits_used = credits_used + 1"
                 " WHERE hour = %s", (T0 + 7 * H,))
    with pytest.raises(AssertionError):
        assert_matches(conn, "execution_metrics", Grain.HOUR, AS_OF)

    report = backfill(conn, get_rollup("execution_metrics"), lo, hi, settings=settings)
    assert not report.resumed
    assert report.beyond_watermark == {}
    assert report.buckets == 25 + 2 + 1  # hours 05..29, days 0..1, week 0
    assert report.rows.written == 3 * (25 + 2 + 1)
    assert backfill_rows(conn) == [(report.backfill_id, "succeeded", "week",
                                    T0 + timedelta(weeks=1), None, True)]

    for ws, at in ((1, T0 + 6 * H), (2, T0 + 29 * H)):
        assert total(conn, "execution_metrics_hourly", "hour", at, ws) == raw_total(
            conn, at, at + H, ws)
    assert total(conn, "execution_metrics_daily", "day", day1, 3) == raw_total(
        conn, T0 + timedelta(days=1), T0 + timedelta(days=2), 3)
    assert total(conn, "execution_metrics_weekly", "week", T0.date(), 1) == raw_total(
        conn, T0, T0 + timedelta(weeks=1), 1)
    # Outside the range nothing was touched: the hour stays wrong until verify --repair.
    at = T0 + 60 * H
    assert total(conn, "execution_metrics_hourly", "hour", at, 3) == raw_total(
        conn, at, at + H, 3) + 7
    conn.execute("UPDATE analytics.execution_metrics_hourly"
                 " SET total_executions = total_executions - 7"
                 " WHERE hour = %s AND workspace_id = 3", (at,))
    assert_matches(conn, "execution_metrics", Grain.HOUR, AS_OF)
    assert_matches(conn, "execution_metrics", Grain.DAY, AS_OF)
    assert_matches(conn, "execution_metrics", Grain.WEEK, T0 + timedelta(weeks=1))
    # Another rollup is another backfill.
    with pytest.raises(AssertionError):
        assert_matches(conn, "credit_consumption", Grain.HOUR, AS_OF)
    backfill(conn, get_rollup("credit_consumption"), lo, hi, settings=settings)
    assert_all_match(conn)


def test_backfill_reflects_raw_rows_changed_behind_its_back(refreshed, settings) -> None:
    """Rows written with change tracking bypassed (e.g. restored from a dump with triggers
    disabled) are only picked up by a backfill of their range."""
    conn = refreshed
    conn.execute("ALTER TABLE agent_runs DISABLE TRIGGER USER")
    conn.execute("DELETE FROM agent_runs WHERE workspace_id = 2 AND started_at >= %s"
                 " AND started_at < %s", (T0 + 10 * H, T0 + 12 * H))
    conn.execute("ALTER TABLE agent_runs ENABLE TRIGGER USER")
    with pytest.raises(AssertionError, match="extra"):
        assert_matches(conn, "execution_metrics", Grain.HOUR, AS_OF)
    for rollup in rollups_on(AGENT_RUNS):  # each rollup on the runs is its own backfill
        backfill(conn, rollup, T0 + 10 * H, T0 + 12 * H, settings=settings)
    assert_all_match(conn)
    assert conn.execute(
        "SELECT count(*) FROM analytics.execution_metrics_hourly WHERE workspace_id = 2"
        " AND hour >= %s AND hour < %s", (T0 + 10 * H, T0 + 12 * H)
    ).fetchone()[0] == 0


def test_failed_backfill_is_recorded_and_resumes_where_it_stopped(refreshed, db_url) -> None:
    conn = refreshed
    settings = Settings(database_url=db_url, hours_per_transaction=4)
    rollup = get_rollup("execution_metrics")
    lo, hi = T0 + 24 * H, T0 + 48 * H  # day 1: 6 hour chunks, 1 day chunk, 1 week chunk
    calls: list[tuple[int, int]] = []

    def fail_after_two(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        backfill(conn, rollup, lo, hi, settings=settings, progress=fail_after_two)
    assert calls == [(1, 8), (2, 8)]
    [(job_id, status, grain, done_until, error, finished)] = backfill_rows(conn)
    assert (status, grain, done_until, finished) == ("failed", "hour", lo + 8 * H, True)
    assert "disk on fire" in error
    # The rollup lock is released: a refresh can run beside the failed job.
    p.refresh_all(conn, settings, AS_OF, lock_wait_s=1)

    # Tamper one hour already done and one still to do: the resumed job redoes only the latter.
    tamper(conn, "execution_metrics_hourly", "hour", lo + 2 * H, 1, by=5)
    tamper(conn, "execution_metrics_hourly", "hour", lo + 20 * H, 1, by=5)
    calls.clear()
    report = backfill(conn, rollup, lo, hi, settings=settings,
                      progress=lambda d, t: calls.append((d, t)))
    assert report.resumed and report.backfill_id == job_id
    assert calls == [(i, 6) for i in range(1, 7)]  # 4 hour chunks left, then day and week
    assert report.buckets == 16 + 1 + 1
    assert backfill_rows(conn) == [(job_id, "succeeded", "week", T0 + timedelta(weeks=1),
                                    None, True)]
    at = lo + 20 * H
    assert total(conn, "execution_metrics_hourly", "hour", at, 1) == raw_total(conn, at, at + H, 1)
    at = lo + 2 * H
    assert total(conn, "execution_metrics_hourly", "hour", at, 1) == raw_total(
        conn, at, at + H, 1) + 5

    # The same range again is a new job, from scratch, and fixes everything.
    again = backfill(conn, rollup, lo, hi, settings=settings)
    assert not again.resumed and again.backfill_id != job_id
    assert again.buckets == 24 + 1 + 1
    assert [r[1] for r in backfill_rows(conn)] == ["succeeded", "succeeded"]
    assert_all_match(conn)


def test_backfill_failing_before_its_first_chunk_resumes_from_an_unaligned_start(
        refreshed, settings, monkeypatch) -> None:
    """--from in the middle of an hour, and the job fails before any chunk commits (lock
    busy, Ctrl-C): the resumed job must still recompute whole hours."""
    conn = refreshed
    rollup = get_rollup("execution_metrics")
    lo, hi = T0 + 5 * H + timedelta(minutes=30), T0 + 9 * H

    import aggjobs.engine.backfill as engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        backfill(conn, rollup, lo, hi, settings=settings)
    monkeypatch.undo()
    [(job_id, status, grain, done_until, _, _)] = backfill_rows(conn)
    assert (status, grain, done_until) == ("failed", "hour", lo)

    tamper(conn, "execution_metrics_hourly", "hour", T0 + 5 * H, 2)
    report = backfill(conn, rollup, lo, hi, settings=settings)
    assert report.resumed and report.backfill_id == job_id
    assert backfill_rows(conn)[0][1] == "succeeded"
    assert_all_match(conn)


def test_inverted_or_empty_range_is_refused_and_records_nothing(conn, settings) -> None:
    rollup = get_rollup("user_activity")
    with pytest.raises(InvalidRange, match="must be before"):
        backfill(conn, rollup, T0 + timedelta(days=1), T0, settings=settings)
    with pytest.raises(InvalidRange):
        backfill(conn, rollup, T0, T0, settings=settings)
    assert backfill_rows(conn) == []


def test_range_beyond_the_watermark_is_reported_not_materialized(conn, settings) -> None:
    seed(conn, hours=30)
    rollup = get_rollup("execution_metrics")
    # Never refreshed: nothing is materialized, nothing is backfilled.
    report = backfill(conn, rollup, T0 + 2 * H, T0 + 20 * H, settings=settings)
    assert report.buckets == 0
    assert report.beyond_watermark == {"hour": T0 + 2 * H, "day": T0, "week": T0}

    p.refresh_all(conn, settings, T0 + 10 * H)
    marks = p.watermarks(conn)
    assert (marks[("execution_metrics", "hour")], marks[("execution_metrics", "day")]) == (
        T0 + 10 * H, T0)
    report = backfill(conn, rollup, T0 + 2 * H, T0 + 20 * H, settings=settings)
    assert report.beyond_watermark == {"hour": T0 + 10 * H, "day": T0, "week": T0}
    assert report.buckets == 8  # hours 02..09; no day or week is materialized
    assert report.rows.written == 3 * 8
    rows = conn.execute(
        "SELECT count(*), max(hour) FROM analytics.execution_metrics_hourly"
    ).fetchone()
    assert rows == (3 * 10, T0 + 9 * H)  # nothing at or after the watermark was built
    assert conn.execute("SELECT count(*) FROM analytics.execution_metrics_daily").fetchone() == (0,)
    assert p.watermarks(conn) == marks
    assert_matches(conn, "execution_metrics", Grain.HOUR, T0 + 10 * H)
    # Within the watermark: nothing beyond.
    inside = backfill(conn, rollup, T0 + 2 * H, T0 + 4 * H, settings=settings)
    assert inside.beyond_watermark == {"day": T0, "week": T0}


# -- several sessions side by side (AGGJOBS_BACKFILL_SESSIONS) --------------------------------


@pytest.fixture
def side_by_side(db_url: str) -> Settings:
    """Three sessions, two hours a chunk: a day's 12 hour chunks in 4 waves."""
    return Settings(database_url=db_url, hours_per_transaction=2, backfill_sessions=3)


def test_sessions_side_by_side_recompute_hours_and_mark_the_days_they_change(
        refreshed, side_by_side: Settings) -> None:
    """Rows changed behind the tracking's back in two hours of one day, one workspace's
    vanishing: stopped right after its hours, the backfill has left those days' groups
    marked (by the main session: the chunks' own transactions mark nothing), and the next
    refresh makes them right; the finished backfill makes everything right."""
    conn, rollup = refreshed, get_rollup("execution_metrics")
    lo, hi = T0 + 24 * H, T0 + 48 * H
    conn.execute("ALTER TABLE agent_runs DISABLE TRIGGER USER")
    conn.execute("DELETE FROM agent_runs WHERE workspace_id = 2 AND started_at >= %s"
                 " AND started_at < %s", (lo, hi))
    conn.execute("UPDATE agent_runs SET status = 'failed' WHERE workspace_id = 1"
                 " AND started_at >= %s AND started_at < %s", (lo + 20 * H, lo + 22 * H))
    conn.execute("ALTER TABLE agent_runs ENABLE TRIGGER USER")
    calls: list[int] = []

    def stop_after_the_hours(done: int, total: int) -> None:
        calls.append(done)
        if done == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill(conn, rollup, lo, hi, settings=side_by_side, progress=stop_after_the_hours)
    assert calls == list(range(1, 13))  # four waves of three chunks
    assert_matches(conn, rollup.name, Grain.HOUR, AS_OF)
    pending = conn.execute(
        "SELECT grain, bucket, workspace_id FROM aggjobs.pending_groups"
        " WHERE rollup = 'execution_metrics' ORDER BY 1, 2, 3").fetchall()
    assert ("day", lo, 1) in pending and ("day", lo, 2) in pending
    assert {g for g, _, _ in pending} == {"day"}
    p.refresh_all(conn, side_by_side, AS_OF)
    assert_all_match(conn, rollup)  # (agent_executions would need a backfill of its own)

    resumed = backfill(conn, rollup, lo, hi, settings=side_by_side)
    assert resumed.resumed and resumed.buckets == 1 + 1  # the day and the week were left
    tamper(conn, "execution_metrics_hourly", "hour", lo + 3 * H, 1)
    tamper(conn, "execution_metrics_daily", "day", lo.date(), 3)
    report = backfill(conn, rollup, lo, hi, settings=side_by_side)
    assert not report.resumed and report.buckets == 24 + 1 + 1
    assert backfill_rows(conn)[-1][1:4] == ("succeeded", "week", T0 + timedelta(weeks=1))
    assert_all_match(conn, rollup)


def test_a_failing_chunk_fails_its_wave_and_the_resumed_backfill_redoes_it(
        refreshed, side_by_side: Settings, monkeypatch) -> None:
    conn, rollup = refreshed, get_rollup("execution_metrics")
    lo, hi = T0 + 24 * H, T0 + 48 * H
    import aggjobs.engine.backfill as engine

    def failing(session, rollup, grain, a, b, **kw):
        if a == lo + 8 * H:  # the second chunk of the second wave
            raise psycopg.errors.DiskFull("could not extend file")
        return recompute_range(session, rollup, grain, a, b, **kw)

    monkeypatch.setattr(engine, "recompute_range", failing)
    with pytest.raises(psycopg.errors.DiskFull):
        backfill(conn, rollup, lo, hi, settings=side_by_side)
    monkeypatch.undo()
    [(job_id, status, grain, done_until, error, _)] = backfill_rows(conn)
    assert (status, grain, done_until) == ("failed", "hour", lo + 6 * H)  # the first wave
    assert "could not extend file" in error
    tamper(conn, "execution_metrics_hourly", "hour", lo + 7 * H, 2)
    report = backfill(conn, rollup, lo, hi, settings=side_by_side)
    assert report.resumed and report.backfill_id == job_id
    assert report.buckets == 18 + 1 + 1
    assert_all_match(conn)
