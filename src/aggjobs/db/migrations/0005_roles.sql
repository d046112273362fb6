-- 0005: least-privilege database roles, the two narrow SECURITY DEFINER paths and the
-- append-only audit log (docs/security.md). The grants themselves are made by sync_catalog
-- (aggjobs.db.migrate.sync_grants) on every migrate, because the rollup tables and the
-- materialized views they must cover are created after the numbered migrations.

-- Group roles (NOLOGIN), cluster-wide: created only if missing, since every database of the
-- cluster (and every copy of a template) shares them.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'aggjobs_worker') THEN
        BEGIN
            CREATE ROLE aggjobs_worker NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- a concurrent migrate
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'aggjobs_reader') THEN
        BEGIN
            CREATE ROLE aggjobs_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
END
$roles$;

-- Where each source lives: filled from the catalog by sync_catalog. The SECURITY DEFINER
-- functions below act only on the tables named here, and only the owner writes this table
-- (the worker reads it), so they cannot be pointed at any other table.
ALTER TABLE aggjobs.sources
    ADD COLUMN IF NOT EXISTS relation_schema text,
    ADD COLUMN IF NOT EXISTS relation_name text,
    ADD COLUMN IF NOT EXISTS time_column text;

-- The client address of the request an audit row records (NULL: not over HTTP).
ALTER TABLE aggjobs.audit_log ADD COLUMN IF NOT EXISTS source text;

-- The audit log is append-only, for every role: UPDATE, DELETE and TRUNCATE raise. Only the
-- owner can lift this, deliberately, by dropping these triggers (docs/security.md).
CREATE FUNCTION aggjobs.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'aggjobs.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON aggjobs.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION aggjobs.audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON aggjobs.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION aggjobs.audit_log_append_only();

-- The one table of a known source (raises for anything else); used by the two functions
-- below, as their owner.
CREATE FUNCTION aggjobs.source_relation(source text, OUT relation text, OUT time_column text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel_schema text;
    rel_name text;
BEGIN
    SELECT s.relation_schema, s.relation_name, s.time_column
        INTO rel_schema, rel_name, time_column
        FROM aggjobs.sources AS s WHERE s.source = source_relation.source;
    IF rel_schema IS NULL OR rel_name IS NULL OR time_column IS NULL
            OR rel_schema IN ('aggjobs', 'analytics', 'pg_catalog', 'information_schema') THEN
        RAISE EXCEPTION 'not a source: %', source_relation.source
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    relation := pg_catalog.format('%I.%I', rel_schema, rel_name);
    IF pg_catalog.to_regclass(relation) IS NULL THEN
        RAISE EXCEPTION 'source % has no table %', source_relation.source, relation
            USING ERRCODE = 'undefined_table';
    END IF;
END
$$;

-- Retention's only way to delete raw rows: at most `batch` rows of a known source whose time
-- is before `before`. aggjobs.retention is on only while it runs, so the tracking triggers do
-- not log these deletes.
CREATE FUNCTION aggjobs.delete_raw_before(source text, before timestamptz, batch integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET aggjobs.retention = 'on' AS $$
DECLARE
    target record;
    deleted bigint;
BEGIN
    IF before IS NULL OR batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'delete_raw_before needs a time and a positive batch size'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO target FROM aggjobs.source_relation(source);
    EXECUTE pg_catalog.format(
        'DELETE FROM %s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %s WHERE %I < $1 LIMIT $2))',
        target.relation, target.relation, target.time_column)
        USING before, batch;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- The refresh's way to move a source's tracking threshold (CREATE OR REPLACE TRIGGER needs
-- the table's owner): the same row triggers as aggjobs.sql.tracking.create_triggers, with the
-- new threshold as their constant. The threshold only grows; returns the one in force.
-- `lock_timeout_ms` bounds the wait for the platform's writers (lock_not_available).
CREATE FUNCTION aggjobs.move_tracking_threshold(
    source text, threshold timestamptz, lock_timeout_ms integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
    in_force timestamptz;
    fn text;
    th text;
BEGIN
    IF threshold IS NULL THEN
        RAISE EXCEPTION 'move_tracking_threshold needs a threshold'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO target FROM aggjobs.source_relation(source);
    -- The row lock orders concurrent movers.
    SELECT s.threshold INTO in_force FROM aggjobs.sources AS s
        WHERE s.source = move_tracking_threshold.source FOR UPDATE;
    IF in_force IS NOT NULL AND in_force >= threshold THEN
        RETURN in_force;
    END IF;
    IF lock_timeout_ms IS NOT NULL THEN
        PERFORM pg_catalog.set_config('lock_timeout', lock_timeout_ms || 'ms', true);
    END IF;
    fn := pg_catalog.format('%I.%I', 'aggjobs', 'track_' || move_tracking_threshold.source);
    th := pg_catalog.format('%L::timestamptz', threshold);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER aggjobs_track_insert AFTER INSERT ON %s FOR EACH ROW'
        ' WHEN (NEW.%I < %s) EXECUTE FUNCTION %s()', target.relation, target.time_column, th, fn);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER aggjobs_track_update AFTER UPDATE ON %s FOR EACH ROW'
        ' WHEN ((OLD.%I < %s OR NEW.%I < %s) AND OLD IS DISTINCT FROM NEW)'
        ' EXECUTE FUNCTION %s()',
        target.relation, target.time_column, th, target.time_column, th, fn);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER aggjobs_track_delete AFTER DELETE ON %s FOR EACH ROW'
        ' WHEN (OLD.%I < %s) EXECUTE FUNCTION %s()', target.relation, target.time_column, th, fn);
    UPDATE aggjobs.sources AS s SET threshold = move_tracking_threshold.threshold,
        updated_at = pg_catalog.now()
        WHERE s.source = move_tracking_threshold.source;
    RETURN threshold;
END
$$;

REVOKE EXECUTE ON FUNCTION aggjobs.source_relation(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.delete_raw_before(text, timestamptz, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.move_tracking_threshold(text, timestamptz, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aggjobs.delete_raw_before(text, timestamptz, integer)
    TO aggjobs_worker;
GRANT EXECUTE ON FUNCTION aggjobs.move_tracking_threshold(text, timestamptz, integer)
    TO aggjobs_worker;
