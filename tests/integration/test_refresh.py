"""The incremental refresh against hand-written recomputations from the raw rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from aggjobs.catalog import Grain, get_rollup
from aggjobs.engine.recompute import statement_ranges
from aggjobs.engine.refresh import refresh
from aggjobs.engine.verify import repair, verify_grain
from aggjobs.settings import Settings
from tests import platform as p
from tests.reference import assert_all_match

T0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday


def seed_rows(conn: psycopg.Connection, hours: int = 60) -> None:
    for h in range(hours):
        at = T0 + timedelta(hours=h, minutes=7 * (h % 8))
        for ws in (1, 2, 3):
            status = ("completed", "failed", "running", "cancelled")[(h + ws) % 4]
            p.run(conn, ws=ws, at=at, status=status, runtime=1.0 + h * ws, credits=f"{h}.25")
            p.event(conn, ws=ws, user=(h * ws) % 5, at=at)
            p.credit(conn, ws=ws, kind=("usage", "refund", "grant", "adjustment")[h % 4],
                     amount=f"{ws}.5", at=at)


@pytest.fixture
def kolkata(conn: psycopg.Connection, db_url: str) -> psycopg.Connection:
    """The server's TimeZone at +05:30: buckets must stay UTC."""
    dbname = conn.info.dbname
    conn.execute(f'ALTER DATABASE "{dbname}" SET timezone = \'Asia/Kolkata\'')
    fresh = psycopg.connect(db_url, autocommit=True)
    assert fresh.execute("SHOW timezone").fetchone()[0] == "Asia/Kolkata"
    yield fresh
    fresh.close()


def test_first_refresh_matches_raw_in_utc_buckets(kolkata, settings: Settings) -> None:
    seed_rows(kolkata)
    as_of = T0 + timedelta(days=8, hours=3)
    p.refresh_all(kolkata, settings, as_of)
    assert_all_match(kolkata)
    hours = kolkata.execute(
        "SELECT DISTINCT hour FROM analytics.execution_metrics_hourly ORDER BY 1 LIMIT 2"
    ).fetchall()
    assert [h for (h,) in hours] == [T0, T0 + timedelta(hours=1)]
    days = kolkata.execute("SELECT min(day) FROM analytics.user_activity_daily").fetchone()[0]
    assert days == T0.date()
    week = kolkata.execute("SELECT min(week) FROM analytics.credit_consumption_weekly").fetchone()
    assert week[0] == T0.date()  # Monday of the ISO week


def test_late_row_recomputes_one_group_per_grain(conn, settings: Settings) -> None:
    seed_rows(conn)
    as_of = T0 + timedelta(days=8, hours=3)
    p.refresh_all(conn, settings, as_of)
    p.run(conn, ws=2, at=T0 + timedelta(hours=5, minutes=1), status="failed", runtime=999.0)
    assert conn.execute("SELECT count(*) FROM aggjobs.invalidation_log").fetchone()[0] == 1
    report = refresh(conn, get_rollup("execution_metrics"), as_of=as_of, settings=settings)
    by_grain = {g.grain: g for g in report.grains}
    assert [by_grain[g].dirty_groups for g in Grain] == [1, 1, 1]
    assert [by_grain[g].rows.written for g in Grain] == [1, 1, 1]
    # The other rollup on the runs: the same group at its two grains, one agent's row each.
    agents = refresh(conn, get_rollup("agent_executions"), as_of=as_of, settings=settings)
    assert [g.dirty_groups for g in agents.grains] == [1, 1]
    assert_all_match(conn)


def test_writes_ahead_of_the_watermark_are_not_logged(conn, settings: Settings) -> None:
    seed_rows(conn, hours=5)
    p.refresh_all(conn, settings, T0 + timedelta(hours=5))
    rid = p.run(conn, ws=1, at=T0 + timedelta(hours=5, minutes=30), status="running")
    conn.execute("UPDATE agent_runs SET status = 'completed', runtime_seconds = 3 WHERE id = %s",
                 (rid,))
    p.event(conn, ws=1, user=1, at=T0 + timedelta(hours=6))
    assert conn.execute("SELECT count(*) FROM aggjobs.invalidation_log").fetchone()[0] == 0


def test_update_and_delete_are_reflected_and_empty_groups_vanish(conn, settings) -> None:
    seed_rows(conn, hours=30)
    as_of = T0 + timedelta(days=8)
    p.refresh_all(conn, settings, as_of)
    conn.execute("UPDATE agent_runs SET status = 'completed', runtime_seconds = 42,"
                 " credits_consumed = 4.2 WHERE status = 'running'")
    conn.execute("UPDATE agent_runs SET started_at = started_at + interval '3 hours'"
                 " WHERE workspace_id = 3 AND started_at < %s", (T0 + timedelta(hours=4),))
    conn.execute("DELETE FROM agent_runs WHERE workspace_id = 2")
    conn.execute("DELETE FROM user_events WHERE workspace_id = 1")
    conn.execute("DELETE FROM credit_transactions WHERE kind = 'grant'")
    p.refresh_all(conn, settings, as_of)
    assert_all_match(conn)
    for table in ("execution_metrics_hourly", "execution_metrics_daily",
                  "execution_metrics_weekly"):
        gone = conn.execute(f"SELECT count(*) FROM analytics.{table} WHERE workspace_id = 2")
        assert gone.fetchone()[0] == 0


