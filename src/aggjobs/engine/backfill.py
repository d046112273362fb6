"""Backfill: recompute a materialized range, chunk by chunk, resumable, beside the jobs.

Each chunk is one transaction under the rollup's lock, which is taken per chunk so that the
scheduled refreshes interleave with a long backfill. Progress (grain, done_until) is saved
in the chunk's own transaction, so a killed backfill resumes where its last chunk committed.
Buckets past a grain's watermark are not yet materialized: `aggjobs refresh` builds those.

With AGGJOBS_BACKFILL_SESSIONS = N > 1 the hours (the grain read from raw rows, most of the
work) are recomputed N chunks at a time, each in its own session and transaction, while the
main session holds the rollup's lock. Those transactions do not mark the coarser groups (two
chunks of one day would each wait on the other's marks of that day's groups): the main
session marks them, before the wave (groups that may vanish) and after it (groups that may
appear), and saves the progress once every chunk of the wave has committed. A backfill
killed mid-wave redoes the wave.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from ..catalog import Grain, Rollup
from ..catalog.grains import as_utc, chunks
from ..db import definitions
from ..db.connect import one_row
from ..errors import AggjobsError, InvalidRange
from ..settings import Settings
from ..sql import query
from . import state
from .recompute import Written, mark_coarser_range, recompute_range
from .refresh import CHUNK_BUCKETS

Progress = Callable[[int, int], None]
Chunk = tuple[datetime, datetime]  # [start, end) of one transaction's buckets


@dataclass(frozen=True)
class BackfillReport:
    rollup: str
    backfill_id: int
    resumed: bool
    buckets: int = 0
    rows: Written = field(default_factory=Written)
    beyond_watermark: dict[str, datetime] = field(default_factory=dict)


@dataclass
class Tally:
    """What a backfill has done so far, chunk by chunk (its report is made at the end)."""

    buckets: int = 0
    rows: Written = field(default_factory=Written)


@dataclass(frozen=True)
class Plan:
    grain: Grain
    pieces: list[tuple[datetime, datetime]]


def plan(rollup: Rollup, lo: datetime, hi: datetime, marks: dict[Grain, datetime | None],
         settings: Settings, *, resume: tuple[Grain, datetime] | None,
         horizons: dict[Grain, datetime | None] | None = None) -> list[Plan]:
    """Chunks per grain: the range widened to whole buckets, cut at the grain's watermark
    and at its retention horizon (its inputs before that are gone)."""
    plans = []
    for grain in rollup.grains:
        if resume and rollup.grains.index(grain) < rollup.grains.index(resume[0]):
            continue
        wm = marks.get(grain)
        start, end = grain.floor(lo), grain.ceil(hi)
        horizon = (horizons or {}).get(grain)
        if horizon is not None:
            start = max(start, grain.ceil(horizon))
        if resume and grain is resume[0]:
            # A job that failed before its first chunk recorded the unaligned --from.
            start = max(start, grain.floor(resume[1]))
        end = min(end, wm) if wm is not None else start
        per_tx = settings.hours_per_transaction if grain is Grain.HOUR else CHUNK_BUCKETS[grain]
        plans.append(Plan(grain, chunks(start, end, per_tx * grain.step)))
    return plans


def backfill(conn: psycopg.Connection, rollup: Rollup, lo: datetime, hi: datetime, *,
             settings: Settings, progress: Progress | None = None,
             lock_wait_s: float = 600.0, queued: bool = False) -> BackfillReport:
    """Recompute [lo, hi) of `rollup`, every grain, chunk by chunk; resumes the range's
    unfinished backfill. `queued`: run by a worker's task for a queued row, which is not
    run if it was cancelled meanwhile (BackfillCancelled). Before each chunk the row's
    `cancel_requested` is read: set, the backfill stops there, `cancelled`."""
    if lo >= hi:
        raise InvalidRange(f"--from {lo.isoformat()} must be before --to {hi.isoformat()}")
    rollup = definitions.versions(conn, rollup).live  # the tables' definition (db/definitions)
    job_id, done_grain, done_until, resumed = open_backfill(conn, rollup, lo, hi, queued)
    tally, beyond = Tally(), {}
    marks = state.watermarks(conn, rollup)
    resume = (Grain(done_grain), as_utc(done_until)) if resumed else None
    plans = plan(rollup, lo, hi, marks, settings, resume=resume,
                 horizons=state.horizons(conn, rollup))
    for grain_plan in plans:
        wm = marks.get(grain_plan.grain)
        if wm is None or wm < grain_plan.grain.ceil(hi):
            beyond[grain_plan.grain.value] = wm or grain_plan.grain.floor(lo)
    total, done = sum(len(p.pieces) for p in plans), 0
    try:
        with helper_sessions(settings, settings.backfill_sessions - 1) as helpers:
            for grain_plan in plans:
                grain = grain_plan.grain
                side_by_side = bool(helpers) and rollup.finer(grain) is None
                for wave in waves(grain_plan.pieces, len(helpers) + 1 if side_by_side else 1):
                    stop_if_cancelled(conn, job_id, rollup)
                    if len(wave) == 1:
                        run_chunk(conn, rollup, grain, *wave[0], job_id, tally, lock_wait_s)
                    else:
                        run_wave(conn, helpers, rollup, grain, wave, job_id, tally,
                                 lock_wait_s)
                    for _ in wave:
                        done += 1
                        if progress:
                            progress(done, total)
    except BackfillCancelled as exc:
        finish(conn, job_id, "cancelled", str(exc))
        raise
    except BaseException as exc:
        finish(conn, job_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finish(conn, job_id, "succeeded", None)
    return BackfillReport(rollup.name, job_id, resumed, tally.buckets, tally.rows, beyond)


class BackfillBusy(AggjobsError):
    """Another session is running a backfill of this rollup and range."""


class BackfillCancelled(AggjobsError):
    """The backfill was cancelled (aggjobs.backfills.cancel_requested)."""


def stop_if_cancelled(conn: psycopg.Connection, job_id: int, rollup: Rollup) -> None:
    """Between two chunks: BackfillCancelled if someone asked this backfill to stop."""
    requested, who = one_row(conn, query("backfill_cancel_requested"), {"id": job_id})
    if requested:
        raise BackfillCancelled(f"backfill {job_id} of {rollup.name} cancelled by {who}")


def open_backfill(conn: psycopg.Connection, rollup: Rollup, lo: datetime, hi: datetime,
                  queued: bool = False) -> tuple[int, str, datetime, bool]:
    """(id, grain, done_until, resumed): the unfinished backfill of this range claimed by
    this session, or a new one. Raises BackfillBusy while another live session runs it: two
    would redo the same chunks, and two first openers raced on the unique index. `queued`
    (a worker's task): a row cancelled before the task claimed it is BackfillCancelled; the
    row is locked meanwhile, so a cancel comes either before (that) or after (a running
    backfill that stops before its first chunk)."""
    params = {"rollup": rollup.name, "lo": lo, "hi": hi}
    try:
        with conn.transaction():
            row = conn.execute(query("find_open_backfill"), params).fetchone()
            if row is None:
                job_id, grain, done_until = one_row(conn, query("create_backfill"), params)
                return job_id, grain, done_until, False
            if row[5]:
                raise busy(rollup, lo, hi, row)
            if queued and row[6] == "cancelled":
                raise BackfillCancelled(f"backfill {row[0]} of {rollup.name} was cancelled "
                                        "before it started")
            conn.execute(query("claim_backfill"), {"id": row[0]})
            return row[0], row[1], row[2], row[6] != "queued"
    except pg_errors.UniqueViolation:  # opened by another session between our look and insert
        row = conn.execute(query("running_backfill"), params).fetchone()
        raise busy(rollup, lo, hi, row) from None


def busy(rollup: Rollup, lo: datetime, hi: datetime, row: tuple[Any, ...] | None
         ) -> BackfillBusy:
    what = f"a backfill of {rollup.name} over [{lo.isoformat()}, {hi.isoformat()})"
    if row is not None:
        job_id, _, done_until, started_at, pid = row[:5]
        what = (f"backfill {job_id} of {rollup.name} over [{lo.isoformat()}, "
                f"{hi.isoformat()}) (started {as_utc(started_at):%Y-%m-%d %H:%M:%S} UTC, done "
                f"until {as_utc(done_until).isoformat()}, database session {pid})")
    return BackfillBusy(f"{what} is running in another session: wait for it to finish "
                        "(aggjobs.backfills), or stop it and this range resumes where it was")


def waves(pieces: list[Chunk], size: int) -> list[list[Chunk]]:
    return [pieces[i:i + size] for i in range(0, len(pieces), size)]


@contextmanager
def helper_sessions(settings: Settings, n: int) -> Iterator[list[psycopg.Connection]]:
    from ..db.connect import connect  # db.connect imports the settings, not the engine

    with ExitStack() as stack:
        yield [stack.enter_context(connect("backfill", settings=settings)) for _ in range(n)]


def run_chunk(conn: psycopg.Connection, rollup: Rollup, grain: Grain, a: datetime,
              b: datetime, job_id: int, tally: Tally, lock_wait_s: float) -> None:
    with state.rollup_lock(conn, rollup, wait_s=lock_wait_s), conn.transaction():
        tally.rows += recompute_range(conn, rollup, grain, a, b)
        conn.execute(
            query("backfill_progress"), {"id": job_id, "grain": grain.value, "done_until": b}
        )
    tally.buckets += len(grain.buckets(a, b))


def run_wave(conn: psycopg.Connection, helpers: list[psycopg.Connection], rollup: Rollup,
             grain: Grain, wave: list[tuple[datetime, datetime]], job_id: int,
             tally: Tally, lock_wait_s: float) -> None:
    """The wave's chunks side by side, the first in `conn`, which holds the rollup's lock."""
    lo, hi = wave[0][0], wave[-1][1]
    with state.rollup_lock(conn, rollup, wait_s=lock_wait_s):
        with conn.transaction():  # groups the chunks may delete
            mark_coarser_range(conn, rollup, grain, lo, hi)

        def chunk(session: psycopg.Connection, a: datetime, b: datetime) -> Written:
            with session.transaction():
                return recompute_range(session, rollup, grain, a, b, marks=False)

        with ThreadPoolExecutor(len(wave)) as pool:
            futures = [pool.submit(chunk, session, a, b)
                       for session, (a, b) in zip([conn, *helpers], wave, strict=False)]
        for future in futures:  # all have ended: the first error, if any, fails the job
            tally.rows += future.result()
        with conn.transaction():  # groups the chunks wrote; the wave is done
            mark_coarser_range(conn, rollup, grain, lo, hi)
            conn.execute(query("backfill_progress"),
                         {"id": job_id, "grain": grain.value, "done_until": hi})
    tally.buckets += len(grain.buckets(lo, hi))


def finish(conn: psycopg.Connection, job_id: int, status: str, error: str | None) -> None:
    if conn.closed or conn.broken:
        return
    with conn.transaction():
        conn.execute(query("backfill_finish"), {"id": job_id, "status": status, "error": error})

