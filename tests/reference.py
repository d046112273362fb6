"""Hand-written recomputations from the raw rows, independent of the SQL generator.

Execution metrics use the seed's SQL (docs/contract.md#the-seed); buckets are spelled out per grain in UTC. The
documented rules for hostile rows (docs/rollups.md) are spelled out here too: rows outside
the supported times are in no bucket; avg is the float sum over the count, +-Infinity when
the sum is past the float range (computed here from the exact numeric sum); merged grains'
p95 is checked against the values as the sketch holds them; NaN equals NaN.
"""

from __future__ import annotations

import math
from datetime import UTC, timedelta
from decimal import Decimal

import psycopg

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain, Rollup

BUCKET = {
    Grain.HOUR: "date_trunc('hour', {t} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    Grain.DAY: "({t} AT TIME ZONE 'UTC')::date",
    Grain.WEEK: "date_trunc('week', {t} AT TIME ZONE 'UTC')::date",
}

SUPPORTED = "{t} >= '1970-01-01 00:00+00' AND {t} < '2200-01-01 00:00+00'"
# What the sketch holds for a value (merged grains' p95): aggjobs.sketch_key's domain.
SKETCH_DOMAIN = """CASE WHEN runtime_seconds <= 1e-9 THEN 0::float8
    WHEN runtime_seconds = 'Infinity'::float8 OR runtime_seconds = 'NaN'::float8
        THEN 'Infinity'::float8
    WHEN runtime_seconds > power(1.015::float8, 32766) THEN power(1.015::float8, 32766)
    ELSE runtime_seconds END"""
EXECUTION = """
SELECT workspace_id, {b} AS bucket,
    COUNT(*), COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FILTER (WHERE status = 'failed'),
    NULL, COUNT(runtime_seconds),
    PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY {v}),
    SUM(credits_consumed)
FROM public.agent_runs WHERE {w} GROUP BY 1, 2
"""
ACTIVITY = """
SELECT workspace_id, {b} AS bucket, count(DISTINCT user_id), count(*)
FROM public.user_events WHERE {w} GROUP BY 1, 2
"""
CREDITS = """
SELECT workspace_id, {b} AS bucket,
    coalesce(sum(amount) FILTER (WHERE kind = 'usage'), 0),
    coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0),
    coalesce(sum(amount) FILTER (WHERE kind = 'grant'), 0),
    coalesce(sum(amount) FILTER (WHERE kind = 'usage'), 0)
      - coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0),
    count(*)
FROM public.credit_transactions WHERE {w} GROUP BY 1, 2
"""
AGENTS = """
SELECT workspace_id, {b} AS bucket, agent_id,
    count(*), count(*) FILTER (WHERE status = 'failed')
FROM public.agent_runs WHERE {w} GROUP BY 1, 2, 3
"""
QUERIES = {
    "execution_metrics": (EXECUTION, "started_at"),
    "user_activity": (ACTIVITY, "occurred_at"),
    "credit_consumption": (CREDITS, "created_at"),
    "agent_executions": (AGENTS, "started_at"),
}
# Dimensions beyond the workspace: keys are (workspace, bucket, *these).
FURTHER = {"agent_executions": ["agent_id"]}
COLUMNS = {
    "execution_metrics": ["total_executions", "successful_executions", "failed_executions",
                          "avg_runtime", "p95_runtime", "total_credits"],
    "user_activity": ["active_users", "total_events"],
    "credit_consumption": ["credits_used", "credits_refunded", "credits_granted", "net_credits",
                           "transactions"],
    "agent_executions": ["total_executions", "failed_executions"],
}


def expected(conn: psycopg.Connection, rollup: str, grain: Grain, below) -> dict:
    """(workspace, bucket, *further dimensions) -> measures, for buckets starting before
    `below`."""
    text, t = QUERIES[rollup]
    value = "runtime_seconds" if grain is Grain.HOUR else SKETCH_DOMAIN
    rows = conn.execute(text.format(b=BUCKET[grain].format(t=t), w=SUPPORTED.format(t=t),
                                    v=value)).fetchall()
    if rollup == "execution_metrics":
        sums = runtime_sums(conn, grain)
        rows = [(*r[:5], sums[r[:2]] / r[6] if r[6] else None, *r[7:]) for r in rows]
    return keyed(rollup, rows, below)


