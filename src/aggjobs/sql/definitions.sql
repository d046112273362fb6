-- Rollup definitions and retired tables (migration 0014; db/definitions.py).

-- name: try_migrate_lock
-- One migrate at a time (transaction-level: it ends with the migrate's transaction).
SELECT pg_try_advisory_xact_lock(hashtext('aggjobs.migrate'))

-- name: recorded_definitions
-- Per rollup, its live definition and the version being rebuilt, if any, each with the last
-- version number the rollup has had; and the last version of a rollup that has neither (one
-- removed, then declared again, goes on from it) (db/definitions.py, `recorded`).
SELECT rollup, version, state, fingerprint, definition, rebuild_from, check_error, last_version
FROM (SELECT *, max(version) OVER (PARTITION BY rollup) AS last_version
      FROM aggjobs.rollup_definitions) AS d
WHERE state IN ('live', 'building') OR version = last_version

-- name: start_building
INSERT INTO aggjobs.rollup_definitions
    (rollup, version, state, fingerprint, definition, rebuild_from)
VALUES (%(rollup)s, %(version)s, 'building', %(fingerprint)s, %(definition)s, %(rebuild_from)s)

-- name: cancel_building
UPDATE aggjobs.rollup_definitions SET state = 'cancelled', retired_at = now()
WHERE rollup = %(rollup)s AND state = 'building'

-- name: record_check_error
UPDATE aggjobs.rollup_definitions SET check_error = %(error)s
WHERE rollup = %(rollup)s AND version = %(version)s AND state = 'building'

-- name: forget_state
-- Everything the engine keeps under one state key (a cancelled rebuild's).
WITH w AS (DELETE FROM aggjobs.watermarks WHERE rollup = %(key)s),
     p AS (DELETE FROM aggjobs.pending_groups WHERE rollup = %(key)s)
DELETE FROM aggjobs.quarantine WHERE rollup = %(key)s

-- name: init_watermark
INSERT INTO aggjobs.watermarks (rollup, grain, watermark, horizon)
VALUES (%(rollup)s, %(grain)s, %(watermark)s, %(horizon)s)
ON CONFLICT (rollup, grain) DO NOTHING

-- name: raw_horizon
-- Where retention has cut a rollup's raw rows (NULL: it never has).
SELECT horizon FROM aggjobs.watermarks WHERE rollup = %(rollup)s AND grain = 'hour'

-- name: swap_version
SELECT aggjobs.swap_rollup_version(%(rollup)s, %(version)s)

-- name: record_definition
INSERT INTO aggjobs.rollup_definitions (rollup, version, state, fingerprint, definition)
VALUES (%(rollup)s, %(version)s, 'live', %(fingerprint)s, %(definition)s)

-- name: end_definition
-- The live version of a rollup ends: 'retired' (a later one replaces it) or 'removed'.
UPDATE aggjobs.rollup_definitions SET state = %(state)s, retired_at = now()
WHERE rollup = %(rollup)s AND state = 'live'

-- name: table_columns
-- A rollup table's columns as written (name, type, NOT NULL); none if it does not exist.
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute AS a
WHERE a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum

-- name: bucket_index_include
-- The columns a bucket index includes past its key, in order; none if it does not exist.
SELECT coalesce(array_agg(a.attname::text ORDER BY k.n), '{}')
FROM pg_index AS x
CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute AS a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
WHERE x.indexrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(index)s::text))
  AND k.n > x.indnkeyatts

-- name: forget_grains
-- The engine's state of grains whose tables are retired.
WITH w AS (
    DELETE FROM aggjobs.watermarks WHERE rollup = %(rollup)s AND grain = ANY(%(grains)s::text[])
), p AS (
    DELETE FROM aggjobs.pending_groups
    WHERE rollup = %(rollup)s AND grain = ANY(%(grains)s::text[])
)
DELETE FROM aggjobs.quarantine WHERE rollup = %(rollup)s AND grain = ANY(%(grains)s::text[])

-- name: retire_table
SELECT aggjobs.retire_table(to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text)),
                            %(retired)s, %(rollup)s, %(version)s, %(grain)s)
WHERE to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text)) IS NOT NULL

-- name: drop_retired_tables
SELECT aggjobs.drop_retired_tables(%(grace_s)s)

-- name: views_on_retired
-- Whether a materialized view of views.sql reads a retired table: views follow a table's
-- identity, so one retired in place (a removed grain, --force) leaves them reading it.
SELECT EXISTS (
    SELECT FROM pg_depend AS d
    JOIN pg_rewrite AS r ON r.oid = d.objid
    JOIN pg_class AS t ON t.oid = d.refobjid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND r.ev_class = ANY(%(views)s::regclass[])
      AND t.relnamespace = 'aggjobs_retired'::regnamespace)

-- name: live_fingerprint
-- The fingerprint of a rollup's live definition: verify's check that the tables it compares
-- are still those of the definition it started with (engine/verify.py).
SELECT fingerprint FROM aggjobs.rollup_definitions WHERE rollup = %(rollup)s AND state = 'live'
