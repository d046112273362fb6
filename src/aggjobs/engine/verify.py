"""Verify stored rollups against a recomputation from the raw rows, and repair them.

Both sides are read in one REPEATABLE READ snapshot, a chunk of buckets at a time, and
compared measure by measure: counts and sums exactly, averages to 1e-9 relative, the p95
of merged grains (read off the sketch) within the contract's 1% (docs/contract.md#exactness);
NaN equals NaN and each infinity itself (docs/rollups.md). Quarantined buckets are skipped
on purpose by refresh: they are listed, not compared. A bucket whose recomputation fails on
its data (SQLSTATE class 22) is a mismatch "cannot be computed", with the reason, and does
not stop the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import psycopg

from ..catalog import Grain, Rollup
from ..catalog.definition import describe as described
from ..catalog.definition import fingerprint
from ..catalog.grains import as_utc, chunks
from ..catalog.model import Avg, Quantile
from ..db.connect import first_line
from ..db.definitions import BUILD_SCHEMA
from ..errors import DefinitionsChanged
from ..sql import query
from ..sql import rollup as rollup_sql
from . import state
from .recompute import Written, recompute_keys

SKETCH_TOLERANCE = 0.01  # the contract's bound (docs/contract.md#exactness); the sketch's 0.745%
FLOAT_TOLERANCE = 1e-9
CHUNK = {Grain.HOUR: 24, Grain.DAY: 31, Grain.WEEK: 13}  # buckets compared per query
NUMBER = (float, int, Decimal)  # what a measure compared with a tolerance is stored as

Row = tuple[Any, ...]  # (dims..., bucket, outputs...) as the database returns them


@dataclass(frozen=True)
class Mismatch:
    rollup: str
    grain: Grain
    bucket: date  # a datetime for hours
    workspace_id: int | None  # None: the whole bucket (it cannot be computed)
    measure: str
    stored: object
    expected: object
    further: tuple[tuple[str, object], ...] = ()  # the dimensions past the workspace's

    def where(self) -> str:
        """The group: its workspace, and e.g. its agent."""
        if self.workspace_id is None:
            return "-"
        return " ".join([str(self.workspace_id), *(f"{d} {v}" for d, v in self.further)])


@dataclass
class VerifyReport:
    rollup: str
    grain: Grain
    checked_from: datetime
    checked_to: datetime  # exclusive; buckets from here on are not materialized yet
    groups: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    unmaterialized_from: datetime | None = None
    retained_from: datetime | None = None  # retention deleted the inputs before this
    quarantined: list[tuple[datetime, str]] = field(default_factory=list)  # (bucket, error)


def tolerance(rollup: Rollup, grain: Grain) -> dict[str, float]:
    """Relative tolerance per measure; measures absent compare exactly."""
    tol: dict[str, float] = {}
    for m in rollup.measures:
        if isinstance(m, Avg):
            tol[m.name] = FLOAT_TOLERANCE
        elif isinstance(m, Quantile):
            tol[m.name] = FLOAT_TOLERANCE if rollup.finer(grain) is None else SKETCH_TOLERANCE
    return tol


def same(stored: object, expected: object, rel: float | None) -> bool:
    if stored is None or expected is None:
        return stored is None and expected is None
    if is_nan(stored) or is_nan(expected):  # NaN is a value like any other (as in SQL)
        return is_nan(stored) and is_nan(expected)
    if rel is None or not (isinstance(stored, NUMBER) and isinstance(expected, NUMBER)):
        return stored == expected
    a, b = float(stored), float(expected)
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)  # an infinity equals itself


def is_nan(value: object) -> bool:
    return (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, Decimal) and value.is_nan())


def compare(rollup: Rollup, grain: Grain, stored: list[Row], expected: list[Row]
            ) -> list[Mismatch]:
    """Rows are (dims..., bucket, outputs...); a row missing on one side is a mismatch."""
    n_keys = len(rollup.dimensions) + 1
    names = rollup_sql.output_names(rollup)
    tol = tolerance(rollup, grain)
    left = {row[:n_keys]: row[n_keys:] for row in stored}
    right = {row[:n_keys]: row[n_keys:] for row in expected}
    further = rollup.further_dimensions
    out = []
    for key in sorted(left.keys() | right.keys(), key=key_order):
        a = left.get(key, (None,) * len(names))
        b = right.get(key, (None,) * len(names))
        dims = tuple(zip(further, key[1:-1], strict=True))
        if key not in left or key not in right:
            out.append(Mismatch(rollup.name, grain, key[-1], key[0], "(row)",
                                present(key in left), present(key in right), dims))
            continue
        for name, x, y in zip(names, a, b, strict=True):
            if not same(x, y, tol.get(name)):
                out.append(Mismatch(rollup.name, grain, key[-1], key[0], name, x, y, dims))
    return out


def key_order(key: Row) -> tuple[Any, tuple[tuple[bool, Any], ...]]:
    """Bucket first, then the dimensions, NULL (a run without an agent) last."""
    return key[-1], tuple((v is None, v) for v in key[:-1])


def verify_grain(conn: psycopg.Connection, rollup: Rollup, grain: Grain, lo: datetime,
                 hi: datetime, progress: Callable[[int, int], None] | None = None
                 ) -> VerifyReport:
    """Compare every materialized bucket of `grain` overlapping [lo, hi)."""
    wm = state.watermarks(conn, rollup).get(grain)
    start, end = grain.floor(lo), grain.ceil(hi)
    # The reference reads raw rows: the finest grain's horizon bounds every grain.
    cut = [h for g, h in state.horizons(conn, rollup).items()
           if h is not None and rollup.grains.index(g) <= rollup.grains.index(grain)]
    horizon = max(cut, default=None)
    if horizon is not None and horizon > start:
        start = min(grain.ceil(horizon), end)
        retained_from = start
    else:
        retained_from = None
    limit = min(end, wm) if wm is not None else start
    report = VerifyReport(rollup.name, grain, start, max(start, limit), mismatches=[],
                          retained_from=retained_from)
    if limit < end:
        report.unmaterialized_from = max(start, limit)
    report.quarantined = quarantined(conn, rollup, grain, start, limit)
    skip = {bucket for bucket, _ in report.quarantined}
    pieces = chunks(start, limit, CHUNK[grain] * grain.step)
    for i, (a, b) in enumerate(pieces):
        try:
            groups, found = compare_range(conn, rollup, grain, a, b)
        except psycopg.DataError:  # some bucket's data: find it, compare the others
            groups, found = compare_by_bucket(conn, rollup, grain, a, b, skip)
        report.groups += groups
        report.mismatches += [m for m in found if bucket_start(m.bucket) not in skip]
        if progress:
            progress(i + 1, len(pieces))
    return report


def compare_range(conn: psycopg.Connection, rollup: Rollup, grain: Grain, a: datetime,
                  b: datetime) -> tuple[int, list[Mismatch]]:
    """Both sides of [a, b) in one snapshot, compared: (groups expected, mismatches)."""
    with conn.transaction():
        conn.execute(query("read_only_snapshot"))
        ensure_still_live(conn, rollup)
        stored = conn.execute(rollup_sql.stored(rollup, grain), {"lo": a, "hi": b}).fetchall()
        expected = conn.execute(rollup_sql.reference(rollup, grain),
                                {"lo": a, "hi": b}).fetchall()
    return len(expected), compare(rollup, grain, stored, expected)


def ensure_still_live(conn: psycopg.Connection, rollup: Rollup) -> None:
    """DefinitionsChanged if, in this snapshot, the live tables are no longer those of
    `rollup`'s definition: a rebuild's new version was swapped in since verify began, and
    comparing would report every group as a mismatch (or fail on a missing column). A version
    being rebuilt is checked under its rollup's lock (rebuild.check): no swap can intervene."""
    if rollup.schema == BUILD_SCHEMA:
        return
    row = conn.execute(query("live_fingerprint"), {"rollup": rollup.name}).fetchone()
    if row is None or row[0] != definition_fingerprint(rollup):
        raise DefinitionsChanged(
            f"{rollup.name}: its definition changed while verify ran (a rebuild's new version "
            "was swapped in, or a migrate changed it); run verify again")


