-- The two ways inputs.sql merges the trailing window's daily p95 sketches: the same numbers
-- (tests/integration/test_native.py), the C aggregate without unnesting every (key, count).

-- name: portable
SELECT workspace_id,
       aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(n ORDER BY k), 0.95) AS p95
FROM (
    SELECT d.workspace_id, u.k, sum(u.n)::bigint AS n
    FROM analytics.execution_metrics_daily AS d,
         unnest(d.p95_runtime__keys, d.p95_runtime__counts) AS u(k, n)
    WHERE d.day >= %(day)s::date - 7 AND d.day < %(day)s::date
    GROUP BY 1, 2
) AS merged
GROUP BY workspace_id

-- name: native
SELECT workspace_id, aggjobs_native.sketch_quantile((s).keys, (s).counts, 0.95) AS p95
FROM (
    SELECT workspace_id,
           aggjobs_native.sketch_merge(p95_runtime__keys, p95_runtime__counts) AS s
    FROM analytics.execution_metrics_daily
    WHERE day >= %(day)s::date - 7 AND day < %(day)s::date
    GROUP BY workspace_id
) AS merged
