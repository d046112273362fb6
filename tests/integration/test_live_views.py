"""The live views (docs/rollups.md, "Live reads"): at the instant of the query, each
`analytics.<rollup>_<grain>_live` equals what a refresh at that instant would store, plus the
open bucket computed from the rows so far; a reader never makes a writer or a refresh wait.

The oracle is the engine itself: the views are read, then every rollup is refreshed as of now
(nothing is written in between), and the tables must then hold exactly what the views showed.
The random histories are those of test_properties (late, updated, deleted and moved rows,
partial refreshes), with the refreshes' clock kept in the past so that no row is ahead of now.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg import sql

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain, Rollup
from aggjobs.settings import Settings
from aggjobs.sql import live
from aggjobs.sql.rollup import table_ident, target_columns
from tests import platform as p
from tests.integration.test_properties import OP, SETTINGS, ZONES, played
from tests.reference import COLUMNS, close, expected

pytestmark = pytest.mark.slow

# The histories of test_properties, their refreshes at most 5 hours apart (the clock stays
# within T0 + 9 days: before today, so every row is behind the open hour).
LIVE_OP = OP.map(lambda op: ("refresh", op[1] % 300, *op[2:]) if op[0] == "refresh" else op)
VIEWS = [(r, g) for r in BUILTIN_ROLLUPS for g in r.grains]


def rows_of(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
            relation: sql.Composable) -> dict[tuple, tuple]:
    """(dimensions, bucket) -> every other column but updated_at."""
    cols = [c.name for c in target_columns(rollup, grain) if c.name != "updated_at"]
    n = len(rollup.dimensions) + 1
    got = conn.execute(sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), relation)).fetchall()
    keyed = {row[:n]: row[n:] for row in got}
    assert len(keyed) == len(got), "a group twice"
    return keyed


def view_rows(conn: psycopg.Connection, rollup: Rollup, grain: Grain) -> dict[tuple, tuple]:
    return rows_of(conn, rollup, grain, live.view_ident(rollup, grain))


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):  # sums of floats in another order
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9)
    return a == b


def assert_same(have: dict, want: dict, what: str) -> None:
    assert have.keys() == want.keys(), (what, sorted(have.keys() ^ want.keys())[:5])
    for key, row in want.items():
        assert all(same(a, b) for a, b in zip(have[key], row, strict=True)), \
            (what, key, have[key], row)


def snapshot(conn: psycopg.Connection) -> dict:
    return {(r.name, g): view_rows(conn, r, g) for r, g in VIEWS}


def assert_views_equal_tables(conn: psycopg.Connection, views: dict) -> None:
    for r, g in VIEWS:
        assert_same(views[(r.name, g)], rows_of(conn, r, g, table_ident(r, g)),
                    f"{live.view_name(r, g)} before the refresh, against the table after it")


def refresh_now(conn: psycopg.Connection, settings: Settings) -> None:
    p.refresh_all(conn, settings, datetime.now(UTC))


@given(ops=st.lists(LIVE_OP, min_size=1, max_size=30), engine=SETTINGS,
       zone=st.sampled_from(ZONES))
@hsettings(max_examples=15, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_live_views_equal_a_refresh_at_the_instant_of_the_query(
        server_url: str, template_db: str, ops: list[tuple], engine: dict, zone: str) -> None:
    with played(server_url, template_db, ops, engine, zone) as world:
        conn = world.conn
        pending = conn.execute("SELECT (SELECT count(*) FROM aggjobs.invalidation_log)"
                               " + (SELECT count(*) FROM aggjobs.pending_groups)").fetchone()[0]
        note(f"changes not refreshed: {pending}")
        views = snapshot(conn)
        refresh_now(conn, world.settings)
        assert_views_equal_tables(conn, views)
        assert_views_equal_tables(conn, snapshot(conn))  # and once refreshed, the tables


T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, weeks before today


def three_days(conn: psycopg.Connection) -> None:
    p.seed_sources(conn, T0, rows=3 * 24 * 12, every=timedelta(minutes=5))


def test_before_any_refresh_every_bucket_comes_from_the_raw_rows(conn, settings) -> None:
    three_days(conn)
    views = snapshot(conn)
    assert all(views.values())
    refresh_now(conn, settings)
    assert_views_equal_tables(conn, views)


def test_late_updated_deleted_and_moved_rows_show_before_their_refresh(conn, settings) -> None:
    three_days(conn)
    refresh_now(conn, settings)
    before = snapshot(conn)
    conn.execute("UPDATE agent_runs SET runtime_seconds = runtime_seconds * 7 WHERE id % 5 = 0")
    conn.execute("UPDATE agent_runs SET workspace_id = workspace_id + 1 WHERE id % 11 = 0")
    conn.execute("UPDATE user_events SET occurred_at = occurred_at - interval '30 hours'"
                 " WHERE id % 7 = 0")
    conn.execute("DELETE FROM credit_transactions WHERE id % 3 = 0")
    assert conn.execute("SELECT count(*) FROM aggjobs.invalidation_log").fetchone()[0] > 0
    views = snapshot(conn)
    assert views != before
    refresh_now(conn, settings)
    assert_views_equal_tables(conn, views)
    # fanned out but not recomputed: the changes wait in pending_groups
    conn.execute("UPDATE agent_runs SET runtime_seconds = 1 WHERE id % 13 = 0")
    p.refresh_all(conn, settings, datetime.now(UTC), grains=[Grain.WEEK])
    assert conn.execute("SELECT count(*) FROM aggjobs.pending_groups").fetchone()[0] > 0
    views = snapshot(conn)
    refresh_now(conn, settings)
    assert_views_equal_tables(conn, views)


def test_the_open_buckets_come_from_the_rows_so_far(conn) -> None:
    """Rows of the current hour, day and week, nothing refreshed: the views hold them, equal
    to the recomputation from the raw rows (p95 within 1% at the day and the week); a row of
    a later hour is in no bucket yet."""
    now = datetime.now(UTC)
    for i in range(40):
        at = now - timedelta(minutes=i % 50, seconds=i)
        p.run(conn, ws=1 + i % 3, at=at, runtime=1.0 + i, user=1 + i % 4)
        p.event(conn, ws=1 + i % 2, user=i % 5, at=at)
        p.credit(conn, ws=1, kind="usage", amount="0.5", at=at)
    for rollup, grain in VIEWS:
        want = expected(conn, rollup.name, grain, now + timedelta(days=8))
        assert want, (rollup.name, grain)
        names = [c.name for c in target_columns(rollup, grain)
                 if c.name != "updated_at"][len(rollup.dimensions) + 1:]
        have = {(k[0], k[-1], *k[1:-1]): tuple(v[names.index(n)] for n in COLUMNS[rollup.name])
                for k, v in view_rows(conn, rollup, grain).items()}
        assert have.keys() == want.keys(), (rollup.name, grain)
        rel = 0.01 if grain is not Grain.HOUR else 1e-9
        for key, values in want.items():
            assert all(close(a, b, rel) for a, b in zip(have[key], values, strict=True)), \
                (rollup.name, grain, key, have[key], values)
    views = snapshot(conn)
    p.run(conn, ws=1, at=Grain.HOUR.floor(now) + timedelta(hours=3), runtime=9.0)
    assert snapshot(conn) == views


def test_a_read_during_a_refresh_in_another_session_sees_one_state(conn, settings) -> None:
    three_days(conn)
    p.refresh_all(conn, settings, T0 + timedelta(hours=20))
    conn.execute("UPDATE agent_runs SET runtime_seconds = 2 WHERE id % 4 = 0")
    one_hour_a_time = settings.model_copy(update={"hours_per_transaction": 1,
                                                  "dirty_groups_per_transaction": 5})
    reads: list[dict] = []

    def refresh_elsewhere() -> None:  # the data's hours, an hour a transaction
        with psycopg.connect(settings.database_url, autocommit=True) as other:
            p.refresh_all(other, one_hour_a_time, T0 + timedelta(days=3, hours=1))

    refresher = threading.Thread(target=refresh_elsewhere)
    refresher.start()
    while refresher.is_alive() or not reads:
        reads.append(snapshot(conn))
    refresher.join()
    assert len(reads) > 1
    refresh_now(conn, settings)  # the days and the week complete by now
    for views in reads:
        assert_views_equal_tables(conn, views)


def waiting_on_locks(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()").fetchone()[0]


def test_a_live_read_never_makes_a_writer_or_a_refresh_wait(conn, settings, db_url) -> None:
    three_days(conn)
    refresh_now(conn, settings)
    with psycopg.connect(db_url) as reader:  # a transaction open across the writes
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for r, g in VIEWS:
            reader.execute(sql.SQL("SELECT count(*) FROM {}").format(live.view_ident(r, g)))
        with psycopg.connect(db_url, autocommit=True) as writer:
            writer.execute("SET lock_timeout = '2s'")
            started = time.monotonic()
            p.run(writer, ws=1, at=datetime.now(UTC), runtime=3.0)  # the open hour
            writer.execute("UPDATE agent_runs SET runtime_seconds = 4 WHERE id % 9 = 0")  # late
            writer.execute("DELETE FROM user_events WHERE id % 9 = 0")
            assert waiting_on_locks(conn) == 0
            p.refresh_all(writer, settings.model_copy(update={"lock_timeout_ms": 2000}),
                          datetime.now(UTC))
            assert time.monotonic() - started < 30
        reader.rollback()
    assert waiting_on_locks(conn) == 0
