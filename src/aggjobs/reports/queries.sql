-- The daily reports' queries, each under a `-- name: x` header (loaded by aggjobs.reports.sql).
--
-- Every figure comes from the rollup tables (analytics.*_hourly / *_daily), never from the raw
-- source rows. A handful of set-based queries serve every report of a day, however many
-- workspaces are active: each returns one row per workspace (or per day / hour), and Python
-- only picks, ranks and formats.
-- Parameters: %(day)s the report's UTC date; %(days)s that day and its comparison days;
-- %(lo)s / %(hi)s the day's bounds as timestamptz (UTC midnight to UTC midnight).

-- name: daily_by_workspace
-- Per workspace and day: the daily rollups side by side (a workspace may have runs without
-- events, or credit transactions alone). `p95_runtime` and `active_users` are the stored
-- per-workspace values.
WITH e AS (
    SELECT workspace_id, day, total_executions, successful_executions, failed_executions,
           p95_runtime, total_credits
    FROM analytics.execution_metrics_daily WHERE day = ANY(%(days)s::date[])
), a AS (
    SELECT workspace_id, day, active_users, total_events
    FROM analytics.user_activity_daily WHERE day = ANY(%(days)s::date[])
), c AS (
    SELECT workspace_id, day, credits_used, credits_refunded, credits_granted, net_credits,
           transactions
    FROM analytics.credit_consumption_daily WHERE day = ANY(%(days)s::date[])
), k AS (
    SELECT workspace_id, day FROM e
    UNION SELECT workspace_id, day FROM a
    UNION SELECT workspace_id, day FROM c
)
SELECT k.workspace_id, k.day,
       e.workspace_id IS NOT NULL AS has_runs,
       a.workspace_id IS NOT NULL AS has_events,
       coalesce(e.total_executions, 0) AS runs,
       coalesce(e.successful_executions, 0) AS successful_runs,
       coalesce(e.failed_executions, 0) AS failed_runs,
       e.p95_runtime,
       coalesce(e.total_credits, 0) AS run_credits,
       coalesce(c.credits_used, 0) AS credits_used,
       coalesce(c.credits_refunded, 0) AS credits_refunded,
       coalesce(c.credits_granted, 0) AS credits_granted,
       coalesce(c.net_credits, 0) AS net_credits,
       coalesce(a.active_users, 0) AS active_users,
       coalesce(a.total_events, 0) AS events
FROM k
LEFT JOIN e USING (workspace_id, day)
LEFT JOIN a USING (workspace_id, day)
LEFT JOIN c USING (workspace_id, day)
ORDER BY k.day, k.workspace_id

-- name: daily_platform
-- Per day, the whole platform: sums of the daily rollups; p95 from the workspaces' sketches
-- merged (bucket counts added per key), active users as the distinct union of the workspaces'
-- user sets (user ids are platform-wide). `has_data`: any rollup row that day.
WITH days AS (
    SELECT unnest(%(days)s::date[]) AS day
), e AS (
    SELECT day, count(*) AS n,
           sum(total_executions)::bigint AS runs, sum(successful_executions)::bigint AS successful_runs,
           sum(failed_executions)::bigint AS failed_runs, sum(total_credits) AS run_credits
    FROM analytics.execution_metrics_daily WHERE day = ANY(%(days)s::date[])
    GROUP BY day
), sketch AS (
    {daily_p95}
), a AS (
    SELECT day, count(*) AS n, sum(total_events)::bigint AS events
    FROM analytics.user_activity_daily WHERE day = ANY(%(days)s::date[])
    GROUP BY day
), users AS (
    {daily_users}
), c AS (
    SELECT day, count(*) AS n, sum(credits_used) AS credits_used,
           sum(credits_refunded) AS credits_refunded, sum(credits_granted) AS credits_granted,
           sum(net_credits) AS net_credits
    FROM analytics.credit_consumption_daily WHERE day = ANY(%(days)s::date[])
    GROUP BY day
)
SELECT days.day,
       coalesce(e.n, 0) + coalesce(a.n, 0) + coalesce(c.n, 0) > 0 AS has_data,
       coalesce(e.runs, 0) AS runs,
       coalesce(e.successful_runs, 0) AS successful_runs,
       coalesce(e.failed_runs, 0) AS failed_runs,
       sketch.p95_runtime,
       coalesce(e.run_credits, 0) AS run_credits,
       coalesce(c.credits_used, 0) AS credits_used,
       coalesce(c.credits_refunded, 0) AS credits_refunded,
       coalesce(c.credits_granted, 0) AS credits_granted,
       coalesce(c.net_credits, 0) AS net_credits,
       coalesce(users.active_users, 0) AS active_users,
       coalesce(a.events, 0) AS events
FROM days
LEFT JOIN e USING (day)
LEFT JOIN sketch USING (day)
LEFT JOIN a USING (day)
LEFT JOIN users USING (day)
LEFT JOIN c USING (day)
ORDER BY days.day

