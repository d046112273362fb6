"""Retention (docs/contract.md#retention): raw rows, rollup rows and job history past their age.

Never loses what is still needed: a raw row is deleted only once every rollup on its source
has materialized its hour and no change there is pending; a rollup row only once the coarser
grain built from it has done the same. Before deleting, the grain that reads the deleted rows
gets a retention horizon: changes arriving later behind it are dropped rather than
recomputing a bucket from partial inputs. Deletes run in bounded batches, one transaction
each, are not change-tracked (they change no bucket that is kept) and are audited. A source
partitioned by range of its time column first loses its partitions that lie wholly before
the limit, each detached and dropped in one short transaction (docs/rollups.md,
"Partitioned sources"); the rest goes row by row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TypedDict

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..audit import local_source
from ..catalog import Grain, Rollup, Source, rollups_on
from ..catalog.grains import SUPPORTED_PARAMS
from ..db import definitions
from ..db.connect import scalar
from ..engine import state
from ..monitor import liveness
from ..sql import query
from ..sql.rollup import table_ident
from .model import Step, StepContext, StepResult

ACTOR = "cleanup_old_data"

# One partition dropped whole, as the step's detail lists it.
DroppedPartition = TypedDict(
    "DroppedPartition", {"partition": str, "from": str | None, "to": str, "rows": int})


def raw_step(source: Source) -> Step:
    def run(ctx: StepContext) -> StepResult:
        days = ctx.settings.retention("raw")
        if not days:
            return StepResult.skipped("raw rows are kept forever")
        cutoff = Grain.HOUR.floor(ctx.as_of - timedelta(days=days))
        state.fan_out(ctx.conn, source)  # logged changes count as pending below
        readers = [(r, Grain.HOUR) for r in (*rollups_on(source),
                                             *definitions.building_on(ctx.conn, source.name))]
        limit, reason = protect(ctx, readers, cutoff)
        table = sql.Identifier(source.schema, source.table)
        dropped, limit, reason = drop_partitions(ctx, source, limit, cutoff, reason)
        result = delete_raw_before(ctx, source, table, limit, cutoff, reason)
        if dropped:  # succeeded, if skipping the row deletes only
            return StepResult(rows=result.rows + sum(d["rows"] for d in dropped),
                              detail={**result.detail, "partitions_dropped": dropped})
        return result

    return Step(f"cleanup.{source.name}", run)


def rollup_step(rollup: Rollup, grain: Grain) -> Step:
    kind = {Grain.HOUR: "hourly", Grain.DAY: "daily", Grain.WEEK: "weekly"}[grain]

    def run(ctx: StepContext) -> StepResult:
        days = ctx.settings.retention(kind)
        if not days:
            return StepResult.skipped(f"{kind} rollups are kept forever")
        live = definitions.versions(ctx.conn, rollup).live  # a rebuild's tables wait
        if grain not in live.grains:
            return StepResult.skipped(f"no live {kind} table until the rebuild of a changed "
                                      "definition is swapped in")
        coarser = live.coarser(grain)
        # Whole buckets of the grain built from this one, so none is left half-deleted.
        cutoff = (coarser or grain).floor(ctx.as_of - timedelta(days=days))
        readers = [(live, grain)] + ([(live, coarser)] if coarser else [])
        limit, reason = protect(ctx, readers, cutoff,
                                horizon_for=[(live, coarser)] if coarser else None)
        column = sql.Identifier(grain.column)
        bound = (sql.SQL("%(limit)s") if grain is Grain.HOUR
                 else sql.SQL("(%(limit)s::timestamptz AT TIME ZONE 'UTC')::date"))
        where = sql.SQL("{} < {}").format(column, bound)
        # (workspace, bucket): NOT NULL, its distribution column first on Citus; a batch takes
        # whole groups (an agent's NULL would never match a key with it).
        key = [live.source.key_column, grain.column]
        return delete_before(ctx, table_ident(live, grain), key, where, limit, cutoff, reason)

    return Step(f"cleanup.{rollup.name}.{grain.value}", run)


def retired_step() -> Step:
    """The tables of replaced or removed versions, dropped once AGGJOBS_RETIRED_GRACE_DAYS
    have passed (aggjobs.drop_retired_tables: the worker owns none of them)."""
    def run(ctx: StepContext) -> StepResult:
        grace_s = ctx.settings.retired_grace_days * 86400
        with ctx.conn.transaction():
            dropped = definitions.drop_retired_tables(ctx.conn, grace_s=grace_s)
        return StepResult(rows=len(dropped), detail={"dropped": dropped})

    return Step("cleanup.retired_tables", run)


def heartbeats_step() -> Step:
    """The heartbeat rows of workers and schedulers gone for over a day (monitor.liveness):
    a restarted beat, or a worker on a new host, has a new name."""
    def run(ctx: StepContext) -> StepResult:
        cutoff = ctx.as_of - timedelta(seconds=liveness.KEEP_S)
        where = sql.SQL("coalesce(stopped_at, seen_at) < %(limit)s")
        table = sql.Identifier("aggjobs", "heartbeats")
        return delete_before(ctx, table, ("kind", "name"), where, cutoff, cutoff, None)

    return Step("cleanup.heartbeats", run)


def job_history_step() -> Step:
    def run(ctx: StepContext) -> StepResult:
        days = ctx.settings.retention("job_runs")
        if not days:
            return StepResult.skipped("job history is kept forever")
        cutoff = ctx.as_of - timedelta(days=days)
        where = sql.SQL("started_at < %(limit)s AND status <> 'running'")
        table = sql.Identifier("aggjobs", "job_runs")
        return delete_before(ctx, table, ("id",), where, cutoff, cutoff, None)

    return Step("cleanup.job_runs", run)


def protect(ctx: StepContext, readers: list[tuple[Rollup, Grain]], cutoff: datetime,
            horizon_for: list[tuple[Rollup, Grain]] | None = None,
            ) -> tuple[datetime | None, str | None]:
    """How far deleting may go: `cutoff`, lowered to what every reader has materialized
    and has no pending change before (None: not at all). Sets the horizon of `horizon_for`
    (default: the readers) to that limit, under the rollups' locks, so that no recompute of
    the rows about to go is in flight."""
    conn, limit, reason = ctx.conn, cutoff, None
    with rollup_locks(conn, {r for r, _ in readers}, ctx.settings.lock_wait_s), \
            conn.transaction():
        for rollup, grain in readers:
            wm = state.watermarks(conn, rollup).get(grain)
            if wm is None:
                return None, f"{rollup.name} {grain.value}: nothing materialized yet"
            pending = scalar(conn, query("oldest_pending"), {
                "rollup": rollup.name, "grain": grain.value, **SUPPORTED_PARAMS})
            for bound, why in ((wm, "materialized only up to"), (pending, "changes pending at")):
                if bound is not None and bound < limit:
                    limit, reason = bound, f"{rollup.name} {grain.value}: {why} {bound}"
        for rollup, grain in horizon_for or readers:
            conn.execute(query("set_horizon"),
                         {"rollup": rollup.name, "grain": grain.value, "horizon": limit})
    return limit, reason


@contextlib.contextmanager
def rollup_locks(conn: psycopg.Connection, rollups: set[Rollup], wait_s: float
                 ) -> Iterator[None]:
    """All the rollups' locks, taken in name order (two cleanups cannot deadlock)."""
    with contextlib.ExitStack() as stack:
        for rollup in sorted(rollups, key=lambda r: r.name):
            stack.enter_context(state.rollup_lock(conn, rollup, wait_s=wait_s))
        yield


