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
-- Moves the source's logged changes to every rollup on it as pending hour groups; a NULL
-- workspace marks a TRUNCATE. Runs in READ COMMITTED: a concurrent fan-out skips the rows
-- this one deleted, so each logged change lands once. A change whose hour is outside the
-- supported times (a row at -infinity, BC, year 10000: docs/rollups.md) is in no bucket:
-- it is dropped here, counted, and never reaches the engine.
WITH moved AS (
    DELETE FROM aggjobs.invalidation_log WHERE source = %(source)s
    RETURNING workspace_id, bucket
), queued AS (
    INSERT INTO aggjobs.pending_groups (rollup, grain, bucket, workspace_id)
    SELECT DISTINCT r.rollup, 'hour', m.bucket, m.workspace_id
    FROM moved AS m CROSS JOIN unnest(%(rollups)s::text[]) AS r(rollup)
    WHERE m.workspace_id IS NOT NULL
      AND m.bucket >= %(supported_from)s AND m.bucket < %(supported_until)s
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) AS moved,
       count(*) FILTER (WHERE workspace_id IS NULL) AS truncations,
       (SELECT count(*) FROM queued) AS queued,
       count(*) FILTER (WHERE workspace_id IS NOT NULL AND (bucket IS NULL
           OR bucket < %(supported_from)s OR bucket >= %(supported_until)s)) AS unsupported
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

-- name: open_backfill
-- The unfinished backfill of this rollup and range, or a new one.
WITH existing AS (
    SELECT id, grain, done_until FROM aggjobs.backfills
    WHERE rollup = %(rollup)s AND range_start = %(lo)s AND range_end = %(hi)s
      AND status <> 'succeeded'
), created AS (
    INSERT INTO aggjobs.backfills (rollup, range_start, range_end, grain, done_until)
    SELECT %(rollup)s, %(lo)s, %(hi)s, 'hour', %(lo)s
    WHERE NOT EXISTS (SELECT 1 FROM existing)
    RETURNING id, grain, done_until
)
SELECT id, grain, done_until, true AS resumed FROM existing
UNION ALL
SELECT id, grain, done_until, false FROM created

-- name: backfill_progress
UPDATE aggjobs.backfills SET grain = %(grain)s, done_until = %(done_until)s, status = 'running',
    error = NULL
WHERE id = %(id)s

-- name: backfill_finish
UPDATE aggjobs.backfills SET status = %(status)s, error = %(error)s, finished_at = now()
WHERE id = %(id)s

-- name: native_installed
-- Whether the C functions of extension aggjobs_native can be used by this session.
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'aggjobs_native')
   AND has_schema_privilege('aggjobs_native', 'USAGE')

-- name: native_available
-- Whether the server has the extension's files (built by `make native`, docs/native.md).
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'aggjobs_native')

-- name: work_mem_bytes
SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem'))
