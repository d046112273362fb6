"""The materialized views equal what the RAW tables give, recomputed here in plain SQL.

Semantics compared (those of src/aggjobs/db/views.sql), with R = the view's `refreshed_at`
(the refresh transaction's now()):
- 24 h / 7 d windows (runs, success rates, p95, active users, last activity) are over
  HOUR BUCKETS: a row counts when the start of its UTC hour is >= R - 24 h (resp. 7 d), and
  only hours materialized by the hourly job count (the row's time < the hourly watermark; the
  hour in progress is not complete yet).
- 30 d runs and 7 d / 30 d credits are over UTC DAYS: day >= R's UTC date - 30 (resp. 7), and
  only days materialized by the daily job count (time < the daily watermark, so today is not
  in them yet).
- platform_daily_overview: one row per UTC day, the last 90 days (today included, with zeros
  until the daily job builds it); active users are distinct user_ids over all workspaces.
- p95 comes from merged sketches: within 1% of the exact percentile_cont(0.95).
Counts, sums, rates and distinct counts compare exactly.

The data sit at many ages (hours to 100 days), in three workspaces, so that each window
includes some rows and excludes others.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from aggjobs.catalog import Grain
from aggjobs.jobs.runner import RunRequest, run_job
from tests import platform as p

H = timedelta(hours=1)
AGES_H = [1, 2, 5, 23, 24, 25, 30, 47, 24 * 3, 24 * 6 + 3, 24 * 7, 24 * 7 + 1, 24 * 8,
          24 * 20, 24 * 29, 24 * 30, 24 * 31, 24 * 40, 24 * 89, 24 * 100]
BUCKET = "(date_trunc('hour', {t} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
DAY = "({t} AT TIME ZONE 'UTC')::date"

WORKSPACE_REFERENCE = f"""
WITH runs AS (
    SELECT workspace_id, status, runtime_seconds, started_at,
           {BUCKET.format(t="started_at")} AS hb, {DAY.format(t="started_at")} AS d
    FROM public.agent_runs
), h AS (  -- hour-bucket windows over materialized hours
    SELECT workspace_id,
           count(*) FILTER (WHERE hb >= %(r)s - interval '24 hours') AS runs_24h,
           count(*) FILTER (WHERE hb >= %(r)s - interval '24 hours' AND status = 'completed')
               AS ok_24h,
           count(*) AS runs_7d, count(*) FILTER (WHERE status = 'completed') AS ok_7d,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds) AS p95_7d,
           max(hb) + interval '1 hour' AS last_hour_end
    FROM runs WHERE hb >= %(r)s - interval '7 days' AND started_at < %(hwm_runs)s
    GROUP BY workspace_id
), m AS (  -- day windows over materialized days
    SELECT workspace_id, count(*) AS runs_30d, count(*) FILTER (WHERE status = 'completed')
               AS ok_30d, max(d) AS last_day
    FROM runs WHERE d >= (%(r)s AT TIME ZONE 'UTC')::date - 30 AND started_at < %(dwm_runs)s
    GROUP BY workspace_id
), c AS (
    SELECT workspace_id,
           coalesce(sum(amount) FILTER (WHERE kind = 'usage'
               AND {DAY.format(t="created_at")} >= (%(r)s AT TIME ZONE 'UTC')::date - 7), 0)
               AS credits_7d,
           coalesce(sum(amount) FILTER (WHERE kind = 'usage'), 0) AS credits_30d
    FROM public.credit_transactions
    WHERE {DAY.format(t="created_at")} >= (%(r)s AT TIME ZONE 'UTC')::date - 30
      AND created_at < %(dwm_credits)s
    GROUP BY workspace_id
), u AS (
    SELECT workspace_id, count(DISTINCT user_id) AS users_7d,
           max({BUCKET.format(t="occurred_at")}) + interval '1 hour' AS last_hour_end
    FROM public.user_events
    WHERE {BUCKET.format(t="occurred_at")} >= %(r)s - interval '7 days'
      AND occurred_at < %(hwm_events)s
    GROUP BY workspace_id
), w AS (
    SELECT workspace_id FROM h UNION SELECT workspace_id FROM m
    UNION SELECT workspace_id FROM c UNION SELECT workspace_id FROM u
)
SELECT w.workspace_id,
       coalesce(h.runs_24h, 0) AS runs_24h,
       round(h.ok_24h::numeric / nullif(h.runs_24h, 0), 4) AS success_rate_24h,
       coalesce(h.runs_7d, 0) AS runs_7d,
       round(h.ok_7d::numeric / nullif(h.runs_7d, 0), 4) AS success_rate_7d,
       coalesce(m.runs_30d, 0) AS runs_30d,
       round(m.ok_30d::numeric / nullif(m.runs_30d, 0), 4) AS success_rate_30d,
       h.p95_7d AS p95_runtime_7d,
       coalesce(c.credits_7d, 0) AS credits_7d, coalesce(c.credits_30d, 0) AS credits_30d,
       coalesce(u.users_7d, 0) AS active_users_7d,
       greatest(h.last_hour_end, u.last_hour_end,
                (m.last_day + 1)::timestamp AT TIME ZONE 'UTC') AS last_activity
