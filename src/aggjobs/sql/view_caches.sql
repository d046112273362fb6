-- The materialized views' caches (docs/rollups.md, "Materialized views"): the merges of p95
-- sketches and user sets that the views would otherwise redo on every refresh, kept per UTC
-- day (analytics.platform_daily_stats) and per workspace over the 7-day window
-- (analytics.workspace_window_stats). Loaded by aggjobs.sql.query(name); %(today)s is the
-- current UTC date, the views' reference.
--
-- Each cached value is stored with the stamp of its inputs: (max(updated_at), count(*)) of
-- the rollup rows it was computed from. A value is recomputed when the stamp its inputs have
-- now differs. That catches every change: every write of a rollup table is a transaction
-- taken under that rollup's advisory lock (so they never overlap), and stamps the rows it
-- inserts with its own now(), later than any earlier write's; a write that only deletes
-- lowers the count. Stamp and value are read by one statement, in one snapshot.

-- name: view_caches_lock
-- One cache update at a time (hourly_rollup and refresh_materialized_views both run it, and
-- their job locks differ): the second waits for the first, then finds little left to do.
SELECT pg_advisory_xact_lock(hashtext('aggjobs.view_caches'))

-- name: forget_view_cache_stamps
-- After a new version of execution_metrics or user_activity is swapped in (engine/rebuild.py):
-- every cached value was computed from the old version's rows, and the buckets the new
-- version kept from it (before retention's cut) keep their stamps, so a changed measure
-- would go unseen there. Forgetting the stamps makes the next update recompute them all.
-- Run under view_caches_lock, so that it never waits on an update holding the rows.
WITH platform AS (
    UPDATE analytics.platform_daily_stats
    SET runs_updated_at = NULL, runs_rows = NULL, users_updated_at = NULL, users_rows = NULL
    RETURNING 1
)
UPDATE analytics.workspace_window_stats
SET runs_updated_at = NULL, runs_rows = NULL, users_updated_at = NULL, users_rows = NULL

-- name: platform_day_p95
-- The days of the last 90 (today included) whose execution_metrics_daily rows changed: the
-- day's sketches merged (counts summed per key) and p95 read off the merge.
WITH days AS (
    SELECT d::date AS day
    FROM generate_series(%(today)s::date - 89, %(today)s::date, interval '1 day') AS d
), input AS (
    SELECT day, max(updated_at) AS updated_at, count(*) AS n_rows
    FROM analytics.execution_metrics_daily
    WHERE day BETWEEN %(today)s::date - 89 AND %(today)s::date
    GROUP BY day
), stale AS (
    SELECT days.day, i.updated_at, coalesce(i.n_rows, 0) AS n_rows
    FROM days
    LEFT JOIN input AS i USING (day)
    LEFT JOIN analytics.platform_daily_stats AS c USING (day)
    WHERE (c.runs_updated_at, c.runs_rows) IS DISTINCT FROM (i.updated_at, coalesce(i.n_rows, 0))
), merged AS (
    -- unnest in the select list streams its rows; in FROM it stores them first (2x slower)
    SELECT u.day, u.k, sum(u.n)::bigint AS n
    FROM (SELECT d.day, unnest(d.p95_runtime__keys) AS k, unnest(d.p95_runtime__counts) AS n
          FROM stale
          JOIN analytics.execution_metrics_daily AS d ON d.day = stale.day
          WHERE stale.n_rows > 0) AS u
    GROUP BY 1, 2
), p95 AS (
    SELECT day, aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(n ORDER BY k), 0.95)
               AS p95_runtime
    FROM merged
    GROUP BY day
)
INSERT INTO analytics.platform_daily_stats AS c
    (day, p95_runtime, runs_updated_at, runs_rows, computed_at)
SELECT stale.day, p95.p95_runtime, stale.updated_at, stale.n_rows, clock_timestamp()
FROM stale LEFT JOIN p95 USING (day)
ON CONFLICT (day) DO UPDATE SET
    p95_runtime = excluded.p95_runtime, runs_updated_at = excluded.runs_updated_at,
    runs_rows = excluded.runs_rows, computed_at = excluded.computed_at
RETURNING day

-- name: platform_day_users
-- The days of the last 90 whose user_activity_daily rows changed: exact count(DISTINCT) over
-- the union of the day's workspaces' user sets.
WITH days AS (
    SELECT d::date AS day
    FROM generate_series(%(today)s::date - 89, %(today)s::date, interval '1 day') AS d
), input AS (
    SELECT day, max(updated_at) AS updated_at, count(*) AS n_rows
    FROM analytics.user_activity_daily
    WHERE day BETWEEN %(today)s::date - 89 AND %(today)s::date
    GROUP BY day
), stale AS (
    SELECT days.day, i.updated_at, coalesce(i.n_rows, 0) AS n_rows
    FROM days
    LEFT JOIN input AS i USING (day)
    LEFT JOIN analytics.platform_daily_stats AS c USING (day)
    WHERE (c.users_updated_at, c.users_rows)
          IS DISTINCT FROM (i.updated_at, coalesce(i.n_rows, 0))
), users AS (
    SELECT u.day, count(DISTINCT u.user_id) AS active_users
    FROM (SELECT d.day, unnest(d.active_users__set) AS user_id
          FROM stale
          JOIN analytics.user_activity_daily AS d ON d.day = stale.day
          WHERE stale.n_rows > 0) AS u
    GROUP BY u.day
)
INSERT INTO analytics.platform_daily_stats AS c
    (day, active_users, users_updated_at, users_rows, computed_at)
SELECT stale.day, coalesce(users.active_users, 0), stale.updated_at, stale.n_rows,
       clock_timestamp()
