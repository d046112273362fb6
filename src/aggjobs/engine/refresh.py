"""The incremental refresh of one rollup: new complete buckets plus dirty groups.

For each grain, finest first, under the rollup's lock:
1. dirty groups behind the watermark are recomputed, a bounded batch per transaction;
2. complete buckets from the watermark up to the limit are recomputed, a chunk per
   transaction, each advancing the watermark in the same transaction.

A bucket is complete when it has ended at `as_of` and, for merged grains, when every finer
bucket in it is materialized: a day is never built from an incomplete hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from ..catalog import Grain, Rollup
from ..catalog.grains import SUPPORTED_PARAMS, as_utc, chunks
from ..db import definitions
from ..db.connect import first_line, scalar
from ..db.retry import PERMANENT, is_data_exception
from ..errors import LockBusy
from ..settings import Settings
from ..sql import query
from ..sql import rollup as rollup_sql
from . import rebuild, state
from .rebuild import RebuildReport
from .recompute import Written, recompute_range, take_and_recompute

log = logging.getLogger(__name__)

CHUNK_BUCKETS = {Grain.DAY: 7, Grain.WEEK: 4}  # per transaction; the hour's is configurable
Progress = Callable[[str, int, int], None]


@dataclass
class GrainReport:
    grain: Grain
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    new_buckets: int = 0
    dirty_groups: int = 0
    coalesced_buckets: int = 0  # recomputed whole: most of their groups were dirty
    scanned_buckets: int = 0  # their many dirty groups recomputed by one scan
    rows: Written = field(default_factory=Written)
    dropped_behind_horizon: int = 0  # late changes older than retention: not recomputable
    quarantined: list[datetime] = field(default_factory=list)  # buckets skipped, see below
    held_back: str | None = None  # why fewer buckets than complete were materialized
    seconds: float = 0.0


@dataclass(frozen=True)
class RefreshReport:
    rollup: str
    as_of: datetime
    grains: list[GrainReport] = field(default_factory=list)
    reset: bool = False
    rebuild: RebuildReport | None = None  # the changed version being rebuilt, if any

    @property
    def rows_written(self) -> int:
        return sum(g.rows.written for g in self.grains)


def refresh(
    conn: psycopg.Connection,
    rollup: Rollup,
    *,
    as_of: datetime,
    settings: Settings,
    grains: list[Grain] | None = None,
    max_buckets: int | None = None,
    lock_wait_s: float = 30.0,
    progress: Progress | None = None,
    rebuild_budget_s: float | None = None,
) -> RefreshReport:
    """Bring the rollup up to date as of `as_of`; `max_buckets` bounds new hourly buckets.

    The live tables are refreshed under the definition they were built with; a changed
    definition being rebuilt is then advanced for `rebuild_budget_s` seconds at most (None:
    until it has caught up), and swapped in once it has (db/definitions.py). A declaration
    `aggjobs migrate` has not seen raises DefinitionsChanged before any work."""
    as_of = as_utc(as_of)
    v = definitions.versions(conn, rollup)
    live = v.live
    with state.rollup_lock(conn, live, wait_s=lock_wait_s):
        state.fan_out(conn, live.source)
        reset = state.reset_if_requested(conn, live)
        done = []
        for grain in live.grains:
            if grains and grain not in grains:
                continue
            started = time.perf_counter()
            grain_report = refresh_grain(conn, live, grain, as_of=as_of, settings=settings,
                                         max_buckets=max_buckets, progress=progress)
            grain_report.seconds = time.perf_counter() - started
            done.append(grain_report)
        rebuilt = None if v.building is None else advance_rebuild(
            conn, v, as_of=as_of, settings=settings, budget_s=rebuild_budget_s,
            max_hours=max_buckets, progress=progress, hour_cost=hour_cost(done))
    return RefreshReport(rollup.name, as_of, done, reset, rebuilt)


def hour_cost(done: list[GrainReport]) -> float | None:
    """Seconds the live version took per new hour in this refresh (None: it made none)."""
    hours = [g for g in done if g.grain is Grain.HOUR and g.new_buckets]
    return hours[0].seconds / hours[0].new_buckets if hours else None


def advance_rebuild(conn: psycopg.Connection, v: definitions.Versions, *, as_of: datetime,
                    settings: Settings, budget_s: float | None, max_hours: int | None,
                    progress: Progress | None, hour_cost: float | None = None
                    ) -> RebuildReport:
    """The version being rebuilt, brought forward under its own lock: its hours until it has
    caught up, `budget_s` is spent or `max_hours` are done, then its coarser grains (merged
    from those hours). Once caught up it is checked and swapped in, except under a time
    budget (the hourly job): the check reads raw rows of whole days and weeks, so the next
    daily or weekly job, or `aggjobs refresh`, does it."""
    shadow = v.building
    assert shadow is not None and v.version is not None
    report = RebuildReport(v.live.name, v.version)
    try:
        with state.rollup_lock(conn, shadow, wait_s=0):
            if shadow.source != v.live.source:
                state.fan_out(conn, shadow.source)
            state.reset_if_requested(conn, shadow)
            hours = rebuild_hours(conn, shadow, report, as_of=as_of, settings=settings,
                                  budget_s=budget_s, max_hours=max_hours, progress=progress,
                                  estimate=hour_cost)
            behind = hours is None or hours.held_back
            coarser = [] if behind else [
                refresh_grain(conn, shadow, g, as_of=as_of, settings=settings,
                              max_buckets=None, progress=None) for g in shadow.grains[1:]]
            report.rows += sum(g.rows.written for g in coarser)
            report.caught_up = not behind and not any(g.held_back for g in coarser)
            if budget_s is None:
                rebuild.conclude(conn, v, report, settings=settings)
            else:
                report.progress = rebuild.progress(conn, v.live, shadow,
                                                   v.built.rebuild_from if v.built else None)
    except LockBusy:
        report.note = "advanced by another session right now"
    return report


def rebuild_hours(conn: psycopg.Connection, shadow: Rollup, report: RebuildReport, *,
                  as_of: datetime, settings: Settings, budget_s: float | None,
                  max_hours: int | None, progress: Progress | None,
                  estimate: float | None) -> GrainReport | None:
    """New hours of the version being rebuilt, a transaction at a time; the last report
    (None: none was started). Under a time budget, an hour a transaction, and one is only
    started if it should end within the budget: `estimate` (what the live version's hour
    took), then what the last one took, says how long it will take."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    per_tx = settings.hours_per_transaction if deadline is None else 1
    g = None
    while True:
        if deadline is not None and estimate is not None \
                and time.monotonic() + estimate > deadline:
            report.note = (f"an hour takes about {estimate:.1f} s, more than is left of "
                           f"AGGJOBS_REBUILD_SECONDS_PER_RUN: left to the next runs")
            return g
        left = per_tx if max_hours is None else min(per_tx, max_hours - report.new_hours)
        started = time.monotonic()
        g = refresh_grain(conn, shadow, Grain.HOUR, as_of=as_of, settings=settings,
                          max_buckets=max(1, left), progress=None)
        estimate = (time.monotonic() - started) / max(1, g.new_buckets)
        report.rows += g.rows.written
        report.new_hours += g.new_buckets
        if progress:
            progress(f"{shadow.name} rebuild", report.new_hours,
                     report.new_hours + (1 if g.held_back else 0))
        spent = (deadline is not None and time.monotonic() >= deadline) or (
            max_hours is not None and report.new_hours >= max_hours)
        if not g.held_back or not g.new_buckets or spent:
            return g