FROM w LEFT JOIN h USING (workspace_id) LEFT JOIN m USING (workspace_id)
LEFT JOIN c USING (workspace_id) LEFT JOIN u USING (workspace_id)
ORDER BY w.workspace_id
"""

PLATFORM_REFERENCE = f"""
WITH days AS (
    SELECT d::date AS day FROM generate_series((%(r)s AT TIME ZONE 'UTC')::date - 89,
        (%(r)s AT TIME ZONE 'UTC')::date, interval '1 day') AS d
), runs AS (
    SELECT {DAY.format(t="started_at")} AS day, count(*) AS runs,
           count(*) FILTER (WHERE status = 'completed') AS ok,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(DISTINCT workspace_id) AS workspaces,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds) AS p95
    FROM public.agent_runs WHERE started_at < %(dwm_runs)s GROUP BY 1
), users AS (
    SELECT {DAY.format(t="occurred_at")} AS day, count(DISTINCT user_id) AS users,
           count(*) AS events
    FROM public.user_events WHERE occurred_at < %(dwm_events)s GROUP BY 1
), credits AS (
    SELECT {DAY.format(t="created_at")} AS day,
           coalesce(sum(amount) FILTER (WHERE kind = 'usage'), 0) AS used,
           coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0) AS refunded,
           coalesce(sum(amount) FILTER (WHERE kind = 'grant'), 0) AS granted
    FROM public.credit_transactions WHERE created_at < %(dwm_credits)s GROUP BY 1
)
SELECT days.day, coalesce(runs.runs, 0) AS total_executions,
       coalesce(runs.ok, 0) AS successful_executions,
       coalesce(runs.failed, 0) AS failed_executions,
       round(runs.ok::numeric / nullif(runs.runs, 0), 4) AS success_rate,
       runs.p95 AS p95_runtime, coalesce(runs.workspaces, 0) AS active_workspaces,
       coalesce(users.users, 0) AS active_users, coalesce(users.events, 0) AS total_events,
       coalesce(credits.used, 0) AS credits_used,
       coalesce(credits.refunded, 0) AS credits_refunded,
       coalesce(credits.granted, 0) AS credits_granted,
       coalesce(credits.used, 0) - coalesce(credits.refunded, 0) AS net_credits
FROM days LEFT JOIN runs USING (day) LEFT JOIN users USING (day)
LEFT JOIN credits USING (day)
ORDER BY days.day
"""


def load(conn: psycopg.Connection, now: datetime) -> None:
    top = Grain.HOUR.floor(now)
    for n, age in enumerate(AGES_H):
        for k in range(3):
            at = top - age * H + timedelta(minutes=3 + 19 * k)
            ws = 1 + (n + k) % 3
            status = ("completed", "failed", "completed", "cancelled", "running")[(n + k) % 5]
            p.run(conn, ws=ws, at=at, status=status, runtime=0.5 + (n * 13 + k * 7) % 29,
                  credits=f"{(n + k) % 4}.25", user=1 + (n * k) % 4)
            p.event(conn, ws=ws, user=1 + (n + 2 * k) % 6, at=at)
            p.credit(conn, ws=ws, kind=("usage", "refund", "grant", "usage", "adjustment")[
                (n + k) % 5], amount=f"{1 + k}.5", at=at)
    # The hour in progress: in no window yet (not materialized).
    p.run(conn, ws=1, at=now - timedelta(seconds=1) if now - top > timedelta(seconds=1)
          else top, runtime=99.0)


def rows(conn: psycopg.Connection, query: str, params: dict | None = None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def assert_same(view: list[dict], ref: list[dict], key: str, p95: str) -> None:
    assert [r[key] for r in view] == [r[key] for r in ref]
    for v, e in zip(view, ref, strict=True):
        for name, want in e.items():
            got = v[name]
            if name == p95 and want is not None and got is not None:
                assert math.isclose(got, want, rel_tol=0.01), (v[key], name, got, want)
            else:
                assert got == want, (v[key], name, got, want)


def test_views_equal_recomputation_from_raw_rows(conn, settings) -> None:
    now = datetime.now(UTC)
    load(conn, now)
    s = settings.model_copy(update={"max_buckets_per_refresh": 24 * 120,
                                    "hours_per_transaction": 24 * 20, "retry_base_s": 0.05})
    for name in ("hourly_rollup", "daily_rollup", "refresh_materialized_views"):
        result = run_job(RunRequest(job=name, as_of=now), s)
        assert result.status == "succeeded", result

    marks = p.watermarks(conn)
    params = {
        "hwm_runs": marks[("execution_metrics", "hour")],
        "hwm_events": marks[("user_activity", "hour")],
        "dwm_runs": marks[("execution_metrics", "day")],
        "dwm_events": marks[("user_activity", "day")],
        "dwm_credits": marks[("credit_consumption", "day")],
    }
    assert params["hwm_runs"] == Grain.HOUR.floor(now)
    assert params["dwm_runs"] == Grain.DAY.floor(now)

    view = rows(conn, "SELECT * FROM analytics.workspace_overview ORDER BY workspace_id")
    assert len(view) == 3
    refreshed = {r["refreshed_at"] for r in view}
    assert len(refreshed) == 1
    params["r"] = refreshed.pop()
    ref = rows(conn, WORKSPACE_REFERENCE, params)
    assert_same(view, ref, "workspace_id", "p95_runtime_7d")
    # The data are spread so that every window both includes and excludes some rows.
    total = {k: sum(r[k] for r in view) for k in ("runs_24h", "runs_7d", "runs_30d")}
    assert 0 < total["runs_24h"] < total["runs_7d"] and total["runs_30d"] > 0, total
    assert all(r["health_score"] is None for r in view)  # health scores are not built yet

    daily = rows(conn, "SELECT * FROM analytics.platform_daily_overview ORDER BY day")
    assert len(daily) == 90
    params["r"] = daily[0]["refreshed_at"]
    ref = rows(conn, PLATFORM_REFERENCE, params)
    assert_same(daily, ref, "day", "p95_runtime")
    assert sum(r["total_executions"] for r in daily) > 0
    assert daily[-1]["day"] == params["r"].astimezone(UTC).date()
    assert daily[-1]["total_executions"] == 0  # today: not built by the daily job yet
