"""The materialized views equal what the RAW tables give, recomputed here in plain SQL.

Semantics compared (those of src/aggjobs/db/views.sql), with R = the view's `refreshed_at`
(the refresh transaction's now()):
- 24 h / 7 d runs and success rates and the last activity are over HOUR BUCKETS: a row counts
  when the start of its UTC hour is >= R - 24 h (resp. 7 d), and only hours materialized by
  the hourly job count (the row's time < the hourly watermark; the hour in progress is not
  complete yet).
- 30 d runs and success rates are over hour buckets too (>= R - 30 days), so that they hold
  the 7 d ones (issue 21: they were over days, without today's hours, and came out smaller).
- p95 and active users over 7 d and 7 d / 30 d credits are over UTC DAYS:
  day >= R's UTC date - 7 (resp. 30), and only days materialized by the daily job count (time
  < the daily watermark, so today is not in them yet): p95 and active users over 7 d are over
  the last 7 complete days, read from the caches kept by the step `view.caches`.
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
from aggjobs.db.view_caches import update_view_caches
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
           max(hb) + interval '1 hour' AS last_hour_end
    FROM runs WHERE hb >= %(r)s - interval '7 days' AND started_at < %(hwm_runs)s
    GROUP BY workspace_id
), wd AS (  -- the last 7 complete days, materialized
    SELECT workspace_id,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds) AS p95_7d
    FROM runs
    WHERE d >= (%(r)s AT TIME ZONE 'UTC')::date - 7 AND d < (%(r)s AT TIME ZONE 'UTC')::date
      AND started_at < %(dwm_runs)s
    GROUP BY workspace_id
), ud AS (
    SELECT workspace_id, count(DISTINCT user_id) AS users_7d
    FROM public.user_events
    WHERE {DAY.format(t="occurred_at")} >= (%(r)s AT TIME ZONE 'UTC')::date - 7
      AND {DAY.format(t="occurred_at")} < (%(r)s AT TIME ZONE 'UTC')::date
      AND occurred_at < %(dwm_events)s
    GROUP BY workspace_id
), m AS (  -- the 30 days: hour buckets like the 7 d, over materialized hours
    SELECT workspace_id, count(*) AS runs_30d, count(*) FILTER (WHERE status = 'completed')
               AS ok_30d,
           max(d) FILTER (WHERE d > ((%(r)s - interval '30 days') AT TIME ZONE 'UTC')::date
                            AND started_at < %(dwm_runs)s) AS last_day
    FROM runs WHERE hb >= %(r)s - interval '30 days' AND started_at < %(hwm_runs)s
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
    SELECT workspace_id, max({BUCKET.format(t="occurred_at")}) + interval '1 hour' AS last_hour_end
    FROM public.user_events
    WHERE {BUCKET.format(t="occurred_at")} >= %(r)s - interval '7 days'
      AND occurred_at < %(hwm_events)s
    GROUP BY workspace_id
), w AS (
    SELECT workspace_id FROM h UNION SELECT workspace_id FROM m
    UNION SELECT workspace_id FROM c UNION SELECT workspace_id FROM u
    UNION SELECT workspace_id FROM wd UNION SELECT workspace_id FROM ud
)
SELECT w.workspace_id,
       coalesce(h.runs_24h, 0) AS runs_24h,
       round(h.ok_24h::numeric / nullif(h.runs_24h, 0), 4) AS success_rate_24h,
       coalesce(h.runs_7d, 0) AS runs_7d,
       round(h.ok_7d::numeric / nullif(h.runs_7d, 0), 4) AS success_rate_7d,
       coalesce(m.runs_30d, 0) AS runs_30d,
       round(m.ok_30d::numeric / nullif(m.runs_30d, 0), 4) AS success_rate_30d,
       wd.p95_7d AS p95_runtime_7d,
       coalesce(c.credits_7d, 0) AS credits_7d, coalesce(c.credits_30d, 0) AS credits_30d,
       coalesce(ud.users_7d, 0) AS active_users_7d,
       greatest(h.last_hour_end, u.last_hour_end,
                (m.last_day + 1)::timestamp AT TIME ZONE 'UTC') AS last_activity
FROM w LEFT JOIN h USING (workspace_id) LEFT JOIN m USING (workspace_id)
LEFT JOIN c USING (workspace_id) LEFT JOIN u USING (workspace_id)
LEFT JOIN wd USING (workspace_id) LEFT JOIN ud USING (workspace_id)
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


def run_jobs(settings, now: datetime, names=("hourly_rollup", "daily_rollup",
                                              "refresh_materialized_views")) -> None:
    s = settings.model_copy(update={"max_buckets_per_refresh": 24 * 120,
                                    "hours_per_transaction": 24 * 20, "retry_base_s": 0.05})
    for name in names:
        result = run_job(RunRequest(job=name, as_of=now), s)
        assert result.status == "succeeded", result


def check(conn: psycopg.Connection, now: datetime) -> tuple[dict, dict]:
    """Both views against the raw rows; returns them keyed by workspace, and by day."""
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
    refreshed = {r["refreshed_at"] for r in view}
    assert len(refreshed) == 1
    params["r"] = refreshed.pop()
    ref = rows(conn, WORKSPACE_REFERENCE, params)
    assert_same(view, ref, "workspace_id", "p95_runtime_7d")

    daily = rows(conn, "SELECT * FROM analytics.platform_daily_overview ORDER BY day")
    assert len(daily) == 90
    params["r"] = daily[0]["refreshed_at"]
    ref = rows(conn, PLATFORM_REFERENCE, params)
    assert_same(daily, ref, "day", "p95_runtime")
    assert daily[-1]["day"] == params["r"].astimezone(UTC).date()
    assert daily[-1]["total_executions"] == 0  # today: not built by the daily job yet
    return {r["workspace_id"]: r for r in view}, {r["day"]: r for r in daily}


def test_views_equal_recomputation_from_raw_rows(conn, settings) -> None:
    now = datetime.now(UTC)
    load(conn, now)
    run_jobs(settings, now)
    view, daily = check(conn, now)
    assert len(view) == 3
    # The data are spread so that every window both includes and excludes some rows.
    rs = view.values()
    total = {k: sum(r[k] for r in rs) for k in ("runs_24h", "runs_7d", "runs_30d")}
    assert 0 < total["runs_24h"] < total["runs_7d"] < total["runs_30d"], total
    assert all(r["runs_24h"] <= r["runs_7d"] <= r["runs_30d"] for r in rs), view
    assert all(r["p95_runtime_7d"] is not None and r["active_users_7d"] > 0 for r in rs)
    assert all(r["health_score"] is None for r in rs)  # health scores are not built yet
    assert sum(r["total_executions"] for r in daily.values()) > 0
    assert sum(r["p95_runtime"] is not None for r in daily.values()) >= 10
    # Two more refreshes with nothing changed recompute nothing and change nothing.
    result = run_job(RunRequest(job="refresh_materialized_views"), settings)
    caches = next(st for st in result.steps if st.name == "view.caches")
    assert caches.status == "succeeded" and caches.rows == 0, caches
    again, again_daily = check(conn, now)
    for a, b in ((view, again), (daily, again_daily)):
        assert {k: {c: v for c, v in r.items() if c != "refreshed_at"} for k, r in a.items()} \
            == {k: {c: v for c, v in r.items() if c != "refreshed_at"} for k, r in b.items()}


def test_views_follow_late_rows_into_old_days(conn, settings) -> None:
    now = datetime.now(UTC)
    load(conn, now)
    run_jobs(settings, now)
    view, daily = check(conn, now)
    today = now.date()
    # Late rows: into a day of workspace 2's 7-day window, and into a day 40 days back
    # (platform only). Runtimes far above the rest move the p95s; new users the counts.
    in_window = datetime.combine(today - timedelta(days=3), datetime.min.time(), UTC)
    old = datetime.combine(today - timedelta(days=40), datetime.min.time(), UTC)
    for k in range(3):
        p.run(conn, ws=2, at=in_window + timedelta(hours=5, minutes=k), runtime=500.0 + k)
        p.event(conn, ws=2, user=70 + k, at=in_window + timedelta(hours=5, minutes=k))
        p.run(conn, ws=1, at=old + timedelta(hours=7, minutes=k), runtime=900.0 + k)
        p.event(conn, ws=1, user=80 + k, at=old + timedelta(hours=7, minutes=k))
    run_jobs(settings, now)
    after, after_daily = check(conn, now)
    # The changes reached the views (the comparison above would fail with stale caches).
    assert after[2]["p95_runtime_7d"] > 1.5 * view[2]["p95_runtime_7d"]
    assert after[2]["active_users_7d"] == view[2]["active_users_7d"] + 3
    for day, users in ((in_window.date(), 3), (old.date(), 3)):
        assert after_daily[day]["active_users"] == daily[day]["active_users"] + users
        assert after_daily[day]["p95_runtime"] > 1.5 * (daily[day]["p95_runtime"] or 1.0)
    assert after[1]["p95_runtime_7d"] == view[1]["p95_runtime_7d"]  # not in its window
    assert after[3] == {**view[3], "refreshed_at": after[3]["refreshed_at"]}


def test_views_follow_deletes_that_empty_a_day(conn, settings) -> None:
    now = datetime.now(UTC)
    load(conn, now)
    run_jobs(settings, now)
    view, daily = check(conn, now)
    today = now.date()
    # Every run and event of one day; every run and event of workspace 3 in its 7-day window.
    emptied = next(d for d, r in sorted(daily.items())
                   if r["active_users"] > 0 and r["p95_runtime"] is not None)
    assert view[3]["p95_runtime_7d"] is not None and view[3]["active_users_7d"] > 0
    conn.execute("DELETE FROM agent_runs WHERE (started_at AT TIME ZONE 'UTC')::date = %s"
                 " OR workspace_id = 3 AND (started_at AT TIME ZONE 'UTC')::date"
                 " BETWEEN %s AND %s", (emptied, today - timedelta(days=7), today))
    conn.execute("DELETE FROM user_events WHERE (occurred_at AT TIME ZONE 'UTC')::date = %s"
                 " OR workspace_id = 3 AND (occurred_at AT TIME ZONE 'UTC')::date"
                 " BETWEEN %s AND %s", (emptied, today - timedelta(days=7), today))
    run_jobs(settings, now)
    after, after_daily = check(conn, now)
    assert after_daily[emptied]["p95_runtime"] is None
    assert after_daily[emptied]["active_users"] == after_daily[emptied]["total_executions"] == 0
    # Workspace 3 is still listed (credits), with nothing over the 7-day window.
    assert after[3]["p95_runtime_7d"] is None and after[3]["active_users_7d"] == 0
    assert conn.execute("SELECT count(*) FROM analytics.workspace_window_stats"
                        " WHERE workspace_id = 3").fetchone()[0] == 0


def test_views_follow_the_window_moving_forward(conn, settings) -> None:
    now = datetime.now(UTC)
    load(conn, now)
    run_jobs(settings, now)
    view, _ = check(conn, now)
    today = now.date()
    # The caches as they were yesterday: windows [today - 8, today - 1).
    update_view_caches(conn, today - timedelta(days=1))
    stale = {ws: (p95, users) for ws, p95, users in conn.execute(
        "SELECT workspace_id, p95_runtime_7d, active_users_7d"
        " FROM analytics.workspace_window_stats WHERE runs_window_end = %s",
        (today - timedelta(days=1),))}
    assert set(stale) == set(view)
    # Yesterday's windows give other values than today's (or this test could not fail).
    assert any(not math.isclose(stale[ws][0], view[ws]["p95_runtime_7d"], rel_tol=0.02)
               or stale[ws][1] != view[ws]["active_users_7d"] for ws in view), (stale, view)
    # A view refreshed over caches of another window shows no value rather than a stale one.
    conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY analytics.workspace_overview")
    shown = rows(conn, "SELECT p95_runtime_7d, active_users_7d FROM analytics.workspace_overview")
    assert shown and all(r["p95_runtime_7d"] is None and r["active_users_7d"] == 0
                         for r in shown)
    # The job's step moves every window to today's: the views equal the raw rows again.
    run_jobs(settings, now, names=("refresh_materialized_views",))
    after, _ = check(conn, now)
    assert {ws: (r["p95_runtime_7d"], r["active_users_7d"]) for ws, r in after.items()} == {
        ws: (r["p95_runtime_7d"], r["active_users_7d"]) for ws, r in view.items()}


def test_30_days_hold_the_7_days(conn, settings) -> None:
    """A week of data, today's hours included: the 30 days count every run the 7 days count
    (they were over days only, without today's materialized hours, and came out smaller)."""
    now = datetime.now(UTC)
    top = Grain.HOUR.floor(now)
    for n, age in enumerate([1, 2, 3, 20, 30, 50, 100, 150]):
        for ws in (1, 2):
            p.run(conn, ws=ws, at=top - age * H, status=("completed", "failed")[n % 2])
    run_jobs(settings, now)
    view, _ = check(conn, now)
    assert {ws: (r["runs_7d"], r["runs_30d"]) for ws, r in view.items()} == {1: (8, 8),
                                                                              2: (8, 8)}