HOURLY_SUMS = f"""
SELECT workspace_id, {BUCKET[Grain.HOUR].format(t="started_at")}, SUM(runtime_seconds::numeric)
FROM public.agent_runs WHERE {SUPPORTED.format(t="started_at")} AND runtime_seconds IS NOT NULL
GROUP BY 1, 2
"""


def runtime_sums(conn: psycopg.Connection, grain: Grain) -> dict:
    """(workspace, bucket) -> the float sum of its runtimes as defined: each hour's exact
    sum rounded (+-inf past the float range), then each day's of its hours, each week's of
    its days."""
    sums = {(ws, h): float(total) for ws, h, total in conn.execute(HOURLY_SUMS).fetchall()}
    for step, bucket in ((Grain.DAY, lambda h: h.astimezone(UTC).date()),
                         (Grain.WEEK, lambda d: d - timedelta(days=d.weekday()))):
        if grain is Grain.HOUR:
            break
        parts: dict = {}
        for (ws, b), value in sums.items():
            parts.setdefault((ws, bucket(b)), []).append(value)
        sums = {key: float_sum(values) for key, values in parts.items()}
        if grain is step:
            break
    return sums


def float_sum(values: list[float]) -> float:
    """NaN and infinities as IEEE addition has them; otherwise the exact sum, rounded."""
    if any(math.isnan(v) for v in values) or {math.inf, -math.inf} <= set(values):
        return math.nan
    if math.inf in values or -math.inf in values:
        return math.inf if math.inf in values else -math.inf
    return float(sum(Decimal(v) for v in values))


def stored(conn: psycopg.Connection, rollup: str, grain: Grain, below) -> dict:
    r = next(x for x in BUILTIN_ROLLUPS if x.name == rollup)
    cols = ", ".join(["workspace_id", grain.column, *FURTHER.get(rollup, []), *COLUMNS[rollup]])
    rows = conn.execute(f"SELECT {cols} FROM analytics.{r.table(grain)}").fetchall()
    return keyed(rollup, rows, below)


def keyed(rollup: str, rows: list[tuple], below) -> dict:
    n = 2 + len(FURTHER.get(rollup, []))
    return {row[:n]: row[n:] for row in rows if starts_before(row[1], below)}


def starts_before(bucket, below) -> bool:
    if below is None:
        return False
    if hasattr(bucket, "hour"):
        return bucket < below
    return bucket < below.astimezone(UTC).date()  # date buckets: `below` is a UTC midnight


def close(a, b, rel: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if is_nan(a) or is_nan(b):
        return is_nan(a) and is_nan(b)
    if isinstance(a, (int, Decimal)) and isinstance(b, (int, Decimal)):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


def is_nan(x) -> bool:
    return (isinstance(x, float) and math.isnan(x)) or (isinstance(x, Decimal) and x.is_nan())


def assert_matches(conn: psycopg.Connection, rollup: str, grain: Grain, below) -> int:
    """Every stored row equals the recomputation; no row missing or extra. Returns groups."""
    want, have = expected(conn, rollup, grain, below), stored(conn, rollup, grain, below)
    assert have.keys() == want.keys(), (
        f"{rollup} {grain.value}: missing {sorted(want.keys() - have.keys())[:5]}, "
        f"extra {sorted(have.keys() - want.keys())[:5]}"
    )
    names = COLUMNS[rollup]
    for key, exp in want.items():
        for name, a, b in zip(names, have[key], exp, strict=True):
            # p95 of merged grains comes from the sketch: the contract allows 1% (docs/contract.md#exactness).
            rel = 0.01 if name == "p95_runtime" and grain is not Grain.HOUR else 1e-9
            assert close(a, b, rel), f"{rollup} {grain.value} {key} {name}: {a} != {b}"
    return len(want)


def assert_all_match(conn: psycopg.Connection, *only: Rollup) -> None:
    """Every rollup (or those named: others on the same source were not brought up to date
    since its rows changed) equals the raw rows below each grain's watermark."""
    marks = dict(((r, g), wm) for r, g, wm in conn.execute(
        "SELECT rollup, grain, watermark FROM aggjobs.watermarks"))
    for rollup in only or BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            assert_matches(conn, rollup.name, grain, marks[(rollup.name, grain.value)])
