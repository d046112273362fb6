"""Hand-written recomputations from the raw rows, independent of the SQL generator.

Execution metrics use the seed's SQL; buckets are spelled out per grain in UTC.
"""

from __future__ import annotations

import math
from datetime import UTC
from decimal import Decimal

import psycopg

from aggjobs.catalog import ROLLUPS, Grain, Rollup

BUCKET = {
    Grain.HOUR: "date_trunc('hour', {t} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    Grain.DAY: "({t} AT TIME ZONE 'UTC')::date",
    Grain.WEEK: "date_trunc('week', {t} AT TIME ZONE 'UTC')::date",
}

EXECUTION = """
SELECT workspace_id, {b} AS bucket,
    COUNT(*), COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FILTER (WHERE status = 'failed'),
    AVG(runtime_seconds), PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY runtime_seconds),
    SUM(credits_consumed)
FROM public.agent_runs GROUP BY 1, 2
"""
ACTIVITY = """
SELECT workspace_id, {b} AS bucket, count(DISTINCT user_id), count(*)
FROM public.user_events GROUP BY 1, 2
"""
CREDITS = """
SELECT workspace_id, {b} AS bucket,
    coalesce(sum(amount) FILTER (WHERE kind = 'usage'), 0),
    coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0),
    coalesce(sum(amount) FILTER (WHERE kind = 'grant'), 0),
    coalesce(sum(amount) FILTER (WHERE kind = 'usage'), 0)
      - coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0),
    count(*)
FROM public.credit_transactions GROUP BY 1, 2
"""
AGENTS = """
SELECT workspace_id, {b} AS bucket, agent_id,
    count(*), count(*) FILTER (WHERE status = 'failed')
FROM public.agent_runs GROUP BY 1, 2, 3
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
    rows = conn.execute(text.format(b=BUCKET[grain].format(t=t))).fetchall()
    return keyed(rollup, rows, below)


def stored(conn: psycopg.Connection, rollup: str, grain: Grain, below) -> dict:
    r = next(x for x in ROLLUPS if x.name == rollup)
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
    if isinstance(a, (int, Decimal)) and isinstance(b, (int, Decimal)):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


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
            # p95 of merged grains comes from the sketch: the contract allows 1%.
            rel = 0.01 if name == "p95_runtime" and grain is not Grain.HOUR else 1e-9
            assert close(a, b, rel), f"{rollup} {grain.value} {key} {name}: {a} != {b}"
    return len(want)


def assert_all_match(conn: psycopg.Connection, *only: Rollup) -> None:
    """Every rollup (or those named: others on the same source were not brought up to date
    since its rows changed) equals the raw rows below each grain's watermark."""
    marks = dict(((r, g), wm) for r, g, wm in conn.execute(
        "SELECT rollup, grain, watermark FROM aggjobs.watermarks"))
    for rollup in only or ROLLUPS:
        for grain in rollup.grains:
            assert_matches(conn, rollup.name, grain, marks[(rollup.name, grain.value)])
