-- 0002: job history, the audit log, retention horizons, and the tables that the daily job
-- fills (health scores, reports). The materialized views over the rollup tables are created
-- after the catalog's tables exist (views.sql).

-- One row per run of a job, written as it goes: 'running' first, then its end state.
-- `steps` holds each step's outcome: name, status, rows, seconds, attempts, error.
-- `slot` is the scheduled instant a beat-triggered run belongs to: one run per slot, so a
-- second beat's duplicate is recorded as skipped.
-- `backend_pid` is the run's PostgreSQL session: a 'running' row whose session is gone
-- belongs to a dead process and is marked 'abandoned'.
CREATE TABLE aggjobs.job_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job text NOT NULL,
    trigger text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'retry', 'backfill')),
    who text NOT NULL,
    as_of timestamptz NOT NULL,
    slot timestamptz,
    status text NOT NULL
        CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'abandoned')),
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    steps jsonb NOT NULL DEFAULT '[]',
    error text,
    attempt integer NOT NULL DEFAULT 1,
    host text NOT NULL,
    pid integer NOT NULL,
    backend_pid integer,
    task_id text,
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX job_runs_job_started_idx ON aggjobs.job_runs (job, started_at DESC);
CREATE INDEX job_runs_running_idx ON aggjobs.job_runs (job) WHERE status = 'running';
CREATE UNIQUE INDEX job_runs_one_run_per_slot ON aggjobs.job_runs (job, slot)
    WHERE slot IS NOT NULL AND status IN ('running', 'succeeded', 'failed');

-- Who did what, when, with which parameters, and how it ended: manual runs, backfills,
-- repairs, cleanup deletions, token changes, denied requests.
CREATE TABLE aggjobs.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    action text NOT NULL,
    target text,
    params jsonb NOT NULL DEFAULT '{}',
    outcome text NOT NULL
);
CREATE INDEX audit_log_at_idx ON aggjobs.audit_log (at);

-- Retention: buckets before `horizon` can no longer be recomputed (their inputs were
-- deleted), so changes logged there are dropped instead of rebuilding a partial bucket.
ALTER TABLE aggjobs.watermarks ADD COLUMN horizon timestamptz;

-- Filled by the daily job (health scores and reports).
CREATE TABLE analytics.workspace_health_daily (
    workspace_id bigint NOT NULL,
    day date NOT NULL,
    score numeric(5, 2) CHECK (score BETWEEN 0 AND 100),
    status text NOT NULL
        CHECK (status IN ('healthy', 'at_risk', 'critical', 'insufficient_data')),
    components jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, day),
    CHECK ((status = 'insufficient_data') = (score IS NULL))
);

CREATE TABLE analytics.daily_reports (
    day date NOT NULL,
    workspace_id bigint,
    report jsonb NOT NULL,
    generated_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (day, workspace_id)
);

-- Buckets whose recompute failed with a permanent error (bad data, a constraint): counted
-- per run; after AGGJOBS_QUARANTINE_AFTER failures the bucket is quarantined, i.e. skipped
-- so that it cannot block the rest. A later successful recompute (backfill) clears it.
CREATE TABLE aggjobs.quarantine (
    rollup text NOT NULL,
    grain text NOT NULL CHECK (grain IN ('hour', 'day', 'week')),
    bucket timestamptz NOT NULL,
    failures integer NOT NULL,
    last_error text NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at timestamptz NOT NULL DEFAULT now(),
    quarantined_at timestamptz,
    PRIMARY KEY (rollup, grain, bucket)
);
