-- Migrations and the catalog they keep in step (db/migrate.py). Loaded by
-- aggjobs.sql.query(name).

-- name: bootstrap
-- The schema and the table of applied migrations, before any migration runs.
CREATE SCHEMA IF NOT EXISTS aggjobs;
CREATE TABLE IF NOT EXISTS aggjobs.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: record_migration
INSERT INTO aggjobs.schema_migrations (version, name) VALUES (%s, %s)

-- name: applied_migrations
SELECT version FROM aggjobs.schema_migrations

-- name: migrations_table
-- The table of applied migrations, NULL before the first migrate.
SELECT to_regclass('aggjobs.schema_migrations')

-- name: migrations_table_exists
SELECT to_regclass('aggjobs.schema_migrations') IS NOT NULL

-- name: schema_version
SELECT max(version) FROM aggjobs.schema_migrations

-- name: native_present
-- Whether extension aggjobs_native is installed, at any version.
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'aggjobs_native')

-- name: drop_native_extension
DROP EXTENSION IF EXISTS aggjobs_native

-- name: drop_native_schema
DROP SCHEMA IF EXISTS aggjobs_native

-- name: create_native_schema
CREATE SCHEMA IF NOT EXISTS aggjobs_native

-- name: create_native_extension
-- The optional C functions (docs/native.md); needs the privilege to create a C extension.
CREATE EXTENSION IF NOT EXISTS aggjobs_native SCHEMA aggjobs_native

-- name: update_native_extension
-- An install made by an earlier version of aggjobs: brought to the version its SQL calls.
ALTER EXTENSION aggjobs_native UPDATE TO {native_version}

-- name: upsert_source
-- A tracked source's relation, written only when it changed.
INSERT INTO aggjobs.sources AS s (source, relation_schema, relation_name, time_column, key_column)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source) DO UPDATE SET
relation_schema = excluded.relation_schema, relation_name = excluded.relation_name,
time_column = excluded.time_column, key_column = excluded.key_column
WHERE (s.relation_schema, s.relation_name, s.time_column, s.key_column)
IS DISTINCT FROM (excluded.relation_schema, excluded.relation_name,
excluded.time_column, excluded.key_column)

-- name: source_threshold
-- The tracking threshold of a source: changes before it are logged by its triggers.
SELECT threshold FROM aggjobs.sources WHERE source = %s

-- name: ensure_watermark
INSERT INTO aggjobs.watermarks (rollup, grain) VALUES (%s, %s)
ON CONFLICT DO NOTHING

-- name: relation_owner
SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass

-- name: analytics_comments
-- The comments of the named relations of schema analytics (views stamped with a digest).
SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class AS c
WHERE c.relnamespace = 'analytics'::regnamespace AND c.relname = ANY(%s)

-- name: live_view_comments
-- The live views of a schema with their comments (the digest of the SQL that made them).
SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class AS c
WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'v'
AND c.relname LIKE '%%\_live'

-- name: hand_over_live_views
-- The live views of a version being rebuilt, kept for its swap.
UPDATE aggjobs.rollup_definitions SET live_views = %s WHERE rollup = %s
AND version = %s AND state = 'building'
