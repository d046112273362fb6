-- name: inputs
-- Inputs of the health score of every workspace active on %(day)s or in the 7 days before,
-- all read from the rollup tables. "prior" is the trailing window: the 7 days before the
-- day, or fewer for a workspace first seen during them (first_day).
WITH active AS (
    SELECT workspace_id, min(day) AS first_day
    FROM analytics.execution_metrics_daily
    GROUP BY workspace_id
    HAVING max(day) >= %(day)s::date - 7 AND min(day) <= %(day)s::date
), today AS (
    SELECT workspace_id, successful_executions AS ok, failed_executions AS failed,
           total_executions AS runs, p95_runtime AS p95
    FROM analytics.execution_metrics_daily WHERE day = %(day)s::date
), prior AS (
    SELECT workspace_id, sum(total_executions)::bigint AS runs
    FROM analytics.execution_metrics_daily
    WHERE day >= %(day)s::date - 7 AND day < %(day)s::date
    GROUP BY workspace_id
), prior_p95 AS (
    -- The trailing window's p95: the days' sketches merged (within 0.75 percent of exact).
    {prior_p95}
), credits AS (
    SELECT workspace_id,
           sum(credits_used) FILTER (WHERE day = %(day)s::date) AS today,
           sum(credits_used) FILTER (WHERE day < %(day)s::date) AS prior
    FROM analytics.credit_consumption_daily
    WHERE day >= %(day)s::date - 7 AND day <= %(day)s::date
    GROUP BY workspace_id
), worst_hour AS (
    -- The hour of the day with the highest failure rate among hours with enough runs (the
    -- earliest of equal ones): the greatest (rate, -epoch, runs) array of each workspace, a
    -- hashed aggregate (DISTINCT ON sorted all the day's hourly rows: 1.05 s against 0.65 s
    -- at 50,000 workspaces). The epoch and the runs are whole numbers below 2^53, exact as
    -- float8.
    SELECT workspace_id, to_timestamp(-w[2]) AS hour, w[1] AS rate, w[3]::bigint AS finished
    FROM (SELECT workspace_id,
                 max(ARRAY[failed_executions::float8 / (successful_executions + failed_executions),
                           -date_part('epoch', hour),
                           successful_executions + failed_executions]) AS w
          FROM analytics.execution_metrics_hourly
          WHERE hour >= %(day)s::date::timestamp AT TIME ZONE 'UTC'
            AND hour < (%(day)s::date + 1)::timestamp AT TIME ZONE 'UTC'
            AND successful_executions + failed_executions >= %(burst_min_runs)s
          GROUP BY workspace_id) AS m
)
SELECT a.workspace_id,
       greatest(0, %(day)s::date - greatest(a.first_day, %(day)s::date - 7)) AS prior_days,
       coalesce(t.ok, 0) AS ok, coalesce(t.failed, 0) AS failed, coalesce(t.runs, 0) AS runs,
       t.p95, pp.p95 AS prior_p95, coalesce(pr.runs, 0) AS prior_runs,
       coalesce(c.today, 0) AS credits, coalesce(c.prior, 0) AS prior_credits,
       w.hour AS worst_hour, w.rate AS worst_hour_rate, w.finished AS worst_hour_runs
FROM active AS a
LEFT JOIN today AS t USING (workspace_id)
LEFT JOIN prior AS pr USING (workspace_id)
LEFT JOIN prior_p95 AS pp USING (workspace_id)
LEFT JOIN credits AS c USING (workspace_id)
LEFT JOIN worst_hour AS w USING (workspace_id)
ORDER BY a.workspace_id

-- name: prior_p95__portable
-- {prior_p95} above, two ways with the same numbers (tests/integration/test_native.py): in
-- SQL, every (key, count) unnested; or with the C aggregate of aggjobs_native (native.md).
SELECT workspace_id,
       aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(n ORDER BY k), 0.95) AS p95
FROM (
    -- unnest in the select list streams its rows; in FROM it stores them first (2x slower)
    SELECT workspace_id, k, sum(n)::bigint AS n
    FROM (SELECT d.workspace_id, unnest(d.p95_runtime__keys) AS k,
                 unnest(d.p95_runtime__counts) AS n
          FROM analytics.execution_metrics_daily AS d
          WHERE d.day >= %(day)s::date - 7 AND d.day < %(day)s::date) AS u
    GROUP BY 1, 2
) AS merged
GROUP BY workspace_id

-- name: prior_p95__native
SELECT workspace_id, aggjobs_native.sketch_quantile((s).keys, (s).counts, 0.95) AS p95
FROM (
    SELECT workspace_id,
           aggjobs_native.sketch_merge(p95_runtime__keys, p95_runtime__counts) AS s
    FROM analytics.execution_metrics_daily
    WHERE day >= %(day)s::date - 7 AND day < %(day)s::date
    GROUP BY workspace_id
) AS merged
