"""The engine's persistent state: rollup locks, watermarks, tracking thresholds, fan-out."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import datetime

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ..catalog import Grain, Rollup, Source, rollups_on
from ..catalog.grains import SUPPORTED_PARAMS, as_utc
from ..db import locks
from ..db.connect import one_row, scalar
from ..errors import LockBusy
from ..sql import query
from ..sql import rollup as rollup_sql

log = logging.getLogger(__name__)


@contextlib.contextmanager
def rollup_lock(conn: psycopg.Connection, rollup: Rollup, *, wait_s: float) -> Iterator[None]:
    """Hold the rollup's session advisory lock: one writer of its tables at a time, on any
    host. Released on exit, or by PostgreSQL when the session dies."""
    deadline = time.monotonic() + wait_s
    while not scalar(conn, query("try_rollup_lock"), {"rollup": rollup.name}):
        if time.monotonic() >= deadline:
            held = locks.held_by(conn, "rollup", rollup.name)  # issue 21: name a foreign one
            raise LockBusy(
                f"rollup {rollup.name} is being written by another process "
                f"(waited {wait_s:g} s); try again when it finishes"
                + (f"; its lock is {held}" if held else "")
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute(query("rollup_unlock"), {"rollup": rollup.name})


def watermarks(conn: psycopg.Connection, rollup: Rollup) -> dict[Grain, datetime | None]:
    """Per grain, the end of what is materialized, in UTC: psycopg returns timestamptz in the
    session's TimeZone, where timedelta arithmetic is wall-clock and breaks across DST."""
    rows = conn.execute(query("watermarks"), {"rollup": rollup.name}).fetchall()
    return {Grain(grain): wm and as_utc(wm) for grain, wm, _ in rows}


def horizons(conn: psycopg.Connection, rollup: Rollup) -> dict[Grain, datetime | None]:
    """Per grain, where retention has cut its inputs: buckets before it are not recomputed."""
    rows = conn.execute(query("horizons"), {"rollup": rollup.name}).fetchall()
    return {Grain(grain): h and as_utc(h) for grain, h in rows}


def set_watermark(conn: psycopg.Connection, rollup: Rollup, grain: Grain, wm: datetime) -> None:
    conn.execute(
        query("set_watermark"), {"rollup": rollup.name, "grain": grain.value, "watermark": wm}
    )


def reset_if_requested(conn: psycopg.Connection, rollup: Rollup) -> bool:
    """After a TRUNCATE of the source: empty the rollup and start it over."""
    rows = conn.execute(query("watermarks"), {"rollup": rollup.name}).fetchall()
    if not any(reset for _, _, reset in rows):
        return False
    with conn.transaction():
        for grain in rollup.grains:
            conn.execute(
                sql.SQL("DELETE FROM {}").format(rollup_sql.table_ident(rollup, grain))
            )
        conn.execute(query("drop_all_pending"), {"rollup": rollup.name})
        conn.execute(query("reset_watermarks"), {"rollup": rollup.name})
    log.warning("rollup %s reset: its source %s was truncated", rollup.name, rollup.source.name)
    return True


def fan_out(conn: psycopg.Connection, source: Source) -> int:
    """Move logged changes of `source` to pending groups of every rollup on it. Changes
    outside the supported times, and pending groups an older version queued there, are
    dropped and reported: those rows are in no bucket (docs/rollups.md)."""
    # the declared rollups; the statement adds every version the database holds over it
    params = {"source": source.name, "rollups": [r.name for r in rollups_on(source)],
              **SUPPORTED_PARAMS}
    moved: int
    with conn.transaction():
        moved, truncations, _, unsupported, keys = one_row(conn, query("fan_out"), params)
        params["rollups"] = keys
        if truncations:
            conn.execute(query("request_reset"), params)
        stale = conn.execute(query("drop_unsupported_pending"), params).rowcount
    if unsupported or stale:
        log.warning(
            "%s: %d logged change(s) and %d pending group(s) outside the supported times "
            "dropped: rows there are in no bucket (see `aggjobs status`)",
            source.name, unsupported, stale)
    return moved


def track_until(
    conn: psycopg.Connection, source: Source, until: datetime, *, lock_timeout_ms: int
) -> datetime | None:
    """Make sure changes to `source` rows before `until` are logged; returns the threshold
    now in force, which is lower than `until` when writers held the table too long."""
    # Re-creating the triggers needs the source table's owner: aggjobs.move_tracking_threshold
    # (SECURITY DEFINER, migration 0005) does it, for the known sources only. It takes the
    # sources row's lock (ordering concurrent movers; the threshold only ever grows), then
    # waits at most lock_timeout_ms for the platform's writers.
    try:
        with conn.transaction():
            current = scalar(conn, query("move_tracking_threshold"),
                             (source.name, until, lock_timeout_ms))
    except pg_errors.LockNotAvailable:
        current = scalar(conn, query("source_threshold"), (source.name,))
        current = current and as_utc(current)
        log.warning(
            "could not move the tracking threshold of %s: writers held the table longer than "
            "%d ms; materializing only up to %s this time",
            source.name, lock_timeout_ms, current,
        )
        return current
    return as_utc(current)