def test_mostly_dirty_bucket_is_recomputed_whole(conn, settings: Settings) -> None:
    seed_rows(conn, hours=10)
    as_of = T0 + timedelta(days=1)
    p.refresh_all(conn, settings, as_of)
    for ws in (1, 2, 3):
        p.run(conn, ws=ws, at=T0 + timedelta(hours=2, minutes=59))
    em = get_rollup("execution_metrics")
    report = refresh(conn, em, as_of=as_of, settings=settings)
    hour = report.grains[0]
    assert (hour.dirty_groups, hour.coalesced_buckets) == (3, 1)
    assert_all_match(conn, em)


def test_many_dirty_groups_of_a_bucket_are_recomputed_by_one_scan(
        conn, settings: Settings) -> None:
    """Under half of the bucket's groups, but AGGJOBS_SCAN_GROUPS or more: one statement reads
    their rows together; fewer go group by group. Either way the result is the raw rows'."""
    scan_groups = settings.scan_groups
    hour = T0 + timedelta(hours=2)
    for ws in range(1, 21):
        for i in range(3):
            p.run(conn, ws=ws, at=hour + timedelta(minutes=i), runtime=ws + i)
    as_of = T0 + timedelta(days=1)
    p.refresh_all(conn, settings, as_of)
    em = get_rollup("execution_metrics")
    for ws in range(1, scan_groups + 1):
        p.run(conn, ws=ws, at=hour + timedelta(minutes=50), runtime=100.0 + ws)
    conn.execute("DELETE FROM agent_runs WHERE workspace_id = 1 AND runtime_seconds = 1")
    report = refresh(conn, em, as_of=as_of, settings=settings).grains[0]
    assert (report.dirty_groups, report.scanned_buckets, report.coalesced_buckets) == (
        scan_groups, 1, 0)
    assert_all_match(conn, em)
    for ws in (3, 4):
        p.run(conn, ws=ws, at=hour + timedelta(minutes=51))
    report = refresh(conn, em, as_of=as_of, settings=settings).grains[0]
    assert (report.dirty_groups, report.scanned_buckets, report.coalesced_buckets) == (2, 0, 0)
    assert_all_match(conn, em)


def test_a_large_range_is_recomputed_a_few_buckets_per_statement(
        conn, settings: Settings) -> None:
    """Each statement aggregates as many raw rows as work_mem holds (the planner's estimate):
    a small work_mem cuts six hours of 500 runs into three statements, the default keeps one.
    The rows are the raw rows' either way."""
    hi = T0 + timedelta(hours=6)
    conn.execute(
        "INSERT INTO agent_runs (id, workspace_id, status, started_at, runtime_seconds,"
        " credits_consumed) SELECT g, g %% 7, 'completed', %s + g * interval '7.2 seconds',"
        " g %% 97, 1 FROM generate_series(0, 2999) AS g", (T0,))
    conn.execute("ANALYZE agent_runs")
    em = get_rollup("execution_metrics")
    assert statement_ranges(conn, em, Grain.HOUR, T0, hi) == [(T0, hi)]
    conn.execute("SET work_mem = '64kB'")  # 1,024 rows a statement
    two = timedelta(hours=2)
    assert statement_ranges(conn, em, Grain.HOUR, T0, hi) == [
        (T0, T0 + two), (T0 + two, T0 + 2 * two), (T0 + 2 * two, hi)]
    week = Grain.WEEK.floor(T0)
    assert statement_ranges(conn, em, Grain.WEEK, week, week + timedelta(days=14)) == [
        (week, week + timedelta(days=14))]  # merged from rollup rows
    p.refresh_all(conn, settings.model_copy(update={"hours_per_transaction": 24}),
                  T0 + timedelta(days=1))
    assert_all_match(conn)


def test_truncate_of_a_source_starts_its_rollups_over(conn, settings: Settings) -> None:
    seed_rows(conn, hours=10)
    as_of = T0 + timedelta(days=1)
    p.refresh_all(conn, settings, as_of)
    conn.execute("TRUNCATE user_events")
    p.event(conn, ws=9, user=1, at=T0 + timedelta(hours=1))
    report = refresh(conn, get_rollup("user_activity"), as_of=as_of, settings=settings)
    assert report.reset
    assert_all_match(conn)
    rows = conn.execute("SELECT workspace_id FROM analytics.user_activity_hourly").fetchall()
    assert rows == [(9,)]