-- name: hourly_by_workspace
-- Per workspace, its hours of the day (one row a workspace): runs, failures, exact hourly p95
-- and credits (runs' and the ledger's usage), from the hourly rollups. One scan of the day's
-- rows: the reports are built a chunk of workspaces at a time out of this one result (a
-- query per chunk read each of the day's pages once per chunk, the rollups' rows of an hour
-- being in no workspace order). The arrays are in one order, the same for all (each
-- aggregate of a group reads its rows in one pass), not sorted: `hour` (the UTC hour of the
-- day, 0-23) places each element. 50,000 reports a day: no per-group sort, and the values
-- come as the report's types (float8 where Python makes a float).
SELECT workspace_id,
       array_agg(extract(hour FROM hour AT TIME ZONE 'UTC')::int) AS hour,
       array_agg(coalesce(e.total_executions, 0)) AS runs,
       array_agg(coalesce(e.successful_executions, 0)) AS successful_runs,
       array_agg(coalesce(e.failed_executions, 0)) AS failed_runs,
       array_agg(e.p95_runtime) AS p95_runtime,
       array_agg(coalesce(e.total_credits, 0)::float8) AS run_credits,
       array_agg(coalesce(c.credits_used, 0)::float8) AS credits_used
FROM (SELECT workspace_id, hour, total_executions, successful_executions, failed_executions,
             p95_runtime, total_credits
      FROM analytics.execution_metrics_hourly
      WHERE hour >= %(lo)s::timestamptz AND hour < %(hi)s::timestamptz) AS e
-- A full join, not the union of keys joined twice: 7.0 s against 12.2 s at 24 hours x
-- 50,000 workspaces (EXPLAIN ANALYZE).
FULL JOIN (SELECT workspace_id, hour, credits_used
           FROM analytics.credit_consumption_hourly
           WHERE hour >= %(lo)s::timestamptz AND hour < %(hi)s::timestamptz) AS c
     USING (workspace_id, hour)
GROUP BY workspace_id
ORDER BY workspace_id

-- name: hourly_platform
-- Per hour of the day, the whole platform; p95 from the workspaces' hourly sketches merged.
WITH e AS (
    SELECT hour, sum(total_executions)::bigint AS runs, sum(successful_executions)::bigint AS successful_runs,
           sum(failed_executions)::bigint AS failed_runs, sum(total_credits) AS run_credits
    FROM analytics.execution_metrics_hourly
    WHERE hour >= %(lo)s::timestamptz AND hour < %(hi)s::timestamptz
    GROUP BY hour
), sketch AS (
    {hourly_p95}
), c AS (
    SELECT hour, sum(credits_used) AS credits_used
    FROM analytics.credit_consumption_hourly
    WHERE hour >= %(lo)s::timestamptz AND hour < %(hi)s::timestamptz
    GROUP BY hour
)
SELECT extract(hour FROM coalesce(e.hour, c.hour) AT TIME ZONE 'UTC')::int AS hour,
       coalesce(e.runs, 0) AS runs,
       coalesce(e.successful_runs, 0) AS successful_runs,
       coalesce(e.failed_runs, 0) AS failed_runs,
       sketch.p95_runtime,
       coalesce(e.run_credits, 0)::float8 AS run_credits,
       coalesce(c.credits_used, 0)::float8 AS credits_used
FROM e
FULL JOIN c USING (hour)
LEFT JOIN sketch ON sketch.hour = coalesce(e.hour, c.hour)
ORDER BY 1

-- name: daily_p95__portable
-- {daily_p95} and {hourly_p95} above, two ways with the same numbers
-- (tests/integration/test_native.py): in SQL, every (key, count) unnested (in the select
-- list, which streams the rows: in FROM they are stored first, 2x slower); or with the C
-- aggregate of aggjobs_native (docs/native.md).
SELECT day, aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(c ORDER BY k), 0.95)
           AS p95_runtime
FROM (SELECT day, k, sum(c)::bigint AS c
      FROM (SELECT d.day, unnest(d.p95_runtime__keys) AS k, unnest(d.p95_runtime__counts) AS c
            FROM analytics.execution_metrics_daily AS d
            WHERE d.day = ANY(%(days)s::date[])) AS u
      GROUP BY 1, 2) AS merged
GROUP BY day

-- name: daily_p95__native
SELECT day, aggjobs_native.sketch_quantile((s).keys, (s).counts, 0.95) AS p95_runtime
FROM (SELECT day, aggjobs_native.sketch_merge(p95_runtime__keys, p95_runtime__counts) AS s
      FROM analytics.execution_metrics_daily
      WHERE day = ANY(%(days)s::date[])
      GROUP BY day) AS merged

