"""The demo loader against a real PostgreSQL: shape, ledger agreement and reproducibility.

Each test database is created fresh, migrated, and dropped at the end. The window crosses
the US daylight-saving switch (2024-03-10 07:00 UTC) and the sessions use non-UTC time
zones, so anything depending on the session TimeZone would show up.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from aggjobs.db.migrate import migrate
from aggjobs.demo import SEASON_MEAN, DemoResult, DemoSpec, load_demo

ADMIN_DSN = os.environ.get("AGGJOBS_DEMO_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Sunday 00:00 UTC to Tuesday 00:00 UTC: one weekend day, one weekday.
END = datetime(2024, 3, 12, tzinfo=UTC)
SPEC = DemoSpec(days=2, workspaces=10, runs_per_hour=300, seed=7, end=END)


@contextmanager
def fresh_database(timezone: str) -> Iterator[psycopg.Connection]:
    """A new, migrated database; yields an autocommit connection in `timezone`."""
    name = f"aggjobs_demo_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_DSN}: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
            with psycopg.connect(dsn, autocommit=True, options=f"-c TimeZone={timezone}") as conn:
                migrate(conn)
                yield conn
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[psycopg.Connection, DemoResult]]:
    with fresh_database("America/New_York") as conn:
        yield conn, load_demo(conn, SPEC)


def one(conn: psycopg.Connection, query: str, params: dict[str, Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


# Timestamps as epoch numbers so the checksum is independent of the session TimeZone.
CHECKSUMS = """
SELECT
  (SELECT md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s', id, workspace_id, user_id,
       agent_id, status, extract(epoch FROM started_at), extract(epoch FROM completed_at),
       runtime_seconds, credits_consumed), ',' ORDER BY id)) FROM public.agent_runs),
  (SELECT md5(string_agg(format('%s|%s|%s|%s|%s', id, workspace_id, user_id, event_type,
       extract(epoch FROM occurred_at)), ',' ORDER BY id)) FROM public.user_events),
  (SELECT md5(string_agg(format('%s|%s|%s|%s|%s|%s', id, workspace_id, user_id, kind, amount,
       extract(epoch FROM created_at)), ',' ORDER BY id)) FROM public.credit_transactions)
