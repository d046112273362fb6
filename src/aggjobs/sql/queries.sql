-- Static queries, each under a `-- name: x` header, loaded by aggjobs.sql.query(name).

-- name: try_rollup_lock
-- Serializes all writes to one rollup's tables (refresh, backfill, repair), across hosts.
SELECT pg_try_advisory_lock(hashtext('aggjobs.rollup'), hashtext(%(rollup)s))

-- name: rollup_unlock
SELECT pg_advisory_unlock(hashtext('aggjobs.rollup'), hashtext(%(rollup)s))

-- name: watermarks
SELECT grain, watermark, reset_requested FROM aggjobs.watermarks WHERE rollup = %(rollup)s

-- name: horizons
SELECT grain, horizon FROM aggjobs.watermarks WHERE rollup = %(rollup)s

-- name: set_watermark
UPDATE aggjobs.watermarks SET watermark = %(watermark)s, updated_at = now()
WHERE rollup = %(rollup)s AND grain = %(grain)s

-- name: reset_watermarks
UPDATE aggjobs.watermarks SET watermark = NULL, reset_requested = false, updated_at = now()
WHERE rollup = %(rollup)s

-- name: drop_all_pending
DELETE FROM aggjobs.pending_groups WHERE rollup = %(rollup)s

-- name: fan_out
-- Moves the source's logged changes to every rollup on it as pending hour groups; a row
-- `truncated` (or, logged before 0020, with a NULL workspace) marks a TRUNCATE. Runs in READ
-- COMMITTED: a concurrent fan-out skips the rows this one deleted, so each logged change
-- lands once. A change whose hour is outside the
-- supported times (a row at -infinity, BC, year 10000: docs/rollups.md) is in no bucket:
-- it is dropped here, counted, and never reaches the engine.
-- The rollups are the declared ones on the source and every version the database holds
-- over it (live, and being rebuilt, under its state key <rollup>@v<N>), read by this same
-- statement: a version a migrate creates later reads its buckets' raw rows after that, so
-- no change is lost to it. Returned as `keys`, for the statements that follow.
WITH keys AS (
    SELECT unnest(%(rollups)s::text[]) AS rollup
    UNION
    SELECT CASE state WHEN 'live' THEN rollup ELSE rollup || '@v' || version END
    FROM aggjobs.rollup_definitions
    WHERE state IN ('live', 'building') AND definition #>> '{source,name}' = %(source)s
), moved AS (
    DELETE FROM aggjobs.invalidation_log WHERE source = %(source)s
    RETURNING workspace_id, bucket, truncated
), queued AS (
    INSERT INTO aggjobs.pending_groups (rollup, grain, bucket, workspace_id)
    SELECT DISTINCT k.rollup, 'hour', m.bucket, m.workspace_id
    FROM moved AS m CROSS JOIN keys AS k
    WHERE m.workspace_id IS NOT NULL AND NOT m.truncated
      AND m.bucket >= %(supported_from)s AND m.bucket < %(supported_until)s
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) AS moved,
       count(*) FILTER (WHERE truncated OR workspace_id IS NULL) AS truncations,
       (SELECT count(*) FROM queued) AS queued,
       count(*) FILTER (WHERE workspace_id IS NOT NULL AND NOT truncated AND (bucket IS NULL
           OR bucket < %(supported_from)s OR bucket >= %(supported_until)s)) AS unsupported,
       (SELECT array_agg(rollup) FROM keys) AS keys
FROM moved

-- name: drop_unsupported_pending
-- Pending groups outside the supported times, left by a version that queued them: dropped
-- (and reported), so that no such bucket ever reaches a recompute or a status query.
DELETE FROM aggjobs.pending_groups
WHERE rollup = ANY(%(rollups)s::text[])
  AND (bucket < %(supported_from)s OR bucket >= %(supported_until)s)

-- name: request_reset
UPDATE aggjobs.watermarks SET reset_requested = true, updated_at = now()
WHERE rollup = ANY(%(rollups)s::text[]) AND grain = 'hour'

