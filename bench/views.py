"""The materialized views at scale, before and after the view caches (docs/rollups.md).

    .venv/bin/python bench/views.py [--url URL] [--workspaces 5000] [--days 90] [--repeat 3]
                                    [--reuse]

Builds a database `aggjobs_bench_views` on the server of --url (default: the test server
postgresql://postgres@127.0.0.1:5432/postgres), migrated, with synthetic ROLLUP rows written
directly (no raw rows): for each workspace, 90 complete days of daily rows ending yesterday
minus one (yesterday is "the new day", added later), each with a p95 sketch of ~270 keys and
a set of ~60 users; 8 days of hourly rows (~130 sketch keys, ~12 users each); daily credits;
a week of health scores. Sketches and user sets are drawn from pools, shifted per workspace.

Then measures, each --repeat times (median):

  before   REFRESH MATERIALIZED VIEW CONCURRENTLY of the previous views.sql (kept below as
           BEFORE_VIEWS, created under other names): the sketches and user sets merged anew
  cache    the `view.caches` step: first fill; nothing changed (the 15-minute case); one
           workspace's row of a day 40 days back rewritten (a late change); the new day's rows
           for every workspace (the daily job's output: one day and every window)
  after    each view's REFRESH ... CONCURRENTLY, and the whole `refresh_materialized_views`
           job as run by `aggjobs run` (cache step included, job bookkeeping included)

Prints a table of milliseconds. `--reuse` keeps an existing database (skips the load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aggjobs.db.migrate import migrate
from aggjobs.db.view_caches import update_view_caches
from aggjobs.jobs.model import StepContext
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.jobs.steps import refresh_view_caches
from aggjobs.settings import Settings

DB = "aggjobs_bench_views"
APP = "aggjobs:bench-views"

# The views as they were before the caches (views.sql at 5140bff), under other names.
BEFORE_VIEWS = """
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.before_workspace_overview AS
WITH runs AS (
    SELECT workspace_id,
           sum(total_executions) FILTER (WHERE hour >= now() - interval '24 hours') AS runs_24h,
           sum(successful_executions) FILTER (WHERE hour >= now() - interval '24 hours') AS ok_24h,
           sum(total_executions) FILTER (WHERE hour >= now() - interval '7 days') AS runs_7d,
           sum(successful_executions) FILTER (WHERE hour >= now() - interval '7 days') AS ok_7d,
           max(hour) + interval '1 hour' AS last_run_hour_end
    FROM analytics.execution_metrics_hourly
    WHERE hour >= now() - interval '7 days'
    GROUP BY workspace_id
), runs_30d AS (
    SELECT workspace_id, sum(total_executions) AS runs_30d, sum(successful_executions) AS ok_30d,
           max(day) AS last_run_day
    FROM analytics.execution_metrics_daily
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 30
    GROUP BY workspace_id
), p95_7d AS (
    -- Sketches of the last 7 days' hours merged: within 0.75% of the exact p95.
    SELECT workspace_id,
           aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(n ORDER BY k), 0.95)
               AS p95_runtime_7d
    FROM (
        SELECT h.workspace_id, u.k, sum(u.n)::bigint AS n
        FROM analytics.execution_metrics_hourly AS h,
             unnest(h.p95_runtime__keys, h.p95_runtime__counts) AS u(k, n)
        WHERE h.hour >= now() - interval '7 days'
        GROUP BY 1, 2
    ) AS merged
    GROUP BY workspace_id
), credits AS (
    SELECT workspace_id,
           sum(credits_used) FILTER (WHERE day >= (now() AT TIME ZONE 'UTC')::date - 7)
               AS credits_used_7d,
           sum(credits_used) AS credits_used_30d
    FROM analytics.credit_consumption_daily
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 30
    GROUP BY workspace_id
), users_7d AS (
    -- Exact: the union of the hours' user sets, never a sum of counts.
    SELECT h.workspace_id, count(DISTINCT u.user_id) AS active_users_7d,
           max(h.hour) + interval '1 hour' AS last_event_hour_end
    FROM analytics.user_activity_hourly AS h, unnest(h.active_users__set) AS u(user_id)
    WHERE h.hour >= now() - interval '7 days'
    GROUP BY h.workspace_id
), health AS (
    SELECT DISTINCT ON (workspace_id) workspace_id, score, status, day
    FROM analytics.workspace_health_daily
    ORDER BY workspace_id, day DESC
), workspaces AS (
    SELECT workspace_id FROM runs UNION SELECT workspace_id FROM runs_30d
    UNION SELECT workspace_id FROM credits UNION SELECT workspace_id FROM users_7d
    UNION SELECT workspace_id FROM health
)
SELECT w.workspace_id,
       coalesce(r.runs_24h, 0)::bigint AS runs_24h,
       round(r.ok_24h::numeric / nullif(r.runs_24h, 0), 4) AS success_rate_24h,
       coalesce(r.runs_7d, 0)::bigint AS runs_7d,
       round(r.ok_7d::numeric / nullif(r.runs_7d, 0), 4) AS success_rate_7d,
       coalesce(m.runs_30d, 0)::bigint AS runs_30d,
       round(m.ok_30d::numeric / nullif(m.runs_30d, 0), 4) AS success_rate_30d,
       p.p95_runtime_7d,
       coalesce(c.credits_used_7d, 0) AS credits_7d,
       coalesce(c.credits_used_30d, 0) AS credits_30d,
       coalesce(u.active_users_7d, 0) AS active_users_7d,
       h.score AS health_score,
       h.status AS health_status,
       h.day AS health_day,
       greatest(r.last_run_hour_end, u.last_event_hour_end,
                (m.last_run_day + 1)::timestamp AT TIME ZONE 'UTC') AS last_activity,
       now() AS refreshed_at