@cache
def definition_fingerprint(rollup: Rollup) -> str:
    return fingerprint(described(rollup))


def compare_by_bucket(conn: psycopg.Connection, rollup: Rollup, grain: Grain, a: datetime,
                      b: datetime, skip: set[datetime]) -> tuple[int, list[Mismatch]]:
    """[a, b) a bucket at a time: one whose data cannot be computed is a mismatch of its
    own (unless quarantined: refresh skips it too), the others are compared."""
    groups, found = 0, []
    for bucket in grain.buckets(a, b):
        try:
            n, more = compare_range(conn, rollup, grain, bucket, bucket + grain.step)
        except psycopg.DataError as exc:
            if bucket not in skip:
                found.append(Mismatch(rollup.name, grain, bucket, None, "(cannot be computed)",
                                      "-", f"{type(exc).__name__}: {first_line(exc)}"))
            continue
        groups, found = groups + n, found + more
    return groups, found


def quarantined(conn: psycopg.Connection, rollup: Rollup, grain: Grain, lo: datetime,
                hi: datetime) -> list[tuple[datetime, str]]:
    """The buckets refresh skips (aggjobs.quarantine) in [lo, hi), with their last error."""
    rows = conn.execute(query("quarantined_buckets"), {
        "rollup": rollup.name, "grain": grain.value, "lo": lo, "hi": hi}).fetchall()
    return [(as_utc(bucket), error) for bucket, error in rows]


def repair(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
           mismatches: list[Mismatch], *, lock_wait_s: float = 60.0,
           audit: Callable[[dict[str, object]], None] | None = None) -> Written:
    """Recompute the groups behind the mismatches, under the rollup's lock; `audit(params)`
    writes the audit row in the same transaction, so a repair is never unrecorded."""
    keys = sorted({(bucket_start(m.bucket), m.workspace_id) for m in mismatches
                   if m.workspace_id is not None})
    with state.rollup_lock(conn, rollup, wait_s=lock_wait_s), conn.transaction():
        written = recompute_keys(conn, rollup, grain, keys)
        if audit:
            audit({"grain": grain.value, "groups": len(keys), "rows_written": written.written,
                   "buckets": sorted({b.isoformat() for b, _ in keys})[:50]})
        return written


def bucket_start(bucket: date) -> datetime:
    """A stored bucket (timestamptz, or a UTC date) as its starting instant."""
    if isinstance(bucket, datetime):
        return bucket
    return datetime(bucket.year, bucket.month, bucket.day, tzinfo=UTC)


def present(flag: bool) -> str:
    return "present" if flag else "absent"


def describe(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Decimal):
        return str(value.normalize()) if value == value.to_integral() else str(value)
    return str(value)