-- name: take_pending
-- A batch of dirty groups behind the watermark, removed in the transaction that recomputes
-- them (so the recompute's later snapshot sees every change that logged them). The batch is
-- picked once (an InitPlan) and its rows deleted by position: a queue's statistics are always
-- stale, and a join to the batch planned from them went quadratic (720 groups: 518,000 rows
-- compared, 327 ms).
DELETE FROM aggjobs.pending_groups
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM aggjobs.pending_groups
    WHERE rollup = %(rollup)s AND grain = %(grain)s
      AND bucket >= %(supported_from)s AND bucket < %(watermark)s
    ORDER BY bucket, workspace_id
    LIMIT %(limit)s
    FOR UPDATE
))
RETURNING bucket, workspace_id

-- name: drop_pending_behind_horizon
-- Changes behind the retention horizon: their bucket's inputs are gone, so recomputing it
-- would replace a complete row with a partial one. They are dropped, and reported.
DELETE FROM aggjobs.pending_groups AS p
USING aggjobs.watermarks AS w
WHERE p.rollup = %(rollup)s AND p.grain = %(grain)s
  AND w.rollup = p.rollup AND w.grain = p.grain AND p.bucket < w.horizon

-- name: set_horizon
-- Only ever moves forward.
UPDATE aggjobs.watermarks SET horizon = greatest(horizon, %(horizon)s), updated_at = now()
WHERE rollup = %(rollup)s AND grain = %(grain)s

-- name: record_failure
-- One more failure of a bucket; quarantined once it failed `after` times.
INSERT INTO aggjobs.quarantine AS q (rollup, grain, bucket, failures, last_error, quarantined_at)
VALUES (%(rollup)s, %(grain)s, %(bucket)s, 1, %(error)s,
        CASE WHEN %(after)s <= 1 THEN now() END)
ON CONFLICT (rollup, grain, bucket) DO UPDATE
SET failures = q.failures + 1, last_error = excluded.last_error, last_failed_at = now(),
    quarantined_at = coalesce(q.quarantined_at,
                              CASE WHEN q.failures + 1 >= %(after)s THEN now() END)
RETURNING quarantined_at IS NOT NULL

-- name: clear_quarantine
DELETE FROM aggjobs.quarantine
WHERE rollup = %(rollup)s AND grain = %(grain)s AND bucket >= %(lo)s AND bucket < %(hi)s

-- name: pending_buckets
SELECT DISTINCT bucket FROM aggjobs.pending_groups
WHERE rollup = %(rollup)s AND grain = %(grain)s
  AND bucket >= %(supported_from)s AND bucket < %(watermark)s
ORDER BY bucket LIMIT %(limit)s

-- name: quarantine_counts
SELECT rollup, grain, count(*) FILTER (WHERE quarantined_at IS NOT NULL) AS quarantined,
       count(*) FILTER (WHERE quarantined_at IS NULL) AS failing
FROM aggjobs.quarantine GROUP BY rollup, grain

-- name: quarantine_among
-- Which of the listed buckets are in quarantine (failing or quarantined).
SELECT bucket FROM aggjobs.quarantine
WHERE rollup = %(rollup)s AND grain = %(grain)s AND bucket = ANY(%(bk)s::timestamptz[])

-- name: quarantined_buckets
SELECT bucket, last_error FROM aggjobs.quarantine
WHERE rollup = %(rollup)s AND grain = %(grain)s AND bucket >= %(lo)s AND bucket < %(hi)s
  AND quarantined_at IS NOT NULL
ORDER BY bucket

-- name: drop_pending_range
DELETE FROM aggjobs.pending_groups
WHERE rollup = %(rollup)s AND grain = %(grain)s AND bucket >= %(lo)s AND bucket < %(hi)s

-- name: pending_counts
-- Within the supported times only: a bucket outside them (state left by an older version,
-- dropped by the next refresh) is not a timestamp Python can hold.
SELECT rollup, grain, count(*) AS groups, min(bucket) AS oldest_bucket, min(since) AS oldest_since
FROM aggjobs.pending_groups
WHERE bucket >= %(supported_from)s AND bucket < %(supported_until)s
GROUP BY rollup, grain