"""


def test_counts(loaded: tuple[psycopg.Connection, DemoResult]) -> None:
    conn, result = loaded
    assert (result.start, result.end) == (END - timedelta(days=2), END)
    # Sunday at 0.4x, Monday at 1x, the daily curve averaging 2x; over the weekly mean.
    expected = SPEC.runs_per_hour * 24 * (0.4 + 1.0) * 2 / SEASON_MEAN
    runs = one(conn, "SELECT count(*) FROM public.agent_runs")
    assert runs == result.runs
    assert 0.9 * expected < runs < 1.1 * expected
    events = one(conn, "SELECT count(*) FROM public.user_events")
    assert events == result.events
    assert 1.5 * runs < events < 3 * runs
    transactions = one(conn, "SELECT count(*) FROM public.credit_transactions")
    assert transactions == result.transactions
    assert runs < transactions < 1.2 * runs


def test_statuses(loaded: tuple[psycopg.Connection, DemoResult]) -> None:
    conn, _ = loaded
    failed = one(conn, "SELECT avg((status = 'failed')::int) FROM public.agent_runs")
    assert 0.05 < failed < 0.11
    completed = one(conn, "SELECT avg((status = 'completed')::int) FROM public.agent_runs")
    assert 0.85 < completed < 0.95
    # Running runs: only near the end, and nothing of theirs is known yet.
    running = conn.execute(
        "SELECT count(*), min(started_at), count(runtime_seconds), count(completed_at),"
        " count(credits_consumed) FROM public.agent_runs WHERE status = 'running'"
    ).fetchone()
    assert running is not None
    assert running[0] > 0
    assert running[1] >= END - timedelta(minutes=30)
    assert running[2:] == (0, 0, 0)
    # Finished runs are complete, finish before `end`, and their times agree.
    assert one(conn, """
        SELECT count(*) FROM public.agent_runs WHERE status <> 'running' AND (
            runtime_seconds IS NULL OR credits_consumed IS NULL OR completed_at >= %(end)s
            OR completed_at - started_at <> runtime_seconds * interval '1 second')
    """, {"end": END}) == 0


def test_times_within_window(loaded: tuple[psycopg.Connection, DemoResult]) -> None:
    conn, result = loaded
    params = {"start": result.start, "end": result.end}
    for table, column in [("agent_runs", "started_at"), ("user_events", "occurred_at"),
                          ("credit_transactions", "created_at")]:
        outside = one(conn, sql.SQL(
            "SELECT count(*) FROM {} WHERE NOT ({col} >= %(start)s AND {col} < %(end)s)"
        ).format(sql.Identifier("public", table), col=sql.Identifier(column)), params)
        assert outside == 0, table


def test_workspace_skew(loaded: tuple[psycopg.Connection, DemoResult]) -> None:
    conn, _ = loaded
    top, median = conn.execute("""
        SELECT max(n), percentile_cont(0.5) WITHIN GROUP (ORDER BY n)
        FROM (SELECT count(*) AS n FROM public.agent_runs GROUP BY workspace_id) AS w
    """).fetchone()  # type: ignore[misc]
    assert top > 5 * median
    # Bigger workspaces have more users.
    users = [r[0] for r in conn.execute(
        "SELECT count(DISTINCT user_id) FROM public.agent_runs GROUP BY workspace_id"
        " ORDER BY count(*) DESC")]
    assert users[0] > users[-1]


def test_daily_seasonality(loaded: tuple[psycopg.Connection, DemoResult]) -> None:
    conn, _ = loaded
    busiest, quietest = conn.execute("""
        SELECT max(n), min(n) FROM (
            SELECT count(*) AS n FROM public.agent_runs
            GROUP BY extract(hour FROM started_at AT TIME ZONE 'UTC')) AS h
    """).fetchone()  # type: ignore[misc]
    assert busiest > 1.5 * quietest


def test_ledger_agrees_with_runs(loaded: tuple[psycopg.Connection, DemoResult]) -> None:
    conn, _ = loaded
    usage, credits = conn.execute("""
        SELECT (SELECT sum(amount) FROM public.credit_transactions WHERE kind = 'usage'),
               (SELECT sum(credits_consumed) FROM public.agent_runs
                WHERE credits_consumed IS NOT NULL)
    """).fetchone()  # type: ignore[misc]
    assert usage == credits
    # Per run: a usage row with the same workspace, user, amount and completion time.
    unmatched = one(conn, """
        SELECT count(*) FROM (
            SELECT workspace_id, user_id, credits_consumed, completed_at
            FROM public.agent_runs WHERE credits_consumed > 0
            EXCEPT ALL
            SELECT workspace_id, user_id, amount, created_at
            FROM public.credit_transactions WHERE kind = 'usage'
        ) AS missing
    """)
    assert unmatched == 0
    kinds = dict(conn.execute(
        "SELECT kind, count(*) FROM public.credit_transactions GROUP BY kind").fetchall())
    assert set(kinds) <= {"usage", "grant", "refund", "adjustment"}
    assert kinds["grant"] == SPEC.workspaces * 2  # opening grant, then Monday 00:00 UTC
    assert kinds["refund"] > 0
    assert one(conn, "SELECT count(*) FROM public.credit_transactions"
                     " WHERE kind IN ('usage', 'refund', 'grant') AND amount <= 0") == 0


def test_late_runs_arrive_with_the_next_day(
        loaded: tuple[psycopg.Connection, DemoResult]) -> None:
    conn, result = loaded
    # Day one's runs were written by two transactions: their own, and day two's (late ones).
    per_xact = [r[0] for r in conn.execute("""
        SELECT count(*) FROM public.agent_runs WHERE started_at < %(day2)s
        GROUP BY xmin::text ORDER BY count(*) DESC
    """, {"day2": result.start + timedelta(days=1)})]
    assert len(per_xact) == 2
    assert 0 < per_xact[1] <= 0.02 * sum(per_xact)


def test_same_spec_same_data() -> None:
    # Another database and session TimeZone; compared with a fresh load of the same spec.
    checksums = []
    for timezone in ("Pacific/Chatham", "Asia/Kolkata"):
        with fresh_database(timezone) as conn:
            load_demo(conn, SPEC)
            checksums.append(conn.execute(CHECKSUMS).fetchone())
    assert checksums[0] == checksums[1]
    assert None not in checksums[0]  # type: ignore[operator]


def test_loads_on_top_of_existing_rows_with_progress() -> None:
    small = DemoSpec(days=2, workspaces=3, runs_per_hour=50, end=END)
    calls: list[tuple[int, int]] = []
    with fresh_database("UTC") as conn:
        first = load_demo(conn, small)
        second = load_demo(conn, DemoSpec(days=2, workspaces=3, runs_per_hour=50,
                                          end=END - timedelta(days=2)),
                           progress=lambda done, total: calls.append((done, total)))
        assert calls == [(1, 2), (2, 2)]
        for table, count in [("agent_runs", first.runs + second.runs),
                             ("user_events", first.events + second.events),
                             ("credit_transactions", first.transactions + second.transactions)]:
            n, ids = conn.execute(sql.SQL("SELECT count(*), count(DISTINCT id) FROM {}").format(
                sql.Identifier("public", table))).fetchone()  # type: ignore[misc]
            assert n == ids == count, table
        # No leftovers in the session.
        assert one(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'demo\\_%'"
                         " AND relpersistence = 't'") == 0


def test_rejects_naive_end() -> None:
    with fresh_database("UTC") as conn, pytest.raises(ValueError, match="timezone-aware"):
        load_demo(conn, DemoSpec(days=1, end=datetime(2024, 3, 12)))
