-- The materialized views' caches (docs/rollups.md, "Materialized views"), kept by the step
-- `view.caches` before the views are refreshed: the merged p95 sketches and user sets of each
-- day of the last 90, and of each workspace's 7-day window. Each value sits beside the stamp
-- of the rollup rows it was computed from, (max(updated_at), count(*)); NULL stamps: not
-- computed yet. Derived data only: emptying them is safe (the next refresh refills them).
CREATE TABLE analytics.platform_daily_stats (
    day date PRIMARY KEY,
    p95_runtime double precision,
    runs_updated_at timestamptz,
    runs_rows bigint,
    active_users bigint,
    users_updated_at timestamptz,
    users_rows bigint,
    computed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE analytics.workspace_window_stats (
    workspace_id bigint PRIMARY KEY,
    p95_runtime_7d double precision,
    runs_window_end date,
    runs_updated_at timestamptz,
    runs_rows bigint,
    active_users_7d bigint,
    users_window_end date,
    users_updated_at timestamptz,
    users_rows bigint,
    computed_at timestamptz NOT NULL DEFAULT now()
);