-- name: daily_users__portable
-- {daily_users}: the distinct union of the workspaces' sets, counted in SQL or by the C
-- aggregate (a day's sets at 50,000 workspaces hold millions of members).
SELECT day, count(DISTINCT id) AS active_users
FROM (SELECT d.day, unnest(d.active_users__set) AS id
      FROM analytics.user_activity_daily AS d
      WHERE d.day = ANY(%(days)s::date[])) AS u
GROUP BY day

-- name: daily_users__native
SELECT day, coalesce(cardinality(aggjobs_native.set_union(active_users__set)), 0) AS active_users
FROM analytics.user_activity_daily
WHERE day = ANY(%(days)s::date[])
GROUP BY day

-- name: hourly_p95__portable
SELECT hour, aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(c ORDER BY k), 0.95)
            AS p95_runtime
FROM (SELECT hour, k, sum(c)::bigint AS c
      FROM (SELECT h.hour, unnest(h.p95_runtime__keys) AS k, unnest(h.p95_runtime__counts) AS c
            FROM analytics.execution_metrics_hourly AS h
            WHERE h.hour >= %(lo)s::timestamptz AND h.hour < %(hi)s::timestamptz) AS u
      GROUP BY 1, 2) AS merged
GROUP BY hour

-- name: hourly_p95__native
SELECT hour, aggjobs_native.sketch_quantile((s).keys, (s).counts, 0.95) AS p95_runtime
FROM (SELECT hour, aggjobs_native.sketch_merge(p95_runtime__keys, p95_runtime__counts) AS s
      FROM analytics.execution_metrics_hourly
      WHERE hour >= %(lo)s::timestamptz AND hour < %(hi)s::timestamptz
      GROUP BY hour) AS merged

-- name: worst_agents
-- Per (workspace, agent), the day's runs and failures, for the agents that failed at least once:
-- from analytics.agent_executions_daily (a rollup of its own, keyed by agent as well).
SELECT workspace_id, agent_id, total_executions AS runs, failed_executions AS failed_runs
FROM analytics.agent_executions_daily
WHERE day = %(day)s::date AND failed_executions > 0
ORDER BY failed_runs DESC, workspace_id, agent_id NULLS LAST

-- name: health
-- Each workspace scored on the day, with its status the day before (NULL: not scored then).
SELECT h.workspace_id, h.status, h.score, p.status AS previous_status,
       p.score AS previous_score
FROM analytics.workspace_health_daily AS h
LEFT JOIN analytics.workspace_health_daily AS p
       ON p.workspace_id = h.workspace_id AND p.day = h.day - 1
WHERE h.day = %(day)s::date
ORDER BY h.workspace_id

-- name: ledger
-- The credit ledger against the runs, per workspace: the day's 'usage' transactions
-- (credit_consumption.credits_used) against the credits the runs consumed
-- (execution_metrics.total_credits). Both are rollups of the day by UTC time (the ledger
-- row's created_at, the run's started_at).
SELECT workspace_id,
       coalesce(c.credits_used, 0) AS usage_credits,
       coalesce(e.total_credits, 0) AS run_credits,
       coalesce(c.credits_used, 0) - coalesce(e.total_credits, 0) AS difference,
       abs(coalesce(c.credits_used, 0) - coalesce(e.total_credits, 0)) > %(tolerance)s
           AS mismatch
FROM (SELECT workspace_id, credits_used FROM analytics.credit_consumption_daily
      WHERE day = %(day)s::date) AS c
FULL JOIN (SELECT workspace_id, total_credits FROM analytics.execution_metrics_daily
           WHERE day = %(day)s::date) AS e USING (workspace_id)
ORDER BY abs(coalesce(c.credits_used, 0) - coalesce(e.total_credits, 0)) DESC, workspace_id

-- name: day_watermarks
-- Day-grain watermarks of the rollups a report reads: every day before is materialized.
SELECT rollup, watermark FROM aggjobs.watermarks
WHERE grain = 'day' AND rollup = ANY(%(rollups)s::text[])

-- name: workspace_known
-- Whether the workspace appears anywhere in the daily rollups (unique indexes lead with it).
SELECT EXISTS (SELECT 1 FROM analytics.execution_metrics_daily WHERE workspace_id = %(ws)s)
    OR EXISTS (SELECT 1 FROM analytics.user_activity_daily WHERE workspace_id = %(ws)s)
    OR EXISTS (SELECT 1 FROM analytics.credit_consumption_daily WHERE workspace_id = %(ws)s)

-- name: delete_day_reports
-- The day's reports, replaced in the same transaction by the new set (copy_reports): a
-- workspace no longer active that day (its rows were deleted) is left without one.
DELETE FROM analytics.daily_reports WHERE day = %(day)s

-- name: copy_reports
-- The new set, streamed (updated_at: the column's default, now()).
COPY analytics.daily_reports (day, workspace_id, report, generated_at) FROM STDIN

-- name: stored_report
SELECT report, generated_at FROM analytics.daily_reports
WHERE day = %(day)s AND workspace_id IS NOT DISTINCT FROM %(ws)s::bigint