def complete_limit(rollup: Rollup, grain: Grain, as_of: datetime,
                   marks: dict[Grain, datetime | None]) -> tuple[datetime | None, str | None]:
    """End of the complete buckets of `grain` at `as_of`, and why it is lower, if it is."""
    limit = grain.floor(as_of)
    finer = rollup.finer(grain)
    if finer is None:
        return limit, None
    finer_mark = marks.get(finer)
    if finer_mark is None:
        return None, f"no {finer.value} is materialized yet"
    finer_limit = grain.floor(finer_mark)
    if finer_limit < limit:
        return finer_limit, f"waiting for {finer.value}s up to {limit.isoformat()}"
    return limit, None


def start_of(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
             watermark: datetime | None, limit: datetime) -> datetime:
    """Where new buckets start: the watermark, or the first input bucket on a first run."""
    if watermark is not None:
        return watermark
    first = scalar(conn, rollup_sql.min_input_time(rollup, grain))
    return limit if first is None else min(grain.floor(as_utc(first)), limit)


def refresh_grain(conn: psycopg.Connection, rollup: Rollup, grain: Grain, *, as_of: datetime,
                  settings: Settings, max_buckets: int | None,
                  progress: Progress | None) -> GrainReport:
    marks = state.watermarks(conn, rollup)
    wm = marks.get(grain)
    report = GrainReport(grain, watermark_before=wm, watermark_after=wm)
    if wm is not None:
        recompute_dirty(conn, rollup, grain, wm, settings, report)
    limit, report.held_back = complete_limit(rollup, grain, as_of, marks)
    if limit is None:
        return report
    start = start_of(conn, rollup, grain, wm, limit)
    if max_buckets is not None and grain is Grain.HOUR:
        capped = start + max_buckets * grain.step
        if capped < limit:
            limit, report.held_back = capped, f"at most {max_buckets} new hours per run"
    if grain is Grain.HOUR:
        tracked = state.track_until(conn, rollup.source, limit,
                                    lock_timeout_ms=settings.trigger_lock_timeout_ms)
        if tracked is None or tracked < limit:
            limit = max(start, tracked) if tracked else start
            report.held_back = "change tracking could not be moved (writers busy); retry later"
    materialize(conn, rollup, grain, start, limit, settings, report, progress)
    return report


