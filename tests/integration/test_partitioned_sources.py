"""Sources the platform owns as tables partitioned by day (docs/rollups.md, "Partitioned
sources"), created before `aggjobs migrate`: the indexes and tracking triggers reach every
partition, rows moved across partitions are tracked, the three rollups at every grain match
the raw rows, and retention drops whole old partitions (never one holding rows not rolled
up, never the default one), deletes the straddling partition's older rows and audits both.

Every test here runs on a database whose sources are partitioned (db_url is overridden).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS, BUILTIN_SOURCES
from aggjobs.engine.backfill import backfill
from aggjobs.engine.verify import verify_grain
from aggjobs.settings import Settings
from tests import platform as p
from tests.conftest import PARTITION_DAYS, PARTITIONS_FROM
from tests.integration.test_jobs import (
    KEEP_ROLLUPS,
    assert_hours_match_from,
    change_log,
    job,
    load,
    raw_ids,
    rollup_contents,
    steps_of,
)
from tests.reference import assert_matches

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday; partitions run from 2026-02-28 for 20 days
H, D = timedelta(hours=1), timedelta(days=1)
BEFORE_PARTITIONS = PARTITIONS_FROM - D + 20 * H  # rows here land in the default partition
TIME_COLUMN = {s.table: s.time_column for s in BUILTIN_SOURCES}


@pytest.fixture
def db_url(partitioned_db_url: str) -> str:
    return partitioned_db_url


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "retry_attempts": 3, "retry_base_s": 0.05, "lock_wait_s": 10.0,
        "lock_timeout_ms": 30_000, "retention_days": {}, "max_buckets_per_refresh": 1000})


def partition_of(conn: psycopg.Connection, table: str, row_id: int) -> str:
    return conn.execute(f"SELECT tableoid::regclass::text FROM public.{table} WHERE id = %s",
                        (row_id,)).fetchone()[0]


QUALIFIED = "(SELECT c.relnamespace::regnamespace || '.' || quote_ident(c.relname)" \
    " FROM pg_class AS c WHERE c.oid = {})"


def leaves(conn: psycopg.Connection, relation: str) -> set[str]:
    """Schema-qualified, as aggjobs.drop_partition_before names them."""
    return {r for (r,) in conn.execute(
        "SELECT " + QUALIFIED.format("t.relid") + " FROM pg_partition_tree(%s::regclass) AS t"
        " WHERE t.isleaf", (relation,))}


def partitions(conn: psycopg.Connection, table: str) -> set[str]:
    return {r for (r,) in conn.execute(
        "SELECT " + QUALIFIED.format("i.inhrelid") + " FROM pg_inherits AS i"
        " WHERE i.inhparent = %s::regclass", (f"public.{table}",))}


def day_partition(table: str, day: datetime) -> str:
    return p.partition_name(table, day)


def assert_all_match(conn: psycopg.Connection, below: datetime) -> int:
    groups = 0
    for r in BUILTIN_ROLLUPS:
        for g in r.grains:
            groups += assert_matches(conn, r.name, g, below)
    return groups


# -- migrate ----------------------------------------------------------------------------------
def test_migrate_keeps_partitioned_sources_and_reaches_every_partition(conn):
    for source in BUILTIN_SOURCES:
        table, t = source.table, source.time_column
        strategy = conn.execute(
            "SELECT pt.partstrat, a.attname FROM pg_partitioned_table AS pt"
            " JOIN pg_attribute AS a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]"
            " WHERE pt.partrelid = %s::regclass", (f"public.{table}",)).fetchone()
        assert strategy == ("r", t)  # migrate kept the platform's partitioned table
        assert len(partitions(conn, table)) == PARTITION_DAYS + 1
    # A partition the platform adds after migrate inherits the indexes and the triggers.
    late_day = PARTITIONS_FROM + PARTITION_DAYS * D
    p.add_daily_partitions(conn, late_day, 1)
    threshold = T0 + 5 * H
    for source in BUILTIN_SOURCES:
        conn.execute("SELECT aggjobs.move_tracking_threshold(%s, %s)", (source.name, threshold))
    p.add_daily_partitions(conn, late_day + D, 1)  # made after the threshold moved
    for source in BUILTIN_SOURCES:
        table, t = source.table, source.time_column
        all_leaves = leaves(conn, f"public.{table}")
        assert len(all_leaves) == PARTITION_DAYS + 3
        # The engine's two indexes, (time) and (workspace_id, time), are partitioned indexes
        # on the parent with one attached index per partition.
        for index, columns in ((f"{table}_{t}_idx", t),
                               (f"{table}_workspace_{t}_idx", f"workspace_id, {t}")):
            kind, definition = conn.execute(
                "SELECT c.relkind, pg_get_indexdef(c.oid) FROM pg_class AS c"
                " WHERE c.oid = %s::regclass", (f"public.{index}",)).fetchone()
            assert kind == "I" and definition.endswith(f"({columns})"), definition
            attached = conn.execute(
                "SELECT count(*) FROM pg_partition_tree(%s::regclass) WHERE isleaf",
                (f"public.{index}",)).fetchone()[0]
            assert attached == len(all_leaves)
        # Every partition carries the three row triggers with the parent's WHEN clause.
        defs = dict(conn.execute(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s::regclass"
            " AND tgname LIKE 'aggjobs_track_%%' AND tgtype & 1 = 1",  # row triggers
            (f"public.{table}",)).fetchall())
        assert set(defs) == {"aggjobs_track_insert", "aggjobs_track_update",
                             "aggjobs_track_delete"}
        assert "2026-03-02 05:00:00+00" in defs["aggjobs_track_insert"]
        for leaf in all_leaves:
            on_leaf = dict(conn.execute(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
                " WHERE tgrelid = %s::regclass AND tgname LIKE 'aggjobs_track_%%'",
                (leaf,)).fetchall())
            assert set(on_leaf) == set(defs), leaf
            for name, definition in on_leaf.items():
                # The parent's definition, but for the table's name and the row type cast
                # the clone spells out in `OLD IS DISTINCT FROM NEW`.
                assert definition.replace(f" ON {leaf} ", f" ON public.{table} ").replace(
                    f"(old.*)::{table}", "old.*").replace(f"(new.*)::{table}", "new.*") \
                    == defs[name], (leaf, name)
    # And they fire there: a late row behind the threshold is logged, one ahead is not.
    p.run(conn, ws=4, at=T0 + H + timedelta(minutes=3))
    p.run(conn, ws=5, at=late_day + D + timedelta(hours=2))  # the partition made last
    assert change_log(conn)[0] == [("agent_runs", 4, T0 + H)]


# -- refresh, backfill, verify ----------------------------------------------------------------
def test_rollups_on_partitioned_sources_match_the_raw_rows_after_moves_and_deletes(conn, fast):
    load(conn, BEFORE_PARTITIONS, 4, per_hour=2)  # the default partition
    load(conn, T0, 72, per_hour=2)  # three daily partitions
    where = {r for (r,) in conn.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM agent_runs")}
    assert where == {"agent_runs_default", "agent_runs_p20260302", "agent_runs_p20260303",
                     "agent_runs_p20260304"}
    as_of = T0 + 7 * D + 3 * H  # the week of T0 is complete
    assert job(fast, "weekly_rollup", as_of).status == "succeeded"
    assert all(wm is not None for wm in p.watermarks(conn).values())
    assert assert_all_match(conn, T0 + 7 * D) > 0

    # Late rows, in-place updates, moves across partitions (old to old, to and from the
    # default partition, to a day ahead of the watermark) and deletes.
    p.run(conn, ws=2, at=T0 + 5 * H + timedelta(minutes=1))
    p.event(conn, ws=3, user=42, at=T0 + D + 2 * H)
    p.credit(conn, ws=1, kind="refund", amount="7", at=T0 + 2 * D + 9 * H)
    ids = {t: sorted(raw_ids(conn)[t].items(), key=lambda kv: kv[1]) for t in TIME_COLUMN}
    moves = {  # table -> [(id, new time)]
        "agent_runs": [(ids["agent_runs"][10][0], T0 + 2 * D + 14 * H + timedelta(minutes=9)),
                       (ids["agent_runs"][0][0], T0 + 20 * H),  # default -> daily
                       (ids["agent_runs"][30][0], BEFORE_PARTITIONS + H),  # daily -> default
                       (ids["agent_runs"][50][0], T0 + 9 * D + 4 * H)],  # ahead of the watermark
        "user_events": [(ids["user_events"][12][0], T0 + 2 * D + 3 * H),
                        (ids["user_events"][100][0], BEFORE_PARTITIONS + 2 * H)],
        "credit_transactions": [(ids["credit_transactions"][20][0], T0 + D + 21 * H),
                                (ids["credit_transactions"][1][0], T0 + 5 * H)],
    }
    for table, changes in moves.items():
        t = TIME_COLUMN[table]
        for row_id, at in changes:
            before = partition_of(conn, table, row_id)
            conn.execute(f"UPDATE public.{table} SET {t} = %s, workspace_id = 3 WHERE id = %s",
                         (at, row_id))
            assert partition_of(conn, table, row_id) != before  # it did cross partitions
    conn.execute("UPDATE agent_runs SET status = 'failed', runtime_seconds = 99"
                 " WHERE id = %s", (ids["agent_runs"][70][0],))
    for table in TIME_COLUMN:
        conn.execute(f"DELETE FROM public.{table} WHERE id = ANY(%s)",
                     ([ids[table][i][0] for i in (3, 40, 120)],))
    assert len(change_log(conn)[0]) > 10

    assert job(fast, "weekly_rollup", as_of).status == "succeeded"

    assert assert_all_match(conn, T0 + 7 * D) > 0
    assert change_log(conn) == ([], [])
    for r in BUILTIN_ROLLUPS:
        for g in r.grains:
            report = verify_grain(conn, r, g, BEFORE_PARTITIONS, T0 + 7 * D)
            assert report.groups > 0 and report.mismatches == [], (r.name, g)
    # A backfill over partitioned sources gives the same rows.
    before = rollup_contents(conn)
    for r in BUILTIN_ROLLUPS:
        backfill(conn, r, BEFORE_PARTITIONS, T0 + 7 * D, settings=fast)
    assert rollup_contents(conn) == before


# -- the raw-row delete path ------------------------------------------------------------------
def test_delete_raw_before_deletes_only_older_rows_of_a_partitioned_source(conn):
    """A ctid names a row within one partition only: rows of newer partitions that share
    the ctids of the deleted ones stay."""
    load(conn, T0, 48, per_hour=2)  # two partitions with rows at the same ctids
    before = raw_ids(conn)["agent_runs"]
    cut = T0 + D + 12 * H
    conn.execute("SELECT aggjobs.move_tracking_threshold('agent_runs', %s)", (T0 + 30 * D,))
    assert conn.execute("SELECT aggjobs.delete_raw_before('agent_runs', %s, 30)",
                        (cut,)).fetchone()[0] == 30
    assert conn.execute("SELECT aggjobs.delete_raw_before('agent_runs', %s, 1000)",
                        (cut,)).fetchone()[0] == sum(1 for t in before.values() if t < cut) - 30
    assert raw_ids(conn)["agent_runs"] == {i: t for i, t in before.items() if t >= cut}
    assert change_log(conn) == ([], [])  # untracked


# -- retention --------------------------------------------------------------------------------
def audit_rows(conn: psycopg.Connection, action: str) -> list[tuple]:
    return conn.execute("SELECT target, outcome, params FROM aggjobs.audit_log"
                        " WHERE action = %s ORDER BY id", (action,)).fetchall()


def test_cleanup_drops_whole_old_partitions_and_deletes_the_straddling_rows(conn, fast):
    load(conn, BEFORE_PARTITIONS, 4, per_hour=1)  # the default partition
    load(conn, T0, 96, per_hour=1)
    assert job(fast, "hourly_rollup", T0 + 4 * D).status == "succeeded"
    before_raw, before_rollups = raw_ids(conn), rollup_contents(conn)
    cleaning = fast.model_copy(update={"retention_days": {"raw": 1, **KEEP_ROLLUPS}})
    cutoff = T0 + 2 * D + 12 * H

    result = job(cleaning, "cleanup_old_data", cutoff + D)

    assert result.status == "succeeded", result
    after_raw = raw_ids(conn)
    old_days = [PARTITIONS_FROM + i * D for i in range(4)]  # 02-28 to 03-03: wholly before
    straddling = day_partition("agent_runs", T0 + 2 * D)
    for table in TIME_COLUMN:
        step = steps_of(result)[f"cleanup.{table}"]
        gone = {i: t for i, t in before_raw[table].items() if t < cutoff}
        assert set(after_raw[table]) == set(before_raw[table]) - set(gone), table
        dropped = {f"public.{day_partition(table, d)}" for d in old_days}
        assert {d["partition"] for d in step["detail"]["partitions_dropped"]} == dropped
        assert not dropped & partitions(conn, table)
        assert {f"public.{table}_default", f"public.{straddling.replace('agent_runs', table)}"
                } <= partitions(conn, table)
        in_partitions = {d["partition"]: d["rows"] for d in step["detail"]["partitions_dropped"]}
        assert in_partitions == {
            f"public.{day_partition(table, d)}":
                sum(1 for t in before_raw[table].values() if d <= t < d + D) for d in old_days}
        by_rows = len(gone) - sum(in_partitions.values())
        assert by_rows == 4 + 12  # the default partition's rows and half the straddling day
        assert step["rows"] == len(gone) and step["detail"]["held_back"] is None
    # Audited: one row per dropped partition, one per table for the row deletes.
    drops = audit_rows(conn, "retention_drop_partition")
    assert len(drops) == 3 * len(old_days)
    for target, outcome, params in drops:
        rows = 24 if target.endswith(("0302", "0303")) else 0  # 02-28 and 03-01 were empty
        assert outcome == f"partition dropped: {rows} rows"
        assert params["limit"] == cutoff.isoformat() and params["to"] <= cutoff.isoformat()
    assert {t: o for t, o, _ in audit_rows(conn, "retention_delete")
            if t.startswith('"public"')} == {
        f'"public"."{t}"': "16 rows deleted" for t in TIME_COLUMN}
    # Nothing tracked, no rollup row changed, and the rest is rolled up as usual.
    assert change_log(conn) == ([], [])
    assert rollup_contents(conn) == before_rollups
    assert job(fast, "hourly_rollup", T0 + 4 * D + 5 * H).status == "succeeded"
    for r in BUILTIN_ROLLUPS:
        assert_hours_match_from(conn, r.name, cutoff, T0 + 4 * D + 5 * H)


def test_cleanup_never_drops_a_partition_holding_rows_not_rolled_up(conn, fast):
    load(conn, T0, 72, per_hour=1)
    held = T0 + 30 * H
    assert job(fast, "hourly_rollup", held).status == "succeeded"  # 03-03 06:00
    late = T0 + 10 * H + timedelta(minutes=40)
    late_id = p.run(conn, ws=2, at=late)  # pending in the partition of 03-02
    before = raw_ids(conn)
    cleaning = fast.model_copy(update={"retention_days": {"raw": 1, **KEEP_ROLLUPS}})

    result = job(cleaning, "cleanup_old_data", T0 + 30 * D)

    assert result.status == "succeeded", result
    limits = {"agent_runs": T0 + 10 * H, "user_events": held, "credit_transactions": held}
    for table, limit in limits.items():
        step = steps_of(result)[f"cleanup.{table}"]
        assert set(raw_ids(conn)[table]) == {i for i, t in before[table].items() if t >= limit}
        dropped = {d["partition"] for d in step["detail"].get("partitions_dropped", [])}
        whole = {f"public.{day_partition(table, PARTITIONS_FROM + i * D)}"
                 for i in range(PARTITION_DAYS) if PARTITIONS_FROM + (i + 1) * D <= limit}
        assert dropped == whole and whole, table
        # The partition holding the limit, and every later one, is still there.
        day = datetime(limit.year, limit.month, limit.day, tzinfo=UTC)
        assert f"public.{day_partition(table, day)}" in partitions(conn, table)
        assert step["detail"]["held_back"]
    assert f"public.{day_partition('agent_runs', T0)}" in partitions(conn, "agent_runs")
    assert late_id in raw_ids(conn)["agent_runs"]
    # The late row's hour is recomputed in full by the next run.
    assert job(fast, "hourly_rollup", T0 + 72 * H).status == "succeeded"
    assert_hours_match_from(conn, "execution_metrics", T0 + 10 * H, T0 + 72 * H)


@pytest.fixture
def reading_session(db_url: str) -> Iterator[psycopg.Connection]:
    """A platform session in a long transaction that has read user_events."""
    with psycopg.connect(db_url, application_name="platform:report") as c:
        c.execute("SELECT count(*) FROM public.user_events")
        yield c


def test_a_partition_the_platform_holds_is_left_for_the_next_run(conn, fast, reading_session):
    load(conn, T0, 48, per_hour=1)
    assert job(fast, "hourly_rollup", T0 + 2 * D).status == "succeeded"
    cleaning = fast.model_copy(update={"retention_days": {"raw": 1, **KEEP_ROLLUPS},
                                       "trigger_lock_timeout_ms": 200})
    cutoff = T0 + D + 12 * H
    before = raw_ids(conn)

    started = time.monotonic()
    result = job(cleaning, "cleanup_old_data", cutoff + D)

    assert time.monotonic() - started < 10
    assert result.status == "succeeded", result
    step = steps_of(result)["cleanup.user_events"]
    assert "partitions_dropped" not in step["detail"] and step["rows"] == 0
    assert "not locked within 200 ms" in step["detail"]["held_back"]
    assert raw_ids(conn)["user_events"] == before["user_events"]  # not emptied row by row
    assert len(partitions(conn, "user_events")) == PARTITION_DAYS + 1
    assert not [t for t, _, _ in audit_rows(conn, "retention_drop_partition")
                if "user_events" in t]
    # The other sources were not held.
    assert len(steps_of(result)["cleanup.agent_runs"]["detail"]["partitions_dropped"]) == 3
    # Once the platform's transaction ends, the next run drops them.
    reading_session.rollback()
    result = job(cleaning, "cleanup_old_data", cutoff + D)
    step = steps_of(result)["cleanup.user_events"]
    assert len(step["detail"]["partitions_dropped"]) == 3
    assert set(raw_ids(conn)["user_events"]) == {
        i for i, t in before["user_events"].items() if t >= cutoff}