FROM workspaces AS w
LEFT JOIN runs AS r USING (workspace_id)
LEFT JOIN runs_30d AS m USING (workspace_id)
LEFT JOIN p95_7d AS p USING (workspace_id)
LEFT JOIN credits AS c USING (workspace_id)
LEFT JOIN users_7d AS u USING (workspace_id)
LEFT JOIN health AS h USING (workspace_id);

CREATE UNIQUE INDEX IF NOT EXISTS before_workspace_overview_idx
    ON analytics.before_workspace_overview (workspace_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.before_platform_daily_overview AS
WITH days AS (
    SELECT day FROM generate_series((now() AT TIME ZONE 'UTC')::date - 89,
                                    (now() AT TIME ZONE 'UTC')::date, interval '1 day') AS d(day)
), runs AS (
    SELECT day, sum(total_executions) AS runs, sum(successful_executions) AS ok,
           sum(failed_executions) AS failed, count(*) AS active_workspaces,
           sum(total_credits) AS run_credits
    FROM analytics.execution_metrics_daily
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 89
    GROUP BY day
), p95 AS (
    SELECT day, aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(n ORDER BY k), 0.95)
               AS p95_runtime
    FROM (
        SELECT d.day, u.k, sum(u.n)::bigint AS n
        FROM analytics.execution_metrics_daily AS d,
             unnest(d.p95_runtime__keys, d.p95_runtime__counts) AS u(k, n)
        WHERE d.day >= (now() AT TIME ZONE 'UTC')::date - 89
        GROUP BY 1, 2
    ) AS merged
    GROUP BY day
), users AS (
    -- Events summed per row before the unnest: the join repeats each row once per user.
    SELECT d.day, count(DISTINCT u.user_id) AS active_users
    FROM analytics.user_activity_daily AS d
    LEFT JOIN LATERAL unnest(d.active_users__set) AS u(user_id) ON true
    WHERE d.day >= (now() AT TIME ZONE 'UTC')::date - 89
    GROUP BY d.day
), events AS (
    SELECT day, sum(total_events) AS events
    FROM analytics.user_activity_daily
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 89
    GROUP BY day
), credits AS (
    SELECT day, sum(credits_used) AS credits_used, sum(credits_refunded) AS credits_refunded,
           sum(credits_granted) AS credits_granted, sum(net_credits) AS net_credits
    FROM analytics.credit_consumption_daily
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 89
    GROUP BY day
)
SELECT d.day::date AS day,
       coalesce(r.runs, 0)::bigint AS total_executions,
       coalesce(r.ok, 0)::bigint AS successful_executions,
       coalesce(r.failed, 0)::bigint AS failed_executions,
       round(r.ok::numeric / nullif(r.runs, 0), 4) AS success_rate,
       p.p95_runtime,
       coalesce(r.active_workspaces, 0)::bigint AS active_workspaces,
       coalesce(u.active_users, 0)::bigint AS active_users,
       coalesce(e.events, 0)::bigint AS total_events,
       coalesce(c.credits_used, 0) AS credits_used,
       coalesce(c.credits_refunded, 0) AS credits_refunded,
       coalesce(c.credits_granted, 0) AS credits_granted,
       coalesce(c.net_credits, 0) AS net_credits,
       now() AS refreshed_at
