-- 0016 (issue 17): liveness. Each Celery worker and each scheduler (beat) records a
-- heartbeat here every few seconds, whatever the broker, and marks its clean shutdown;
-- `aggjobs status`, the dashboard and /metrics read it (docs/jobs.md, "Liveness"). One row
-- per process name: a worker's Celery node name (w1@host), a scheduler's beat.<pid>@host.
-- Times are the database's clock (now()), so hosts whose clocks differ agree.
CREATE TABLE aggjobs.heartbeats (
    kind text NOT NULL CHECK (kind IN ('worker', 'scheduler')),
    name text NOT NULL CHECK (name <> ''),
    host text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL DEFAULT '{}',
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    PRIMARY KEY (kind, name)
);
