"""The end of a rebuild (docs/rollups.md, "Changing a rollup"): once the version being rebuilt
has caught up with the live one, it is checked against the raw rows, then swapped in by
aggjobs.swap_rollup_version (migration 0014) in one transaction: a reader sees the old
tables or the new ones, never a mix; views, indexes and grants follow.

Advancing it is the refresh's (engine/refresh.py, `advance_rebuild`): the same engine, on
the version's own tables and state key, so it keeps up with new buckets and late changes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from ..catalog import Grain, Rollup
from ..catalog.grains import as_utc
from ..db import definitions, view_caches
from ..db.connect import first_line, scalar
from ..settings import Settings
from ..sql import query
from ..sql import rollup as rollup_sql
from . import state
from .verify import Mismatch, verify_grain

log = logging.getLogger(__name__)
SAMPLE_BUCKETS = 3  # random buckets per grain checked besides the latest one


@dataclass
class RebuildReport:
    rollup: str
    version: int
    new_hours: int = 0
    rows: int = 0
    caught_up: bool = False
    progress: float = 0.0  # of the hours to rebuild, the share done
    checked: str | None = None  # "sample" or "full", once it has been
    mismatches: list[Mismatch] = field(default_factory=list)
    swapped: bool = False
    note: str | None = None  # why it did not go further this time


def is_caught_up(conn: psycopg.Connection, live: Rollup, shadow: Rollup) -> bool:
    """Every grain of the new version materialized at least as far as the live one's."""
    mine, theirs = state.watermarks(conn, shadow), state.watermarks(conn, live)
    return all((m := mine.get(g)) is not None and ((t := theirs.get(g)) is None or m >= t)
               for g in shadow.grains)


def progress(conn: psycopg.Connection, live: Rollup, shadow: Rollup,
             rebuild_from: datetime | None) -> float:
    """The share of the live version's hours the new one has materialized."""
    done, target = (state.watermarks(conn, r).get(Grain.HOUR) for r in (shadow, live))
    if done is None or target is None:
        return 0.0
    start = rebuild_from or first_hour(conn, shadow)
    if start is None or target <= start:
        return 1.0
    return max(0.0, min(1.0, (done - start) / (target - start)))


def first_hour(conn: psycopg.Connection, rollup: Rollup) -> datetime | None:
    first = scalar(conn, rollup_sql.min_input_time(rollup, Grain.HOUR))
    return first and Grain.HOUR.floor(as_utc(first))


def check(conn: psycopg.Connection, shadow: Rollup, how: str) -> list[Mismatch]:
    """The new version against the raw rows: every bucket (`full`), or per grain its
    latest and a few random earlier ones (`sample`)."""
    found: list[Mismatch] = []
    marks = state.watermarks(conn, shadow)
    start = first_hour(conn, shadow)
    for grain in shadow.grains:
        wm = marks.get(grain)
        if wm is None or start is None or wm <= grain.floor(start):
            continue
        buckets = grain.buckets(grain.floor(start), wm)
        if how == "full":
            found += verify_grain(conn, shadow, grain, buckets[0], wm).mismatches or []
            continue
        picked = {buckets[-1], *random.sample(buckets, min(SAMPLE_BUCKETS, len(buckets)))}
        for bucket in sorted(picked):
            found += verify_grain(conn, shadow, grain, bucket,
                                  bucket + grain.step).mismatches or []
    return found


def conclude(conn: psycopg.Connection, v: definitions.Versions, report: RebuildReport, *,
             settings: Settings) -> None:
    """If the new version has caught up: check it, then swap it in. After a failed check
    only a full one can let it in: another random sample could miss what the first found."""
    built = v.built
    rebuild_from = built.rebuild_from if built else None
    assert v.building is not None and v.version is not None
    report.progress = progress(conn, v.live, v.building, rebuild_from)
    if not report.caught_up or not is_caught_up(conn, v.live, v.building):
        report.caught_up = False
        return
    report.progress = 1.0
    report.checked = "full" if built and built.check_error else settings.rebuild_check
    report.mismatches = check(conn, v.building, report.checked)
    if report.mismatches:
        first = report.mismatches[0]
        error = (f"{len(report.mismatches)} mismatch(es) against the raw rows, first "
                 f"{first.grain.value} {first.bucket} workspace {first.workspace_id}")
        with conn.transaction():
            conn.execute(query("record_check_error"), {
                "rollup": v.live.name, "version": v.version, "error": error})
        report.note = f"not swapped: its {report.checked} check found {error}"
        log.error("%s v%d %s", v.live.name, v.version, report.note)
        return
    swap(conn, v, report, settings=settings)


def swap(conn: psycopg.Connection, v: definitions.Versions, report: RebuildReport, *,
         settings: Settings) -> None:
    """One transaction; waits at most lock_timeout for the readers of the live tables."""
    try:
        with conn.transaction():
            conn.execute(query("set_lock_timeout"),
                         (f"{settings.lock_timeout_ms}ms",))
            if v.live.name in view_caches.READS:
                view_caches.forget_stamps(conn)
            conn.execute(query("swap_version"), {"rollup": v.live.name, "version": v.version})
    except psycopg.errors.LockNotAvailable as exc:
        report.note = f"swap postponed: readers held the tables ({first_line(exc)})"
        log.warning("%s v%d: %s", v.live.name, v.version, report.note)
        return
    report.swapped = True
    log.warning("%s v%d swapped in: its tables are live", v.live.name, v.version)