FROM days AS d
LEFT JOIN runs AS r ON r.day = d.day
LEFT JOIN p95 AS p ON p.day = d.day
LEFT JOIN users AS u ON u.day = d.day
LEFT JOIN events AS e ON e.day = d.day
LEFT JOIN credits AS c ON c.day = d.day;

CREATE UNIQUE INDEX IF NOT EXISTS before_platform_daily_overview_idx
    ON analytics.before_platform_daily_overview (day);
"""
BEFORE = ("analytics.before_workspace_overview", "analytics.before_platform_daily_overview")
AFTER = ("analytics.workspace_overview", "analytics.platform_daily_overview")

LOAD = [
    # Pools: 1,000 daily sketches (~270 keys around 1.015^165 s = 12 s), 1,000 hourly ones
    # (~130 keys), 1,000 daily user sets (~60 of 200 users), 1,000 hourly ones (~12).
    """CREATE TEMP TABLE pool_sketch AS
       SELECT grain, id, array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts,
              sum(c)::bigint AS n
       FROM (SELECT g.grain, id, 150 + id %% 30 + o AS k,
                    (1 + floor(random() * g.scale))::bigint AS c
             FROM (VALUES ('day', 160, 30), ('hour', 80, 3)) AS g(grain, width, scale),
                  generate_series(0, 999) AS id,
                  LATERAL generate_series(-g.width, g.width) AS o
             WHERE random() < 0.85) AS s
       GROUP BY grain, id""",
    """CREATE TEMP TABLE pool_users AS
       SELECT grain, id, array_agg(u ORDER BY u) AS users
       FROM (SELECT g.grain, g.p, id, u, random() AS r  -- per row: not pushed down to g
             FROM (VALUES ('day', 0.3), ('hour', 0.06)) AS g(grain, p),
                  generate_series(0, 999) AS id, generate_series(0, 199) AS u) AS s
       WHERE r < p GROUP BY grain, id""",
    """INSERT INTO analytics.execution_metrics_daily
       SELECT ws, d, s.n, s.n * 9 / 10, s.n / 20, 14.0, 60.0, s.n * 0.5, 14.0 * s.n, s.n,
              s.keys, s.counts, now() - interval '1 day'
       FROM generate_series(1, %(ws)s) AS ws,
            generate_series(%(today)s::date - %(days)s - 1, %(today)s::date - 2,
                            interval '1 day') AS t(d0),
            LATERAL (SELECT t.d0::date AS d) AS dd, pool_sketch AS s
       WHERE s.grain = 'day'
         AND s.id = (ws * 7919 + (dd.d - date '2000-01-01') * 104729) %% 1000""",
    """INSERT INTO analytics.user_activity_daily
       SELECT ws, d, cardinality(u.users), cardinality(u.users) * 40,
              array(SELECT ws * 1000 + x FROM unnest(u.users) AS x), now() - interval '1 day'
       FROM generate_series(1, %(ws)s) AS ws,
            generate_series(%(today)s::date - %(days)s - 1, %(today)s::date - 2,
                            interval '1 day') AS t(d0),
            LATERAL (SELECT t.d0::date AS d) AS dd, pool_users AS u
       WHERE u.grain = 'day'
         AND u.id = (ws * 7717 + (dd.d - date '2000-01-01') * 104723) %% 1000""",
    """INSERT INTO analytics.credit_consumption_daily
       SELECT ws, d::date, 100, 5, 50, 95, 40, now() - interval '1 day'
       FROM generate_series(1, %(ws)s) AS ws,
            generate_series(%(today)s::date - %(days)s - 1, %(today)s::date - 2,
                            interval '1 day') AS d""",
    """INSERT INTO analytics.workspace_health_daily (workspace_id, day, score, status)
       SELECT ws, d::date, 70 + ws %% 30, CASE WHEN 70 + ws %% 30 >= 80 THEN 'healthy'
              ELSE 'at_risk' END
       FROM generate_series(1, %(ws)s) AS ws,
            generate_series(%(today)s::date - 8, %(today)s::date - 2, interval '1 day') AS d""",
    """INSERT INTO analytics.execution_metrics_hourly
       SELECT ws, h, s.n, s.n * 9 / 10, s.n / 20, 14.0, 60.0, s.n * 0.5, 14.0 * s.n, s.n,
              s.keys, s.counts, h + interval '5 minutes'
       FROM generate_series(1, %(ws)s) AS ws,
            generate_series(%(top)s::timestamptz - interval '8 days',
                            %(top)s::timestamptz - interval '1 hour', interval '1 hour') AS h,
            pool_sketch AS s
       WHERE s.grain = 'hour'
         AND s.id = (ws * 7919 + (extract(epoch FROM h) / 3600)::bigint * 104729) %% 1000""",
    """INSERT INTO analytics.user_activity_hourly
       SELECT ws, h, cardinality(u.users), cardinality(u.users) * 3,
              array(SELECT ws * 1000 + x FROM unnest(u.users) AS x), h + interval '5 minutes'
       FROM generate_series(1, %(ws)s) AS ws,
            generate_series(%(top)s::timestamptz - interval '8 days',
                            %(top)s::timestamptz - interval '1 hour', interval '1 hour') AS h,
            pool_users AS u
       WHERE u.grain = 'hour'
         AND u.id = (ws * 7717 + (extract(epoch FROM h) / 3600)::bigint * 104723) %% 1000""",
]

# The daily job's output for yesterday: one new day for every workspace.
NEW_DAY = [
    """INSERT INTO analytics.execution_metrics_daily
       SELECT workspace_id, day + 1, total_executions, successful_executions,
              failed_executions, avg_runtime, p95_runtime, total_credits, avg_runtime__sum,
              avg_runtime__n, p95_runtime__keys, p95_runtime__counts, now()
       FROM analytics.execution_metrics_daily WHERE day = %(today)s::date - 2""",
    """INSERT INTO analytics.user_activity_daily
       SELECT workspace_id, day + 1, active_users, total_events, active_users__set, now()
       FROM analytics.user_activity_daily WHERE day = %(today)s::date - 2""",
]
# A late change: one workspace's row of a day 40 days back recomputed with other values.
LATE = [
    """UPDATE analytics.execution_metrics_daily
       SET p95_runtime__keys = array(SELECT k + 3 FROM unnest(p95_runtime__keys) AS k),
           updated_at = now()
       WHERE workspace_id = 17 AND day = %(today)s::date - 40""",
]


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def refresh(conn: psycopg.Connection, name: str) -> None:
    schema, view = name.split(".")
    conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(
        sql.Identifier(schema, view)))


def load(conn: psycopg.Connection, params: dict) -> None:
    for stmt in LOAD:
        ms = timed(lambda s=stmt: conn.execute(s, params))
        what = stmt.split("INTO")[1].split()[0] if "INTO" in stmt else stmt.split()[3]
        print(f"  load {what:<40} {ms / 1000:8.1f} s", file=sys.stderr)
    conn.execute("VACUUM ANALYZE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--workspaces", type=int, default=5000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--after-only", action="store_true", help="skip the previous views")
    args = ap.parse_args()

    url = with_dbname(args.url, DB)
    now = datetime.now(UTC)
    today = now.date()
    params = {"ws": args.workspaces, "days": args.days, "today": today,
              "top": now.replace(minute=0, second=0, microsecond=0)}
    with psycopg.connect(args.url, autocommit=True, application_name=APP) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone()
        if not (args.reuse and exists):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(DB)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    conn = psycopg.connect(url, autocommit=True, application_name=APP)
    if not (args.reuse and exists):
        migrate(conn)
        load(conn, params)
    # The state before "the new day": yesterday's daily rows not built yet.
    conn.execute("DELETE FROM analytics.execution_metrics_daily WHERE day = %(today)s::date - 1",
                 params)
    conn.execute("DELETE FROM analytics.user_activity_daily WHERE day = %(today)s::date - 1",
                 params)
    conn.execute("VACUUM ANALYZE analytics.execution_metrics_daily, analytics.user_activity_daily")
    results: list[tuple[str, float, str]] = []

    def record(name: str, ms: list[float] | float, note: str = "") -> None:
        value = median(ms) if isinstance(ms, list) else ms
        results.append((name, value, note))
        print(f"  {name:<58} {value:10.0f} ms  {note}", file=sys.stderr)

    # -- before: the previous views, merging sketches and user sets on every refresh
    if not args.after_only:
        conn.execute(BEFORE_VIEWS)
        for name in BEFORE:
            record(f"before: REFRESH CONCURRENTLY {name.split('.')[1]}",
                   [timed(lambda n=name: refresh(conn, n)) for _ in range(args.repeat)])
        record("before: both views", sum(v for _, v, _ in results))
        for name in BEFORE:
            conn.execute(sql.SQL("DROP MATERIALIZED VIEW {}").format(
                sql.Identifier(*name.split("."))))

    # -- after: the caches
    settings = Settings(database_url=url)

    def cache_step(day: date | None = None) -> dict:
        """The job's step (today's window), or the caches as of another `day`."""
        out: dict = {}

        def step() -> None:
            done = refresh_view_caches(StepContext(conn, now, settings))
            out.update({**done.detail, "rows": done.rows})

        if day is None:
            ms = timed(step)
        else:
            ms = timed(lambda: out.update(update_view_caches(conn, day)))
        return {**out, "ms": ms}

    conn.execute("TRUNCATE analytics.platform_daily_stats, analytics.workspace_window_stats")
    first = cache_step()
    record("cache: first fill (90 days, every window)", first["ms"],
           f"{first['rows']} values")
    steady = [cache_step() for _ in range(args.repeat)]
    record("cache: nothing changed (every 15 min)", [s["ms"] for s in steady],
           f"{steady[0]['rows']} values")
    for name in AFTER:
        record(f"after: REFRESH CONCURRENTLY {name.split('.')[1]}",
               [timed(lambda n=name: refresh(conn, n)) for _ in range(args.repeat)])
    job = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = run_job(RunRequest(job="refresh_materialized_views"), settings)
        job.append((time.perf_counter() - started) * 1000)
        assert result.status == "succeeded", result
    record("after: refresh_materialized_views job (wall, all steps)", job,
           " ".join(f"{s.name}={s.seconds * 1000:.0f}" for s in result.steps))

    late = []
    for _ in range(args.repeat):
        for stmt in LATE:
            conn.execute(stmt, params)
        out = cache_step()
        late.append(out["ms"])
    record("cache: late change in one old day", late, f"{out['rows']} values")

    move = []
    for _ in range(args.repeat):
        out = cache_step(today + timedelta(days=1))
        move.append(out["ms"])
        cache_step()  # back to today's window (timed below as part of the new day)
    record("cache: window moves at midnight (every workspace)", move, f"{out['rows']} values")

    new_day = []
    for i in range(args.repeat):
        if i:
            conn.execute("DELETE FROM analytics.execution_metrics_daily"
                         " WHERE day = %(today)s::date - 1", params)
            conn.execute("DELETE FROM analytics.user_activity_daily"
                         " WHERE day = %(today)s::date - 1", params)
            cache_step()
        for stmt in NEW_DAY:
            conn.execute(stmt, params)
        out = cache_step()
        new_day.append(out["ms"])
    record("cache: the new day's rows (one day, every workspace)", new_day,
           f"{out['rows']} values")
    job = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = run_job(RunRequest(job="refresh_materialized_views"), settings)
        job.append((time.perf_counter() - started) * 1000)
    record("after: refresh_materialized_views job, new day in place", job,
           " ".join(f"{s.name}={s.seconds * 1000:.0f}" for s in result.steps))

    print(f"\nviews at {args.workspaces} workspaces x {args.days} days "
          f"(median of {args.repeat}, ms)")
    print(f"{'figure':<58} {'ms':>10}  note")
    for name, value, note in results:
        print(f"{name:<58} {value:10.0f}  {note}")
    conn.close()


if __name__ == "__main__":
    main()
