-- The materialized views, built from the rollup tables (never from raw rows) and refreshed
-- CONCURRENTLY by `refresh_materialized_views`, so readers are never blocked; each has the
-- unique index that CONCURRENTLY requires. Created after the catalog's tables, if missing.
-- Windows are relative to the refresh time, in UTC.
--
-- p95 and active users come from the caches analytics.platform_daily_stats and
-- analytics.workspace_window_stats (migration 0007), brought up to date by the step
-- `view.caches` just before the views are refreshed (src/aggjobs/sql/view_caches.sql): the
-- views never merge sketches or user sets themselves. A cached window value counts only if it
-- is for the current window (window_end = today, UTC).

-- The caches' change checks read (day, updated_at) of the daily rollups from these indexes
-- alone (index-only scans), and so do the views' sums over daily rows: those rows are wide (a
-- p95 sketch or a user set each), the sums need a few narrow columns (at 5,000 workspaces x 90
-- days: 211 ms by sequential scan, measured). The rollup tables exist by now (sync_catalog
-- creates them first). The two indexes of the first version held no sums.
DROP INDEX IF EXISTS analytics.execution_metrics_daily_day_updated_at_idx;
DROP INDEX IF EXISTS analytics.user_activity_daily_day_updated_at_idx;
CREATE INDEX IF NOT EXISTS execution_metrics_daily_day_updated_at_sums_idx
    ON analytics.execution_metrics_daily (day, updated_at)
    INCLUDE (workspace_id, total_executions, successful_executions, failed_executions,
             total_credits);
CREATE INDEX IF NOT EXISTS user_activity_daily_day_updated_at_sums_idx
    ON analytics.user_activity_daily (day, updated_at) INCLUDE (workspace_id, total_events);
-- The 24 h / 7 d sums and the last hour read the hourly rows' narrow columns from their
-- bucket index (the hourly rows themselves are wide: a p95 sketch each): the engine's
-- (hour) index, made again here to include them, once. Until 2026-12-06 a second index,
-- (hour) INCLUDE (...), stood beside the engine's (hour), which every hourly step wrote
-- too (50,000 workspaces: 82 ms of a 1.29 s step, docs/benchmarks.md). A rebuilt version's
-- bucket index is made including the same columns (db/definitions.py, start_build).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_index
                   WHERE indexrelid = to_regclass('analytics.execution_metrics_hourly_hour_idx')
                     AND indnatts > indnkeyatts) THEN
        DROP INDEX IF EXISTS analytics.execution_metrics_hourly_hour_idx;
        CREATE INDEX execution_metrics_hourly_hour_idx ON analytics.execution_metrics_hourly (hour)
            INCLUDE (workspace_id, total_executions, successful_executions);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_index
                   WHERE indexrelid = to_regclass('analytics.user_activity_hourly_hour_idx')
                     AND indnatts > indnkeyatts) THEN
        DROP INDEX IF EXISTS analytics.user_activity_hourly_hour_idx;
        CREATE INDEX user_activity_hourly_hour_idx ON analytics.user_activity_hourly (hour)
            INCLUDE (workspace_id);
    END IF;