def delete_before(ctx: StepContext, table: sql.Composable, key: Sequence[str],
                  where: sql.Composable, limit: datetime | None, cutoff: datetime,
                  reason: str | None) -> StepResult:
    """Delete the rows matching `where` (bound to `limit`) in batches, audited."""
    batch = batch_delete(table, key, where)

    def one_batch(n: int) -> int:
        return ctx.conn.execute(batch, {"limit": limit, "n": n}).rowcount

    return batched(ctx, table, one_batch, limit, cutoff, reason)


def batch_delete(table: sql.Composable, key: Sequence[str], where: sql.Composable
                 ) -> sql.Composed:
    """DELETE of the rows named by %(n)s keys picked among the rows matching `where` (a key
    may name several rows: `where` matches them all, being on the key's columns); not by
    ctid: a ctid names a row of one shard, and Citus refuses a distributed DELETE whose
    ctids come from a subquery it plans apart ("Recursively planned distributed
    modifications with ctid on where clause are not supported", issue 18, point 5). The
    rollups' keys start with workspace_id, their distribution column."""
    cols = sql.SQL(", ").join(map(sql.Identifier, key))
    return sql.SQL(
        "DELETE FROM {t} WHERE ({k}) IN (SELECT {k} FROM {t} WHERE {w} LIMIT %(n)s)"
    ).format(t=table, k=cols, w=where)


