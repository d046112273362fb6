"""Recompute groups of one rollup grain: a time range, or a set of (workspace, bucket) keys.

Each call runs inside the caller's transaction and follows one rule: consume the pending
groups first, compute second. A pending group is visible only once the change that logged it
has committed, so the compute's later snapshot always includes that change. Replacing rows is
DELETE then INSERT: groups whose rows all vanished vanish too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from ..catalog import Grain, Rollup
from ..catalog.grains import SUPPORTED_PARAMS, as_utc, chunks
from ..catalog.model import Sum
from ..db.cluster import is_citus
from ..db.connect import one_row, scalar
from ..sql import native_query, query
from ..sql import rollup as rollup_sql
from ..sql.rollup import Scope


@dataclass
class Written:
    """Rows deleted and written, and coarser groups marked dirty, by some recomputes."""

    deleted: int = 0
    written: int = 0
    marked: int = 0

    def __iadd__(self, other: Written) -> Written:
        self.deleted += other.deleted
        self.written += other.written
        self.marked += other.marked
        return self


@cache
def statements(rollup: Rollup, grain: Grain, scope: Scope, native: bool, marks: bool = True,
               numeric_columns: frozenset[str] = frozenset()
               ) -> tuple[sql.Composed, sql.Composed]:
    return (
        rollup_sql.delete_target(rollup, grain, scope, marks=marks),
        rollup_sql.insert_target(rollup, grain, scope, native=native, marks=marks,
                                 numeric_columns=numeric_columns),
    )


def native_installed(conn: psycopg.Connection) -> bool:
    """Whether the database has the C functions of aggjobs_native (docs/native.md); asked
    on each recompute, in its transaction, so a DROP or CREATE EXTENSION takes effect at once."""
    installed: bool = scalar(conn, native_query("native_installed"))
    return installed


def numeric_columns(conn: psycopg.Connection, rollup: Rollup, grain: Grain) -> frozenset[str]:
    """The source's columns of type numeric that the grain sums from raw rows (with the C
    functions, by numeric_sum: sql/rollup.py, raw_sum); asked on each recompute, as
    native_installed, so that an ALTER TABLE of the source takes effect at once."""
    summed = {m.column for m in rollup.measures if isinstance(m, Sum)}
    if not summed or rollup.finer(grain) is not None:
        return frozenset()
    # the columns' base types as migrate's source check reads them (db/check.py)
    rows = conn.execute(query("source_columns"), {
        "schema": rollup.source.schema, "table": rollup.source.table}).fetchall()
    return frozenset(column for _, column, typname, *_ in rows
                     if column in summed and typname == "numeric")


def replace(conn: psycopg.Connection, rollup: Rollup, grain: Grain, scope: Scope,
            params: dict[str, object], *, marks: bool = True) -> Written:
    native = native_installed(conn)
    numeric = numeric_columns(conn, rollup, grain) if native else frozenset()
    delete, insert = statements(rollup, grain, scope, native, marks, numeric)
    deleted, marked_old = one_row(conn, delete, params)
    changes = plan_changes(raw=rollup.finer(grain) is None, native=native)
    with planner_settings(conn, changes | storage_changes(conn)):
        written, marked_new = one_row(conn, insert, params)
    return Written(deleted, written, marked_old + marked_new)


def plan_changes(*, raw: bool, native: bool) -> dict[str, str]:
    """Where the planner's default plan for a recompute is measured to be wrong.

    enable_indexscan off on raw rows: rows of an hour are spread over its pages in arrival
    order, not in index order, so an index scan fetches a page once per row (a million
    fetches for a million-run hour), a bitmap scan once per page. The planner sees the
    index's high correlation with time and picks the index scan, 1.5x slower on a 1M-run
    hour (docs/benchmarks.md).

    enable_sort off with the C functions, and on raw rows without them: their aggregates can
    be hashed (the portable quantile collects its values unordered and sorts each group's
    apart), but the planner has no statistics for a bucket expression (date_bin, a UTC date)
    and expects one group per input row, so it sorts the whole input instead (a 54 MB spill
    for a 1M-run hour, 0.6 s); there are a few thousand groups per bucket. (An ordered
    aggregate, the portable distinct count's, cannot be hashed: its rollup sorts either
    way.) enable_incremental_sort off with the C functions too: for a day from hourly rows,
    the planner otherwise reads the rollup table through its (workspace_id, hour) index, in
    workspace order, and sorts each workspace's rows by day; the rows are stored hour by
    hour, so it fetches a page per row (50,000 workspaces: 12.5 s against 8 s for the hashed
    day, on a shared machine).
    """
    changes = {}
    if raw:
        changes["enable_indexscan"] = "off"
    if native or raw:
        changes["enable_sort"] = "off"
    if native:
        changes["enable_incremental_sort"] = "off"
    return changes


def storage_changes(conn: psycopg.Connection) -> dict[str, str]:
    """lz4 for what a statement writes to TOAST (sketches, user sets, reports' JSON), where
    the server has it: pglz, the default, took a quarter of the execution-metrics daily step
    (5,000 workspaces: 1.2 s against 0.9 s with lz4, docs/benchmarks.md). Rows keep how
    they were compressed; reading either is the same."""
    return {"default_toast_compression": "lz4"} if scalar(conn, query("has_lz4")) else {}


@contextmanager
def planner_settings(conn: psycopg.Connection, changes: dict[str, str]) -> Iterator[None]:
    """Planner (and storage) settings for one statement, restored after it (on an error the
    (sub)transaction's rollback undoes them). They only steer plans and storage: the
    results never depend on them.

    None on Citus (issue 18, point 9): the statement is planned again on each shard, where
    the coordinator's settings do not reach (set_config() stays local). Made to reach them
    (SET LOCAL with citus.propagate_set_commands = 'local'), enable_sort and
    enable_indexscan off made each shard's scan of a user_activity hour 25 times slower on
    the test cluster (5.3 s against 0.22 s, docs/scaling.md): a shard holds a 32nd of the
    rows these settings were measured on, and its default plan is the right one."""
    if not changes or is_citus(conn):
        yield
        return
    before = {name: scalar(conn, query("current_setting"), (name,))
              for name in changes}
    for name, value in changes.items():
        conn.execute(set_local(name, value))
    yield
    for name, value in before.items():
        conn.execute(set_local(name, value))


def set_local(name: str, value: str) -> sql.Composed:
    """SET LOCAL name TO 'value', for the rest of the transaction."""
    return sql.SQL("SET LOCAL {} TO {}").format(
        sql.SQL(".").join(map(sql.Identifier, name.split("."))), sql.Literal(value))


def recompute_range(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                    lo: datetime, hi: datetime, *, marks: bool = True) -> Written:
    """Recompute every group with a bucket in [lo, hi) (both aligned to the grain).
    `marks=False`: the caller marks the coarser groups (mark_coarser_range)."""
    params = {"rollup": rollup.name, "grain": grain.value, "lo": lo, "hi": hi}
    # Sized before the first write: on Citus, a read of a distributed table after a write
    # to a reference table in the same transaction (the sizing after drop_pending_range)
    # fails, "cannot switch local execution status" (issue 18, point 1).
    ranges = statement_ranges(conn, rollup, grain, lo, hi)
    conn.execute(query("drop_pending_range"), params)
    conn.execute(query("clear_quarantine"), params)  # it recomputes fine now
    written = Written()
    for a, b in ranges:
        written += replace(conn, rollup, grain, Scope.RANGE, {"lo": a, "hi": b}, marks=marks)
    return written


def mark_coarser_range(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                       lo: datetime, hi: datetime) -> int:
    """Mark dirty the coarser groups holding the grain's rows in [lo, hi), if materialized."""
    row = one_row(conn, rollup_sql.mark_coarser_range(rollup, grain), {"lo": lo, "hi": hi})
    marked: int = row[1]  # (rows, groups marked)
    return marked


# Memory a raw row takes in a recompute's aggregation (its value collected for the p95 and
# the group's share of the hash table), measured: six 1M-run hours in one statement spilled
# 294 MB past a 64 MB work_mem (docs/benchmarks.md).
BYTES_PER_RAW_ROW = 64


def statement_ranges(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                     lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
    """[lo, hi) cut into ranges of whole buckets, each as many raw rows as the session's
    work_mem aggregates without spilling to disk (the planner's estimate of the rows).

    One statement per bucket would cost its round trips and its plan a thousand times over
    in a small deployment's catch-up of weeks of near-empty hours; one statement for six
    million-run hours spills and takes 12 times as long. Merged grains read rollup rows,
    a few per group: one statement.
    """
    buckets = len(grain.buckets(lo, hi))
    if buckets == 1 or rollup.finer(grain) is not None:
        return [(lo, hi)]
    rows = input_rows(conn, rollup, grain, lo, hi)
    budget = scalar(conn, query("work_mem_bytes")) // BYTES_PER_RAW_ROW
    pieces = min(buckets, math.ceil(rows / max(budget, 1)))
    if pieces <= 1:
        return [(lo, hi)]
    return chunks(lo, hi, math.ceil(buckets / pieces) * grain.step)


def input_rows(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
               lo: datetime, hi: datetime) -> float:
    """The raw rows in [lo, hi): the planner's estimate (nothing read), or a count where
    the plan gives none worth having."""
    plan = scalar(conn, rollup_sql.input_rows_estimate(rollup, grain), {"lo": lo, "hi": hi})
    rows = estimated_rows(plan)
    if rows is None:
        counted: int = scalar(conn, rollup_sql.input_rows_count(rollup, grain),
                              {"lo": lo, "hi": hi})
        return counted
    return rows


def estimated_rows(plan: list[dict[str, Any]]) -> float | None:
    """The row estimate of an EXPLAIN (FORMAT JSON), None when it is not an estimate: Citus
    plans a distributed scan as a Custom Scan whose rows are a constant, 100000 whatever
    the range (issue 18, point 9), and counting is then the only measure (pushed down: each
    shard counts its rows of the range, by the time index)."""
    top = plan[0]["Plan"]
    if top.get("Node Type") == "Custom Scan":
        return None
    rows: float = top["Plan Rows"]
    return rows


def recompute_keys(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                   keys: list[tuple[datetime, int]]) -> Written:
    """Recompute the listed (bucket, workspace) groups only."""
    if not keys:
        return Written()
    params = {"bk": [b for b, _ in keys], "ws": [w for _, w in keys]}
    return replace(conn, rollup, grain, Scope.KEYS, params)


def recompute_bucket(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                     bucket: datetime, workspaces: list[int]) -> Written:
    """Recompute the listed workspaces' groups of one bucket."""
    params = {"lo": bucket, "hi": bucket + grain.step, "ws": workspaces}
    return replace(conn, rollup, grain, Scope.BUCKET, params)


@dataclass
class DirtyBatch:
    groups: int = 0
    coalesced_buckets: int = 0  # recomputed whole
    scanned_buckets: int = 0  # their dirty groups recomputed together


def take_and_recompute(conn: psycopg.Connection, rollup: Rollup, grain: Grain, *,
                       watermark: datetime, limit: int, coalesce_fraction: float,
                       scan_groups: int) -> tuple[DirtyBatch, Written]:
    """One transaction's worth of pending groups behind the watermark, recomputed.

    A bucket where at least `coalesce_fraction` of the groups are dirty is recomputed whole
    (one range scan beats thousands of key lookups). One with `scan_groups` dirty groups or
    more has them recomputed by a statement of its own, whose one scan collects their rows
    visiting each page once; the rest go into one statement for all buckets, group by group
    (a statement per bucket would cost more than it saves for a few groups).
    """
    rows = conn.execute(
        query("take_pending"),
        {"rollup": rollup.name, "grain": grain.value, "watermark": watermark, "limit": limit,
         **SUPPORTED_PARAMS},
    ).fetchall()
    batch, written = DirtyBatch(groups=len(rows)), Written()
    if not rows:
        return batch, written
    by_bucket: dict[datetime, list[int]] = defaultdict(list)
    for bucket, ws in rows:
        by_bucket[as_utc(bucket)].append(ws)  # UTC: bucket + step must not be wall-clock
    sizes = {
        as_utc(bucket): n
        for bucket, n in conn.execute(
            rollup_sql.groups_per_bucket(rollup, grain), {"bk": list(by_bucket)}
        )
    }
    # A quarantined bucket was skipped whole (a new one has no rows at all): a change in it,
    # such as the deletion of the rows that broke it, recomputes it whole.
    broken = {as_utc(b) for (b,) in conn.execute(query("quarantine_among"), {
        "rollup": rollup.name, "grain": grain.value, "bk": list(by_bucket)})}
    keys = []
    for bucket, members in sorted(by_bucket.items()):
        if bucket in broken or (
                len(members) > 1 and len(members) >= coalesce_fraction * sizes.get(bucket, 0)):
            batch.coalesced_buckets += 1
            written += recompute_range(conn, rollup, grain, bucket, bucket + grain.step)
        elif len(members) >= scan_groups:
            batch.scanned_buckets += 1
            written += recompute_bucket(conn, rollup, grain, bucket, members)
        else:
            keys += [(bucket, ws) for ws in members]
    written += recompute_keys(conn, rollup, grain, keys)
    return batch, written