-- name: unlogged_changes
SELECT source, count(*) AS changes, min(logged_at) AS oldest FROM aggjobs.invalidation_log
GROUP BY source

-- name: find_open_backfill
-- The unfinished backfill of this rollup and range, locked so that a concurrent opener waits
-- for this one's decision; `busy`: another session runs it and is still connected.
SELECT b.id, b.grain, b.done_until, b.started_at, b.backend_pid,
       b.status = 'running' AND b.backend_pid IS DISTINCT FROM pg_backend_pid()
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) AS a WHERE a.pid = b.backend_pid) AS busy,
       b.status
FROM aggjobs.backfills AS b
WHERE b.rollup = %(rollup)s AND b.range_start = %(lo)s AND b.range_end = %(hi)s
  AND b.status <> 'succeeded'
FOR UPDATE OF b

-- name: running_backfill
-- The one a refused opener names (not locked: only for the message).
SELECT id, grain, done_until, started_at, backend_pid, true, status FROM aggjobs.backfills
WHERE rollup = %(rollup)s AND range_start = %(lo)s AND range_end = %(hi)s
  AND status <> 'succeeded'

-- name: create_backfill
-- A concurrent creator of the same range makes this raise UniqueViolation
-- (backfills_one_open_per_range): the backfill is busy.
INSERT INTO aggjobs.backfills (rollup, range_start, range_end, grain, done_until, backend_pid)
VALUES (%(rollup)s, %(lo)s, %(hi)s, 'hour', %(lo)s, pg_backend_pid())
RETURNING id, grain, done_until

-- name: claim_backfill
-- Resume a failed, cancelled or abandoned backfill in this session, or start a queued one.
UPDATE aggjobs.backfills SET backend_pid = pg_backend_pid(), status = 'running',
    cancel_requested = false, cancelled_by = NULL, finished_at = NULL,
    started_at = CASE WHEN status = 'queued' THEN now() ELSE started_at END
WHERE id = %(id)s

-- name: mark_abandoned_backfills
-- Backfills still 'running' whose session is gone: their process died. Failed, so that the
-- dashboard stops showing them as running; the next backfill of the range resumes them.
UPDATE aggjobs.backfills AS b
SET status = 'failed', finished_at = statement_timestamp(),
    error = coalesce(b.error, 'abandoned: its database session ended before it finished')
WHERE b.status = 'running'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) AS a WHERE a.pid = b.backend_pid)
RETURNING b.id, b.rollup

-- name: audit_backfill_started
-- The row a backfill writes when it starts, in its own transaction (autocommit).
INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
VALUES (%(actor)s, 'backfill', %(target)s, %(params)s, 'started', %(source)s)
RETURNING id

-- name: audit_backfill_outcome
-- How the backfill whose start is params.started_id ended; a second outcome (a sweep that
-- saw its session gone, racing the process's own late word) is dropped.
INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
VALUES (%(actor)s, 'backfill', %(target)s, %(params)s, %(outcome)s, %(source)s)
ON CONFLICT ((params ->> 'started_id')) WHERE action = 'backfill' AND params ? 'started_id'
DO NOTHING

-- name: audit_abandoned_backfills
-- Started backfills with no outcome whose session is gone (the process was killed, or its
-- session terminated before it could write one): an 'abandoned' outcome each, with the
-- start's actor, target and source, and who noticed.
INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
SELECT s.actor, 'backfill', s.target,
       s.params || jsonb_build_object('started_id', s.id, 'noticed_by', %(noticed_by)s::text),
       'abandoned: its session ended before it recorded an outcome (process killed or '
       'session terminated)', s.source
FROM aggjobs.audit_log AS s
WHERE s.action = 'backfill' AND s.outcome = 'started'
  AND NOT EXISTS (SELECT 1 FROM aggjobs.audit_log AS o
                  WHERE o.action = 'backfill' AND o.params ? 'started_id'
                    AND o.params ->> 'started_id' = s.id::text)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) AS a
                  WHERE a.pid = (s.params ->> 'session_pid')::integer)