def test_catch_up_is_bounded_per_run_and_continued(conn, settings: Settings) -> None:
    seed_rows(conn, hours=20)
    as_of = T0 + timedelta(hours=20)
    rollup = get_rollup("credit_consumption")
    first = refresh(conn, rollup, as_of=as_of, settings=settings, max_buckets=8)
    assert first.grains[0].new_buckets == 8 and first.grains[0].held_back
    second = refresh(conn, rollup, as_of=as_of, settings=settings, max_buckets=8)
    third = refresh(conn, rollup, as_of=as_of, settings=settings, max_buckets=8)
    assert (second.grains[0].new_buckets, third.grains[0].new_buckets) == (8, 4)
    assert third.grains[0].watermark_after == as_of
    assert_all_match(conn)


def test_empty_source_advances_the_watermark(conn, settings: Settings) -> None:
    as_of = T0 + timedelta(days=2, hours=1)
    p.refresh_all(conn, settings, as_of)
    marks = p.watermarks(conn)
    assert marks[("execution_metrics", "hour")] == as_of
    assert marks[("execution_metrics", "day")] == T0 + timedelta(days=2)
    p.run(conn, ws=1, at=T0)  # long before: tracked, so the next refresh picks it up
    p.refresh_all(conn, settings, as_of)
    assert_all_match(conn)


def test_day_waits_for_its_hours(conn, settings: Settings) -> None:
    seed_rows(conn, hours=30)
    rollup = get_rollup("execution_metrics")
    report = refresh(conn, rollup, as_of=T0 + timedelta(days=2), settings=settings,
                     grains=[Grain.DAY])
    assert report.grains[0].watermark_after is None
    assert "no hour" in report.grains[0].held_back


def test_agents_are_a_dimension_and_runs_without_an_agent_one_group(conn, settings) -> None:
    """agent_executions: one row per (workspace, hour, agent), NULL agents together (the key
    is NULLS NOT DISTINCT); verify names the agent of a wrong row, repair recomputes it."""
    agents = get_rollup("agent_executions")
    for agent in (None, 1, 2):
        p.run(conn, ws=1, at=T0 + timedelta(minutes=5), agent=agent, status="failed")
        p.run(conn, ws=1, at=T0 + timedelta(minutes=6), agent=agent)
    p.refresh_all(conn, settings, T0 + timedelta(days=1))
    assert conn.execute(
        "SELECT agent_id, total_executions, failed_executions"
        " FROM analytics.agent_executions_hourly ORDER BY agent_id NULLS LAST").fetchall() == [
        (1, 2, 1), (2, 2, 1), (None, 2, 1)]
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO analytics.agent_executions_hourly (workspace_id, agent_id,"
                     " hour, total_executions, failed_executions, updated_at)"
                     " VALUES (1, NULL, %s, 1, 0, now())", (T0,))
    conn.execute("UPDATE analytics.agent_executions_hourly SET failed_executions = 9"
                 " WHERE agent_id IS NULL")
    conn.execute("DELETE FROM analytics.agent_executions_hourly WHERE agent_id = 2")
    report = verify_grain(conn, agents, Grain.HOUR, T0, T0 + timedelta(hours=1))
    assert [(m.where(), m.measure, m.stored, m.expected) for m in report.mismatches] == [
        ("1 agent_id 2", "(row)", "absent", "present"),
        ("1 agent_id None", "failed_executions", 9, 1)]
    repair(conn, agents, Grain.HOUR, report.mismatches)
    assert verify_grain(conn, agents, Grain.HOUR, T0, T0 + timedelta(hours=1)).mismatches == []
    assert_all_match(conn, agents)


def test_sketches_and_sets_are_written_with_lz4_where_the_server_has_it(
        conn, settings: Settings) -> None:
    """Storage only (engine.recompute.storage_changes): the rows are the raw rows' as ever,
    and a day's sketch, large enough to be compressed, is compressed with lz4 where the
    server was built with it (PostgreSQL 15 here), with the default where not (the
    embedded server)."""
    for i in range(3000):  # 3,000 distinct run times: a day sketch of several kB
        p.run(conn, ws=1, at=T0 + timedelta(seconds=20 * i), runtime=1.0 + i * 0.05)
    p.refresh_all(conn, settings, T0 + timedelta(days=2))
    assert_all_match(conn)
    has_lz4 = conn.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                           " WHERE name = 'default_toast_compression'").fetchone()[0]
    method = conn.execute(
        "SELECT pg_column_compression(p95_runtime__counts) FROM"
        " analytics.execution_metrics_daily WHERE workspace_id = 1").fetchone()[0]
    assert method == ("lz4" if has_lz4 else "pglz")
    # the setting was the statement's only
    assert conn.execute("SHOW default_toast_compression").fetchone()[0] == "pglz"