END $$;
DROP INDEX IF EXISTS analytics.execution_metrics_hourly_hour_runs_idx;
DROP INDEX IF EXISTS analytics.user_activity_hourly_hour_workspace_idx;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.workspace_overview AS
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
), days_30d AS (
    -- The 30 days are hours like the 24 h and 7 d (hour >= now() - 30 days), so that they
    -- hold the 7 d: the whole UTC days of the window that the daily job has materialized
    -- come from the daily rows (one row a day instead of 24), the rest (the window's first
    -- partial day, the days not built yet, today) from the hourly rows.
    SELECT lo.first_day,
           greatest(lo.first_day, coalesce(w.watermark, lo.first_day)) AS days_until
    FROM (SELECT date_trunc('day', now() - interval '30 days', 'UTC') + interval '1 day'
                     AS first_day) AS lo
    LEFT JOIN aggjobs.watermarks AS w
        ON w.rollup = 'execution_metrics' AND w.grain = 'day'
), runs_30d AS (
    SELECT workspace_id, sum(runs) AS runs_30d, sum(ok) AS ok_30d, max(day) AS last_run_day
    FROM (
        SELECT d.workspace_id, d.total_executions AS runs, d.successful_executions AS ok,
               d.day
        FROM analytics.execution_metrics_daily AS d, days_30d AS b
        WHERE d.day >= (b.first_day AT TIME ZONE 'UTC')::date
          AND d.day < (b.days_until AT TIME ZONE 'UTC')::date
        UNION ALL
        SELECT h.workspace_id, h.total_executions, h.successful_executions, NULL
        FROM analytics.execution_metrics_hourly AS h, days_30d AS b
        WHERE h.hour >= now() - interval '30 days'
          AND (h.hour < b.first_day OR h.hour >= b.days_until)
    ) AS parts
    GROUP BY workspace_id
), window_7d AS (
    -- p95 (merged daily sketches: within 0.75% of the exact value) and exact active users
    -- over the last 7 complete UTC days [today - 7, today), from the cache.
    SELECT workspace_id,
           CASE WHEN runs_window_end = (now() AT TIME ZONE 'UTC')::date
                THEN p95_runtime_7d END AS p95_runtime_7d,
           CASE WHEN users_window_end = (now() AT TIME ZONE 'UTC')::date
                THEN active_users_7d END AS active_users_7d
    FROM analytics.workspace_window_stats
    WHERE runs_window_end = (now() AT TIME ZONE 'UTC')::date AND runs_rows > 0
       OR users_window_end = (now() AT TIME ZONE 'UTC')::date AND users_rows > 0
), credits AS (
    SELECT workspace_id,
           sum(credits_used) FILTER (WHERE day >= (now() AT TIME ZONE 'UTC')::date - 7)
               AS credits_used_7d,
           sum(credits_used) AS credits_used_30d
    FROM analytics.credit_consumption_daily
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 30
    GROUP BY workspace_id
), events AS (
    SELECT workspace_id, max(hour) + interval '1 hour' AS last_event_hour_end
    FROM analytics.user_activity_hourly
    WHERE hour >= now() - interval '7 days'
    GROUP BY workspace_id
), health AS (
    SELECT DISTINCT ON (workspace_id) workspace_id, score, status, day
    FROM analytics.workspace_health_daily
    ORDER BY workspace_id, day DESC
), workspaces AS (
    SELECT workspace_id FROM runs UNION SELECT workspace_id FROM runs_30d
    UNION SELECT workspace_id FROM credits UNION SELECT workspace_id FROM events
    UNION SELECT workspace_id FROM window_7d UNION SELECT workspace_id FROM health
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
       coalesce(p.active_users_7d, 0) AS active_users_7d,
       h.score AS health_score,
       h.status AS health_status,
       h.day AS health_day,
       greatest(r.last_run_hour_end, u.last_event_hour_end,
                (m.last_run_day + 1)::timestamp AT TIME ZONE 'UTC') AS last_activity,
       now() AS refreshed_at
FROM workspaces AS w
LEFT JOIN runs AS r USING (workspace_id)
LEFT JOIN runs_30d AS m USING (workspace_id)
LEFT JOIN window_7d AS p USING (workspace_id)
LEFT JOIN credits AS c USING (workspace_id)
LEFT JOIN events AS u USING (workspace_id)
LEFT JOIN health AS h USING (workspace_id);

CREATE UNIQUE INDEX IF NOT EXISTS workspace_overview_workspace_idx
    ON analytics.workspace_overview (workspace_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.platform_daily_overview AS
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
), stats AS (
    -- p95 of the day's merged sketches and exact active users over all workspaces, cached.
    SELECT day, p95_runtime, active_users
    FROM analytics.platform_daily_stats
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 89
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
       s.p95_runtime,
       coalesce(r.active_workspaces, 0)::bigint AS active_workspaces,
       coalesce(s.active_users, 0)::bigint AS active_users,
       coalesce(e.events, 0)::bigint AS total_events,
       coalesce(c.credits_used, 0) AS credits_used,
       coalesce(c.credits_refunded, 0) AS credits_refunded,
       coalesce(c.credits_granted, 0) AS credits_granted,
       coalesce(c.net_credits, 0) AS net_credits,
       now() AS refreshed_at
FROM days AS d
LEFT JOIN runs AS r ON r.day = d.day
LEFT JOIN stats AS s ON s.day = d.day
LEFT JOIN events AS e ON e.day = d.day
LEFT JOIN credits AS c ON c.day = d.day;

CREATE UNIQUE INDEX IF NOT EXISTS platform_daily_overview_day_idx
    ON analytics.platform_daily_overview (day);
