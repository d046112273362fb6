"""What the engine knows about freshness: watermarks, lag, pending work, per rollup and grain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from ..catalog import DistinctCount, Grain, Quantile, Rollup, rollups, sources
from ..catalog.definition import rollup_from
from ..catalog.grains import SUPPORTED_PARAMS
from ..db import definitions
from ..db.connect import scalar
from ..sql import native_query, query
from ..sql import rollup as rollup_sql
from . import rebuild, state


def rollup_status(conn: psycopg.Connection, *, now: datetime) -> list[dict[str, Any]]:
    """One dict per rollup and grain: watermark, lag behind the last complete bucket,
    pending dirty groups, and changes logged on the source but not yet fanned out."""
    pending = {(r, g): (n, oldest) for r, g, n, oldest, _
               in conn.execute(query("pending_counts"), SUPPORTED_PARAMS)}
    logged = {s: n for s, n, _ in conn.execute(query("unlogged_changes"))}
    quarantine = {(r, g): (q, f) for r, g, q, f in conn.execute(query("quarantine_counts"))}
    thresholds = {s: (t, broken) for s, t, broken in conn.execute(query("tracking_thresholds"))}
    native = bool(scalar(conn, native_query("native_in_database")))
    rows = []
    for rollup in rollups():
        marks = state.watermarks(conn, rollup)
        for grain in rollup.grains:
            wm = marks.get(grain)
            complete = grain.floor(now)
            n, oldest = pending.get((rollup.name, grain.value), (0, None))
            rows.append({
                "rollup": rollup.name,
                "grain": grain.value,
                "table": f"{rollup.schema}.{rollup.table(grain)}",
                "path": compute_path(rollup, native=native),
                "watermark": wm,
                "lag_seconds": None if wm is None else max(0, (complete - wm).total_seconds()),
                "buckets_behind": None if wm is None else len(grain.buckets(wm, complete)),
                "pending_groups": n,
                "oldest_pending_bucket": oldest,
                "quarantined_buckets": quarantine.get((rollup.name, grain.value), (0, 0))[0],
                "failing_buckets": quarantine.get((rollup.name, grain.value), (0, 0))[1],
                "source_changes_not_fanned_out": logged.get(rollup.source.name, 0)
                if grain is rollup.grains[0] else 0,
                "tracking_threshold": thresholds.get(rollup.source.name, (None, None))[0]
                if grain is rollup.grains[0] else None,
                "tracking_threshold_broken": thresholds.get(rollup.source.name, (None, None))[1]
                if grain is rollup.grains[0] else None,
            })
    return rows


def compute_path(rollup: Rollup, *, native: bool) -> str:
    """How the rollup's statements compute: `native` (the C functions of aggjobs_native,
    docs/native.md), `portable` (the same numbers in SQL), or `sql` for a rollup without a
    quantile or distinct count, which runs the same SQL either way (the C functions only
    compute quantiles, their sketches and distinct sets)."""
    if not any(isinstance(m, Quantile | DistinctCount) for m in rollup.measures):
        return "sql"
    return "native" if native else "portable"


def rebuilds(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per rollup whose changed definition is being rebuilt: the version, how far it is, and
    why its check before the swap failed, if it did (docs/rollups.md)."""
    r = definitions.recorded(conn)
    stored = r.stored
    out = []
    for b in r.building.values():
        live = definitions.live_rollup(stored[b.rollup], None)
        shadow = definitions.shadow_of(rollup_from(b.definition), b.version)
        out.append({
            "rollup": b.rollup, "version": b.version, "live_version": stored[b.rollup].version,
            "progress": rebuild.progress(conn, live, shadow, b.rebuild_from),
            "hour_watermark": state.watermarks(conn, shadow).get(Grain.HOUR),
            "rebuild_from": b.rebuild_from, "check_error": b.check_error,
        })
    return out


def unsupported_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per source holding any, its raw rows outside the supported times (docs/rollups.md):
    they are in no bucket of any rollup, so someone must fix or delete them. Counted by
    two range scans of the time index; `query` finds them."""
    found = []
    for source in sources():
        n = scalar(conn, rollup_sql.count_unsupported_rows(source))
        if n:
            found.append({
                "source": source.name,
                "table": f"{source.schema}.{source.table}",
                "time_column": source.time_column,
                "rows": n,
                "query": rollup_sql.unsupported_rows(source).as_string(conn),
            })
    return found