FROM stale LEFT JOIN users USING (day)
ON CONFLICT (day) DO UPDATE SET
    active_users = excluded.active_users, users_updated_at = excluded.users_updated_at,
    users_rows = excluded.users_rows, computed_at = excluded.computed_at
RETURNING day

-- name: platform_days_outside
-- Days that left the 90-day window.
DELETE FROM analytics.platform_daily_stats WHERE day < %(today)s::date - 89 OR day > %(today)s::date
RETURNING day

-- name: window_p95
-- Per workspace, p95 over the last 7 complete UTC days [today - 7, today) from the daily
-- sketches: for every workspace when the window moved (runs_window_end is not today), else
-- only for those whose daily rows in the window changed (a workspace whose rows all left
-- the window or were deleted gets NULL).
WITH input AS (
    SELECT workspace_id, max(updated_at) AS updated_at, count(*) AS n_rows
    FROM analytics.execution_metrics_daily
    WHERE day >= %(today)s::date - 7 AND day < %(today)s::date
    GROUP BY workspace_id
), stale AS (
    SELECT workspace_id, i.updated_at, coalesce(i.n_rows, 0) AS n_rows
    FROM input AS i
    FULL JOIN (SELECT workspace_id, runs_window_end, runs_updated_at, runs_rows
               FROM analytics.workspace_window_stats) AS c USING (workspace_id)
    WHERE c.runs_window_end IS DISTINCT FROM %(today)s::date
       OR (c.runs_updated_at, c.runs_rows) IS DISTINCT FROM (i.updated_at, coalesce(i.n_rows, 0))
), merged AS (
    -- Grouped by (workspace, key), not a lateral subquery per workspace (a little faster on
    -- PostgreSQL): Citus cannot push down a lateral subquery with an aggregate and no GROUP
    -- BY (issue 18), and this shape is one more per-workspace statement for it.
    SELECT u.workspace_id, u.k, sum(u.n)::bigint AS n
    FROM (SELECT d.workspace_id, unnest(d.p95_runtime__keys) AS k,
                 unnest(d.p95_runtime__counts) AS n
          FROM stale
          JOIN analytics.execution_metrics_daily AS d ON d.workspace_id = stale.workspace_id
          WHERE stale.n_rows > 0 AND d.day >= %(today)s::date - 7
            AND d.day < %(today)s::date) AS u
    GROUP BY u.workspace_id, u.k
), p95 AS (
    SELECT workspace_id,
           aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(n ORDER BY k), 0.95)
               AS p95_runtime
    FROM merged
    GROUP BY workspace_id
)
INSERT INTO analytics.workspace_window_stats AS c
    (workspace_id, p95_runtime_7d, runs_window_end, runs_updated_at, runs_rows, computed_at)
SELECT stale.workspace_id, p95.p95_runtime, %(today)s::date, stale.updated_at, stale.n_rows,
       clock_timestamp()
FROM stale LEFT JOIN p95 USING (workspace_id)
ON CONFLICT (workspace_id) DO UPDATE SET
    p95_runtime_7d = excluded.p95_runtime_7d, runs_window_end = excluded.runs_window_end,
    runs_updated_at = excluded.runs_updated_at, runs_rows = excluded.runs_rows,
    computed_at = excluded.computed_at
RETURNING workspace_id

-- name: window_users
-- Per workspace, exact active users over [today - 7, today): the size of the union of the
-- daily user sets; recomputed like window_p95.
WITH input AS (
    SELECT workspace_id, max(updated_at) AS updated_at, count(*) AS n_rows
    FROM analytics.user_activity_daily
    WHERE day >= %(today)s::date - 7 AND day < %(today)s::date
    GROUP BY workspace_id
), stale AS (
    SELECT workspace_id, i.updated_at, coalesce(i.n_rows, 0) AS n_rows
    FROM input AS i
    FULL JOIN (SELECT workspace_id, users_window_end, users_updated_at, users_rows
               FROM analytics.workspace_window_stats) AS c USING (workspace_id)
    WHERE c.users_window_end IS DISTINCT FROM %(today)s::date
       OR (c.users_updated_at, c.users_rows)
          IS DISTINCT FROM (i.updated_at, coalesce(i.n_rows, 0))
), users AS (
    SELECT u.workspace_id, count(DISTINCT u.user_id) AS active_users
    FROM (SELECT d.workspace_id, unnest(d.active_users__set) AS user_id
          FROM stale
          JOIN analytics.user_activity_daily AS d ON d.workspace_id = stale.workspace_id
          WHERE stale.n_rows > 0 AND d.day >= %(today)s::date - 7
            AND d.day < %(today)s::date) AS u
    GROUP BY u.workspace_id
)
INSERT INTO analytics.workspace_window_stats AS c
    (workspace_id, active_users_7d, users_window_end, users_updated_at, users_rows, computed_at)
SELECT stale.workspace_id, coalesce(users.active_users, 0), %(today)s::date, stale.updated_at,
       stale.n_rows, clock_timestamp()
FROM stale LEFT JOIN users USING (workspace_id)
ON CONFLICT (workspace_id) DO UPDATE SET
    active_users_7d = excluded.active_users_7d, users_window_end = excluded.users_window_end,
    users_updated_at = excluded.users_updated_at, users_rows = excluded.users_rows,
    computed_at = excluded.computed_at
RETURNING workspace_id

-- name: window_empty
-- Workspaces with no daily row in the window of either rollup any more.
DELETE FROM analytics.workspace_window_stats
WHERE runs_rows = 0 AND users_rows = 0
RETURNING workspace_id