ON CONFLICT ((params ->> 'started_id')) WHERE action = 'backfill' AND params ? 'started_id'
DO NOTHING
RETURNING (params ->> 'started_id')::bigint

-- name: backfill_progress
UPDATE aggjobs.backfills SET grain = %(grain)s, done_until = %(done_until)s, status = 'running',
    error = NULL
WHERE id = %(id)s

-- name: backfill_cancel_requested
-- Whether someone asked the backfill to stop (checked before each chunk), and who.
SELECT cancel_requested, cancelled_by FROM aggjobs.backfills WHERE id = %(id)s

-- name: queue_backfill
-- A backfill asked for over HTTP, for a worker's task to run (operations/backfill.py).
INSERT INTO aggjobs.backfills (rollup, range_start, range_end, grain, done_until, status,
                               requested_by)
VALUES (%(rollup)s, %(lo)s, %(hi)s, 'hour', %(lo)s, 'queued', %(who)s)
RETURNING id

-- name: requeue_backfill
-- A failed, cancelled or abandoned backfill of the range, queued again: it resumes where it
-- stopped.
UPDATE aggjobs.backfills SET status = 'queued', requested_by = %(who)s, error = NULL,
    cancel_requested = false, cancelled_by = NULL, finished_at = NULL, task_id = NULL
WHERE id = %(id)s
RETURNING id

-- name: backfill_task
UPDATE aggjobs.backfills SET task_id = %(task_id)s WHERE id = ANY(%(ids)s)

-- name: cancel_backfill
-- Ask a queued or running backfill to stop. One that has not started (queued), or whose
-- session is gone, is cancelled at once; a running one stops before its next chunk.
WITH target AS (
    SELECT b.id, b.status AS was,
           b.status = 'queued' OR NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) AS a WHERE a.pid = b.backend_pid) AS at_once
    FROM aggjobs.backfills AS b
    WHERE b.id = %(id)s AND b.status IN ('queued', 'running')
    FOR UPDATE OF b
)
UPDATE aggjobs.backfills AS b SET
    cancel_requested = true, cancelled_by = %(who)s,
    status = CASE WHEN t.at_once THEN 'cancelled' ELSE b.status END,
    finished_at = CASE WHEN t.at_once THEN now() ELSE b.finished_at END,
    error = CASE WHEN t.at_once THEN format('cancelled by %%s before it %%s', %(who)s::text,
                 CASE WHEN t.was = 'queued' THEN 'started' ELSE 'finished' END)
            ELSE b.error END
FROM target AS t
WHERE b.id = t.id
RETURNING b.id, b.rollup, t.was, b.status

-- name: fail_still_queued
-- A worker's task ended leaving some of its backfills queued: failed, with why.
UPDATE aggjobs.backfills SET status = 'failed', error = %(error)s, finished_at = now()
WHERE id = ANY(%(ids)s) AND status = 'queued'

-- name: backfill_status
SELECT status FROM aggjobs.backfills WHERE id = %(id)s

-- name: backfill_by_id
SELECT id, rollup, status FROM aggjobs.backfills WHERE id = %(id)s

-- name: backfill_finish
UPDATE aggjobs.backfills SET status = %(status)s, error = %(error)s, finished_at = now()
WHERE id = %(id)s

-- name: source_columns
-- A source table's columns (db/check.py; engine/recompute.py, numeric_columns): whether it
-- exists, then each column with its type (a domain's base type: typname, category,
-- typtype) and the type as written.
SELECT c.oid IS NOT NULL, a.attname, bt.typname, bt.typcategory, bt.typtype,
       format_type(a.atttypid, a.atttypmod)
FROM (SELECT to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text)) AS oid) AS c
LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_type AS t ON t.oid = a.atttypid
LEFT JOIN pg_type AS bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END

-- name: native_installed
-- Whether the C functions of extension aggjobs_native can be used by this session: those of
-- the version this code's SQL calls (native/aggjobs_native.control); an older one is updated
-- by `aggjobs migrate`, and the portable SQL runs until it is.
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'aggjobs_native' AND extversion = {native_version})
   AND has_schema_privilege('aggjobs_native', 'USAGE')

