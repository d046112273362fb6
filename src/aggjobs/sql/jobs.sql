-- Job runs: locks, history rows, the abandoned sweep. Loaded by aggjobs.sql.query(name).

-- name: try_job_lock
-- One run of a job at a time, on any number of hosts: a session lock, released by
-- PostgreSQL when the session ends, so a dead process never keeps it.
SELECT pg_try_advisory_lock(hashtext('aggjobs.job'), hashtext(%(job)s))

-- name: hold_job_steps
-- Each session of a run's side-by-side steps holds this shared lock: if the run's process
-- dies, its own session (and the job lock) ends at once, but a step's session may work on
-- until it notices; the next run waits for those (steps_finished) instead of overlapping.
SELECT pg_advisory_lock_shared(hashtext('aggjobs.job-steps'), hashtext(%(job)s))

-- name: release_locks
-- Every advisory lock of the session, let go before it closes (jobs/run.py, end_session).
SELECT pg_advisory_unlock_all()

-- name: steps_finished
-- True when no session of an earlier run's steps is left (taken and let go at once).
SELECT CASE WHEN pg_try_advisory_lock(hashtext('aggjobs.job-steps'), hashtext(%(job)s))
            THEN pg_advisory_unlock(hashtext('aggjobs.job-steps'), hashtext(%(job)s))
            ELSE false END

-- name: try_heavy_slot
-- One of `slots` numbered locks: caps the heavy jobs running at once across hosts.
SELECT s FROM generate_series(1, %(slots)s) AS s
WHERE pg_try_advisory_lock(hashtext('aggjobs.heavy'), s)
LIMIT 1

-- name: take_heavy_slot
-- Slot `slot`, waiting for it: a run takes back the slot it held when its connection broke.
SELECT pg_advisory_lock(hashtext('aggjobs.heavy'), %(slot)s)

-- name: mark_abandoned
-- Runs still 'running' whose PostgreSQL session is gone: their process died.
-- statement_timestamp(), not clock_timestamp(), in every UPDATE of aggjobs' tables: the same
-- instant for a statement sent on its own, and STABLE, which Citus requires of the functions
-- of an UPDATE of a distributed or reference table (issue 18, point 8). The live sessions are
-- read from pg_stat_get_activity(NULL), the function under the view pg_stat_activity, whose
-- join with pg_database Citus refuses in a statement on a reference table.
UPDATE aggjobs.job_runs
SET status = 'abandoned', finished_at = statement_timestamp(),
    error = coalesce(error, 'the process running it died (its database session ended)')
WHERE status = 'running'
  AND (backend_pid IS NULL OR backend_pid NOT IN (SELECT pid FROM pg_catalog.pg_stat_get_activity(NULL)))
RETURNING id, job

-- name: start_run
INSERT INTO aggjobs.job_runs
    (job, trigger, who, as_of, slot, status, attempt, host, pid, backend_pid, task_id)
VALUES (%(job)s, %(trigger)s, %(who)s, %(as_of)s, %(slot)s, %(status)s, %(attempt)s,
        %(host)s, %(pid)s, pg_backend_pid(), %(task_id)s)
RETURNING id

-- name: skip_run
INSERT INTO aggjobs.job_runs
    (job, trigger, who, as_of, slot, status, finished_at, error, attempt, host, pid, task_id)
VALUES (%(job)s, %(trigger)s, %(who)s, %(as_of)s, %(slot)s, 'skipped', clock_timestamp(),
        %(error)s, %(attempt)s, %(host)s, %(pid)s, %(task_id)s)
RETURNING id

-- name: running_run
SELECT id, host, pid, started_at FROM aggjobs.job_runs
WHERE job = %(job)s AND status = 'running' ORDER BY started_at DESC LIMIT 1

-- name: slot_run
SELECT id, status FROM aggjobs.job_runs
WHERE job = %(job)s AND slot = %(slot)s AND status IN ('running', 'succeeded', 'failed')

-- name: last_step_seconds
-- How long each step took in the job's last finished run: the steps that run side by side
-- start longest first (jobs/run.py, Run.start_order).
SELECT s.step ->> 'name', coalesce((s.step ->> 'seconds')::float8, 0)
FROM (SELECT steps FROM aggjobs.job_runs
      WHERE job = %(job)s AND status IN ('succeeded', 'failed')
      ORDER BY started_at DESC LIMIT 1) AS r
CROSS JOIN LATERAL jsonb_array_elements(r.steps) AS s(step)

-- name: record_steps
UPDATE aggjobs.job_runs SET steps = %(steps)s, backend_pid = pg_backend_pid()
WHERE id = %(id)s

-- name: adopt_run
-- After a reconnect: the run's new session, so that the abandoned sweep leaves it alone
-- (and takes it back if a sweep marked it while it was reconnecting).
UPDATE aggjobs.job_runs
SET backend_pid = pg_backend_pid(), status = 'running', finished_at = NULL,
    error = CASE WHEN status = 'abandoned' THEN NULL ELSE error END
WHERE id = %(id)s

-- name: finish_run
UPDATE aggjobs.job_runs
SET status = %(status)s, steps = %(steps)s, error = %(error)s, finished_at = statement_timestamp()
WHERE id = %(id)s

-- name: audit
-- source: the client address over HTTP, else where the command ran ("cli:user@host").
INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
VALUES (%(actor)s, %(action)s, %(target)s, %(params)s, %(outcome)s, %(source)s)

-- name: audit_entries
-- The audit log, newest first: every entry, or those at or after `since` (`aggjobs audit`).
SELECT id, at, actor, action, target, params, outcome, source
FROM aggjobs.audit_log WHERE %(since)s::timestamptz IS NULL OR at >= %(since)s
ORDER BY at DESC, id DESC LIMIT %(limit)s