def recompute_dirty(conn: psycopg.Connection, rollup: Rollup, grain: Grain, wm: datetime,
                    settings: Settings, report: GrainReport) -> None:
    dropped = conn.execute(
        query("drop_pending_behind_horizon"), {"rollup": rollup.name, "grain": grain.value}
    ).rowcount
    if dropped:
        report.dropped_behind_horizon = dropped
        log.warning("%s %s: %d changed groups are older than retention and were not "
                    "recomputed", rollup.name, grain.value, dropped)
    while True:
        try:
            with conn.transaction():
                batch, written = take_and_recompute(
                    conn, rollup, grain, watermark=wm,
                    limit=settings.dirty_groups_per_transaction,
                    coalesce_fraction=settings.coalesce_fraction,
                    scan_groups=settings.scan_groups,
                )
        except PERMANENT:
            recompute_dirty_by_bucket(conn, rollup, grain, wm, settings, report)
            continue
        if not batch.groups:
            return
        report.dirty_groups += batch.groups
        report.coalesced_buckets += batch.coalesced_buckets
        report.scanned_buckets += batch.scanned_buckets
        report.rows += written


def materialize(conn: psycopg.Connection, rollup: Rollup, grain: Grain, start: datetime,
                limit: datetime, settings: Settings, report: GrainReport,
                progress: Progress | None) -> None:
    """Recompute [start, limit) chunk by chunk, advancing the watermark with each chunk."""
    if report.watermark_before is None and start >= limit:
        with conn.transaction():  # an empty input: nothing before `limit` to materialize
            state.set_watermark(conn, rollup, grain, limit)
        report.watermark_after = limit
        return
    per_tx = settings.hours_per_transaction if grain is Grain.HOUR else CHUNK_BUCKETS[grain]
    pieces = chunks(start, limit, per_tx * grain.step)
    for i, (lo, hi) in enumerate(pieces):
        try:
            with conn.transaction():
                report.rows += recompute_range(conn, rollup, grain, lo, hi)
                state.set_watermark(conn, rollup, grain, hi)
        except PERMANENT:
            materialize_by_bucket(conn, rollup, grain, lo, hi, settings, report)
        report.new_buckets += len(grain.buckets(lo, hi))
        report.watermark_after = hi
        if progress:
            progress(f"{rollup.name} {grain.value}", i + 1, len(pieces))


# Quarantine. A recompute that fails for a reason that will not go away by itself (bad data,
# a violated constraint) is retried bucket by bucket, so that one bucket cannot hold back the
# others. The failing bucket's failure is counted, once per run; after
# AGGJOBS_QUARANTINE_AFTER runs it is quarantined: skipped (its rows stay as they were, none
# for a new bucket), reported by `status`. A data exception (SQLSTATE class 22: a value out
# of range, an invalid input) fails the same way on every run: it is quarantined at once.
# Any later change in a quarantined bucket recomputes it whole; a success (that, or a
# backfill of it) clears the quarantine.
# Such failures, and data exceptions: aggjobs.db.retry (PERMANENT, is_data_exception).


def materialize_by_bucket(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                          lo: datetime, hi: datetime, settings: Settings,
                          report: GrainReport) -> None:
    for bucket in grain.buckets(lo, hi):
        end = bucket + grain.step
        try:
            with conn.transaction():
                report.rows += recompute_range(conn, rollup, grain, bucket, end)
                state.set_watermark(conn, rollup, grain, end)
        except PERMANENT as exc:
            quarantine_or_raise(conn, rollup, grain, bucket, exc, settings, report)
            with conn.transaction():
                state.set_watermark(conn, rollup, grain, end)


def recompute_dirty_by_bucket(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                              wm: datetime, settings: Settings, report: GrainReport) -> None:
    """The dirty groups of each bucket recomputed on their own (the whole bucket)."""
    buckets = conn.execute(query("pending_buckets"), {
        "rollup": rollup.name, "grain": grain.value, "watermark": wm,
        "limit": settings.dirty_groups_per_transaction, **SUPPORTED_PARAMS,
    }).fetchall()
    for (bucket,) in buckets:
        bucket = as_utc(bucket)
        try:
            with conn.transaction():
                report.rows += recompute_range(conn, rollup, grain, bucket, bucket + grain.step)
        except PERMANENT as exc:
            quarantine_or_raise(conn, rollup, grain, bucket, exc, settings, report)
            with conn.transaction():  # its changes wait in aggjobs.quarantine's stead
                conn.execute(query("drop_pending_range"), {
                    "rollup": rollup.name, "grain": grain.value,
                    "lo": bucket, "hi": bucket + grain.step,
                })


def quarantine_or_raise(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                        bucket: datetime, exc: Exception, settings: Settings,
                        report: GrainReport) -> None:
    """Count the failure; return if the bucket is now quarantined, else re-raise."""
    quarantined = scalar(conn, query("record_failure"), {
        "rollup": rollup.name, "grain": grain.value, "bucket": bucket,
        "error": f"{type(exc).__name__}: {first_line(exc)}",
        "after": 1 if is_data_exception(exc) else settings.quarantine_after,
    })
    if not quarantined:
        raise exc
    log.warning("%s %s bucket %s quarantined (skipped until its rows change or it is "
                "backfilled): %s", rollup.name, grain.value, bucket.isoformat(), first_line(exc))
    report.quarantined.append(bucket)