-- name: native_in_database
-- Whether the rollups' jobs run the C functions: extension aggjobs_native installed at the
-- version native_installed asks for (`aggjobs status`, whoever its role: migrate grants the
-- workers its schema).
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'aggjobs_native' AND extversion = {native_version})

-- name: native_available
-- Whether the server has the extension's files (built by `make native`, docs/native.md), of
-- the version native_installed asks for.
SELECT EXISTS (SELECT 1 FROM pg_available_extension_versions
               WHERE name = 'aggjobs_native' AND version = {native_version})

-- name: work_mem_bytes
SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem'))

-- name: tracking_thresholds
-- Per source its tracking threshold, or in `broken` (as text) one outside the bounds of
-- aggjobs.tracking_threshold_allowed (written by hand: `aggjobs migrate` repairs it).
SELECT source,
       CASE WHEN aggjobs.tracking_threshold_allowed(threshold) THEN threshold END AS threshold,
       CASE WHEN NOT aggjobs.tracking_threshold_allowed(threshold) THEN threshold::text END
           AS broken
FROM aggjobs.sources

-- name: no_runs_yet
-- Whether the platform's runs table is empty (`aggjobs up` then loads demo data).
SELECT NOT EXISTS (SELECT 1 FROM agent_runs)

-- name: move_tracking_threshold
-- Move a source's tracking threshold up to a time, waiting for its writers a given number of
-- ms at most (SECURITY DEFINER, migration 0005); returns the threshold now in force.
SELECT aggjobs.move_tracking_threshold(%s, %s, %s)

-- name: current_setting
SELECT current_setting(%s)

-- name: has_lz4
-- Whether the server was built with lz4 (PostgreSQL's own packages are; some builds, the
-- embedded server's among them, are not).
SELECT coalesce(bool_or('lz4' = ANY(enumvals)), false) FROM pg_settings
WHERE name = 'default_toast_compression'

-- name: set_session_setting
-- A setting for the rest of the session (SET with a bound value).
SELECT set_config(%s, %s, false)

-- name: set_lock_timeout
SELECT set_config('lock_timeout', %s, true)

-- name: read_only_snapshot
-- The transaction's statements all read one snapshot, and write nothing.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- name: one_snapshot
-- The transaction's statements all read one snapshot.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ

-- name: export_snapshot
-- The transaction's snapshot, for another session to read the same rows (reports/build.py).
SELECT pg_export_snapshot()

-- name: read_only_repeatable_read
-- Before SET TRANSACTION SNAPSHOT, which needs it.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- name: definitions_table
-- The table of rollup definitions, NULL before the migration that makes it.
SELECT to_regclass('aggjobs.rollup_definitions')

-- name: utc_today
-- The views' reference day: the database's now(), in UTC.
SELECT (now() AT TIME ZONE 'UTC')::date

-- name: delete_health_day
DELETE FROM analytics.workspace_health_daily WHERE day = %s

-- name: copy_health
-- A day's scores, streamed (updated_at: the column's default, now()).
COPY analytics.workspace_health_daily (workspace_id, day, score, status, components)
FROM STDIN

-- name: ping
SELECT 1

-- name: list_backfills
-- Backfills of a status (NULL: any), running first, then queued, then newest.
SELECT id, rollup, grain, range_start, range_end, done_until, status, error,
started_at, finished_at, requested_by, cancel_requested, cancelled_by, task_id
FROM aggjobs.backfills
WHERE %(status)s::text IS NULL OR status = %(status)s
ORDER BY status <> 'running', status <> 'queued', started_at DESC, id DESC LIMIT %(limit)s

-- name: backfill_row
SELECT id, rollup, grain, range_start, range_end, done_until, status, error,
started_at, finished_at, requested_by, cancel_requested, cancelled_by, task_id
FROM aggjobs.backfills WHERE id = %(id)s

-- name: latest_report_day
-- The latest day with a stored platform report.
SELECT max(day) FROM analytics.daily_reports
WHERE workspace_id IS NULL

-- name: citus_installed
-- Whether the database is a Citus coordinator (or node): the extension is installed.
SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')