-- name: oldest_pending
-- Within the supported times: buckets outside them are dropped by the next refresh.
SELECT min(bucket) FROM aggjobs.pending_groups WHERE rollup = %(rollup)s AND grain = %(grain)s
  AND bucket >= %(supported_from)s AND bucket < %(supported_until)s

-- name: job_summary
-- Per job: its latest run, its latest success, and how many runs failed in a row since.
WITH ranked AS (
    SELECT r.*, row_number() OVER (PARTITION BY job ORDER BY started_at DESC, id DESC) AS n
    FROM aggjobs.job_runs AS r
    WHERE status <> 'skipped'
)
SELECT j.job,
       l.id AS last_id, l.status AS last_status, l.trigger AS last_trigger,
       l.started_at AS last_started, l.finished_at AS last_finished, l.error AS last_error,
       (SELECT max(finished_at) FROM aggjobs.job_runs
        WHERE job = j.job AND status = 'succeeded') AS last_success,
       (SELECT count(*) FROM ranked AS f
        WHERE f.job = j.job AND f.status IN ('failed', 'abandoned')
          AND f.n < coalesce((SELECT min(n) FROM ranked AS s
                              WHERE s.job = j.job AND s.status = 'succeeded'), 2147483647)
       ) AS consecutive_failures,
       (SELECT count(*) FROM aggjobs.job_runs WHERE job = j.job AND status = 'running')
           AS running
FROM unnest(%(jobs)s::text[]) WITH ORDINALITY AS j(job, ord)
LEFT JOIN ranked AS l ON l.job = j.job AND l.n = 1
ORDER BY j.ord

-- name: run_history
SELECT id, job, trigger, who, as_of, slot, status, started_at, finished_at,
       extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at) AS seconds,
       steps, error, attempt, host, pid, task_id
FROM aggjobs.job_runs
WHERE (%(job)s::text IS NULL OR job = %(job)s)
  AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s)
ORDER BY started_at DESC, id DESC
LIMIT %(limit)s

-- name: run_by_id
-- One run, with everything its page shows (api/run_page.py); the audit rows naming it.
SELECT id, job, trigger, who, as_of, slot, status, started_at, finished_at,
       extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at) AS seconds,
       steps, error, attempt, host, pid, backend_pid, task_id
FROM aggjobs.job_runs WHERE id = %(id)s

-- name: run_audit
-- The audit rows about a run: its own (`run`) and a retry's (`retry`), oldest first; both
-- written after the run started (`since`), which the index on `at` finds fast.
SELECT id, at, actor, action, target, params, outcome, source FROM aggjobs.audit_log
WHERE action IN ('run', 'retry')
  AND at >= %(since)s
  AND (params->>'run' = %(id)s::text OR params->>'retry_of' = %(id)s::text)
ORDER BY id

-- name: lock_alerts
SELECT pg_advisory_xact_lock(hashtext('aggjobs.alerts'))

-- name: open_alerts
SELECT key, message FROM aggjobs.alerts WHERE resolved_at IS NULL

-- name: open_alert
INSERT INTO aggjobs.alerts (key, message) VALUES (%(key)s, %(message)s)

-- name: resolve_alert
UPDATE aggjobs.alerts SET resolved_at = now() WHERE key = %(key)s AND resolved_at IS NULL

-- name: retention_horizons
-- Per rollup and grain: before which time its buckets can no longer be recomputed (cleanup).
SELECT rollup, grain, horizon FROM aggjobs.watermarks ORDER BY rollup, grain

-- name: delete_raw_before
-- A batch of raw rows of a known source before a time, deleted untracked through the
-- worker's one path for it (SECURITY DEFINER, migration 0005); returns how many.
SELECT aggjobs.delete_raw_before(%s, %s, %s)

-- name: drop_partition_before
-- The oldest partition of a source lying wholly before a time, detached and dropped if its
-- lock is had within the given ms (SECURITY DEFINER, migration 0008); no row when there is none.
SELECT partition_name, nullif(range_start, '-infinity'), range_end,
row_count, dropped FROM aggjobs.drop_partition_before(%s, %s, %s)

-- name: metric_run_counts
-- Prometheus (api/metrics.py): runs per job and status in the retained history.
SELECT job, status, count(*) FROM aggjobs.job_runs GROUP BY job, status

-- name: metric_rows_written
-- Prometheus: rows written per job, summed over the steps of the retained runs (a gauge:
-- the cleanup job trims the history).
SELECT r.job, coalesce(sum((s.step ->> 'rows')::bigint), 0)
FROM aggjobs.job_runs AS r CROSS JOIN LATERAL jsonb_array_elements(r.steps) AS s(step)
GROUP BY r.job

-- name: metric_finished_runs
-- Prometheus: the runs finished at or after `since` (database clock), each with its duration
-- and the rows its steps wrote, for the API process's own counters (api/metrics.py); and the
-- statement's time, from which the next read starts.
SELECT r.id, r.job, r.status,
       greatest(extract(epoch FROM r.finished_at - r.started_at), 0)::float8 AS seconds,
       (SELECT coalesce(sum((s.step ->> 'rows')::bigint), 0)
        FROM jsonb_array_elements(r.steps) AS s(step)) AS rows
FROM aggjobs.job_runs AS r
WHERE r.finished_at >= %(since)s AND r.status <> 'running'

-- name: metric_clock
SELECT statement_timestamp()

-- name: metric_running_backfills
-- Prometheus: the backfills running now, with how far each has come.
SELECT id, rollup, grain, range_start, range_end, done_until, status
FROM aggjobs.backfills WHERE status = 'running' ORDER BY id