def delete_raw_before(ctx: StepContext, source: Source, table: sql.Composable,
                      limit: datetime | None, cutoff: datetime, reason: str | None
                      ) -> StepResult:
    """Delete raw rows before `limit` in batches, audited, through the one path the worker
    role has for it: aggjobs.delete_raw_before (SECURITY DEFINER, migration 0005), which
    deletes untracked (aggjobs.retention on) from the known source tables only."""

    def one_batch(n: int) -> int:
        deleted: int = scalar(ctx.conn, query("delete_raw_before"),
                              (source.name, limit, n))
        return deleted

    return batched(ctx, table, one_batch, limit, cutoff, reason)


def drop_partitions(ctx: StepContext, source: Source, limit: datetime | None,
                    cutoff: datetime, reason: str | None
                    ) -> tuple[list[DroppedPartition], datetime | None, str | None]:
    """Drop the source's partitions lying wholly before `limit`, oldest first, each detached
    and dropped in its own short transaction with its audit row, through the one path the
    worker role has for it: aggjobs.drop_partition_before (SECURITY DEFINER, migration 0008;
    it returns nothing for a source not partitioned by range of its time column). A partition
    whose lock is not had within AGGJOBS_TRIGGER_LOCK_TIMEOUT_MS (the platform's sessions
    hold the table) is left to the next run, and the row deletes stop at its start rather
    than empty it row by row. Returns the partitions dropped and the limit and reason left
    for the row deletes."""
    dropped: list[DroppedPartition] = []
    if limit is None:
        return dropped, limit, reason
    wait_ms = ctx.settings.trigger_lock_timeout_ms
    while True:
        with ctx.conn.transaction():
            row = ctx.conn.execute(
                query("drop_partition_before"),
                (source.name, limit, wait_ms)).fetchone()
            if row is None:
                break
            name, start, end, rows, done = row
            if not done:  # the row deletes stop at its start (None: MINVALUE, no older row)
                limit, reason = start, (f"partition {name}: not locked within {wait_ms} ms"
                                        " (the platform's sessions hold the table); dropped"
                                        " by a later run")
                break
            part: DroppedPartition = {"partition": name, "from": start and start.isoformat(),
                                      "to": end.isoformat(), "rows": rows}
            ctx.conn.execute(query("audit"), {
                "actor": ACTOR, "action": "retention_drop_partition", "target": name,
                "params": Jsonb({"source": source.name, "cutoff": cutoff.isoformat(),
                                 "limit": limit.isoformat(), "held_back": reason,
                                 "from": part["from"], "to": part["to"]}),
                "outcome": f"partition dropped: {rows} rows",
                "source": ctx.source or local_source("worker"),
            })
        dropped.append(part)
    return dropped, limit, reason


def batched(ctx: StepContext, table: sql.Composable, one_batch: Callable[[int], int],
            limit: datetime | None, cutoff: datetime, reason: str | None) -> StepResult:
    """Run `one_batch` (one transaction each) until a batch comes back short, audited."""
    target = table.as_string(ctx.conn)
    detail = {"cutoff": cutoff.isoformat(), "limit": limit and limit.isoformat(),
              "held_back": reason}
    if limit is None:
        return StepResult(status="skipped", detail=detail)
    deleted = 0
    while True:
        with ctx.conn.transaction():
            n = one_batch(ctx.settings.cleanup_batch_rows)
        deleted += n
        if n < ctx.settings.cleanup_batch_rows:
            break
    if deleted:
        ctx.conn.execute(query("audit"), {
            "actor": ACTOR, "action": "retention_delete", "target": target,
            "params": Jsonb(detail), "outcome": f"{deleted} rows deleted",
            "source": ctx.source or local_source("worker"),
        })
    return StepResult(rows=deleted, detail=detail)
