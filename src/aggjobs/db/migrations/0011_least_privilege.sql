-- 0011: least privilege in fact (issue 21; docs/security.md).
-- - Tracking thresholds are bounded: move_tracking_threshold accepts only [1970-01-01,
--   now() + 10 minutes]; `aggjobs migrate` repairs one outside (aggjobs.db.migrate).
-- - The tracking triggers skip a DELETE only inside aggjobs.delete_raw_before: it writes its
--   transaction's id to aggjobs.retention_transactions (owner-only), which the trigger
--   function checks; the settable GUC aggjobs.retention no longer means anything.
-- - api_tokens is read-only for the worker: tokens change only through the audited
--   SECURITY DEFINER functions create_token, revoke_token and token_used (the grants are
--   sync_grants').

-- The bounds of a tracking threshold: a real time (1970 on, like the supported times of
-- docs/rollups.md), and not ahead of now by more than hosts' clocks may disagree. A later
-- threshold would make the trigger log the platform's ordinary, current writes.
CREATE FUNCTION aggjobs.tracking_threshold_allowed(threshold timestamptz) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT threshold >= '1970-01-01 00:00:00+00'::timestamptz
       AND threshold <= pg_catalog.now() + interval '10 minutes'
$$;

-- The refresh's way to move a source's tracking threshold (CREATE OR REPLACE TRIGGER needs
-- the table's owner): the same row triggers as aggjobs.sql.tracking.create_triggers, with the
-- new threshold as their constant. The threshold only grows, within
-- aggjobs.tracking_threshold_allowed; returns the one in force. A threshold in force beyond
-- the bounds (written by hand) is refused too: `aggjobs migrate` repairs it.
-- `lock_timeout_ms` bounds the wait for the platform's writers (lock_not_available).
CREATE OR REPLACE FUNCTION aggjobs.move_tracking_threshold(
    source text, threshold timestamptz, lock_timeout_ms integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
    in_force timestamptz;
    fn text;
    th text;
BEGIN
    IF threshold IS NULL OR NOT aggjobs.tracking_threshold_allowed(threshold) THEN
        RAISE EXCEPTION 'tracking threshold % refused: it must be within [1970-01-01, now + 10 minutes]',
            threshold USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO target FROM aggjobs.source_relation(source);
    -- The row lock orders concurrent movers.
    SELECT s.threshold INTO in_force FROM aggjobs.sources AS s
        WHERE s.source = move_tracking_threshold.source FOR UPDATE;
    IF in_force IS NOT NULL AND in_force >= threshold THEN
        IF NOT aggjobs.tracking_threshold_allowed(in_force) THEN
            RAISE EXCEPTION 'the tracking threshold of % is %, beyond its bounds: run `aggjobs migrate` to repair it',
                move_tracking_threshold.source, in_force USING ERRCODE = 'invalid_parameter_value';
        END IF;
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

-- The transactions deleting for retention, while delete_raw_before runs (the row is removed
-- before it returns, or rolled back with it): the tracking triggers' function skips a
-- DELETE of a transaction listed here. Only the owner writes it; everyone may read it, since
-- the trigger function runs as whoever deletes (a txid tells nothing).
CREATE TABLE aggjobs.retention_transactions (
    txid xid8 PRIMARY KEY
);
REVOKE ALL ON aggjobs.retention_transactions FROM PUBLIC;
GRANT SELECT ON aggjobs.retention_transactions TO PUBLIC;

-- Retention's only way to delete raw rows: at most `batch` rows of a known source whose time
-- is before `before`, in a transaction marked in aggjobs.retention_transactions for the
-- duration of the call only, so the tracking triggers do not log these deletes. A
-- partitioned source is deleted from leaf by leaf (0008).
CREATE OR REPLACE FUNCTION aggjobs.delete_raw_before(source text, before timestamptz, batch integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
    leaf regclass;
    deleted bigint := 0;
    n bigint;
BEGIN
    IF before IS NULL OR batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'delete_raw_before needs a time and a positive batch size'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO target FROM aggjobs.source_relation(source);
    INSERT INTO aggjobs.retention_transactions (txid) VALUES (pg_catalog.pg_current_xact_id())
        ON CONFLICT DO NOTHING;
    IF (SELECT c.relkind FROM pg_catalog.pg_class AS c
            WHERE c.oid = target.relation::regclass) <> 'p' THEN
        EXECUTE pg_catalog.format(
            'DELETE FROM %s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %s WHERE %I < $1 LIMIT $2))',
            target.relation, target.relation, target.time_column)
            USING before, batch;
        GET DIAGNOSTICS deleted = ROW_COUNT;
    ELSE
        FOR leaf IN
            SELECT t.relid FROM pg_catalog.pg_partition_tree(target.relation::regclass) AS t
                JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
                WHERE t.isleaf AND c.relkind = 'r'
                ORDER BY t.level, c.relname
        LOOP
            EXECUTE pg_catalog.format(
                'DELETE FROM %s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %s WHERE %I < $1 LIMIT $2))',
                leaf, leaf, target.time_column)
                USING before, batch - deleted;
            GET DIAGNOSTICS n = ROW_COUNT;
            deleted := deleted + n;
            EXIT WHEN deleted >= batch;
        END LOOP;
    END IF;
    DELETE FROM aggjobs.retention_transactions AS r
        WHERE r.txid = pg_catalog.pg_current_xact_id();
    RETURN deleted;
END
$$;

-- API tokens change only here, each change (and each refusal) audited in the same
-- transaction. `expires_days` NULL: never; else within (0, 36500]. Returns the outcome, as
-- audited: 'created' or 'refused: <why>'. The caller chose the secret and passes its SHA-256.
CREATE FUNCTION aggjobs.create_token(
    name text, role text, token_hash text, actor text, expires_days double precision,
    source text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    expires timestamptz;
    outcome text;
BEGIN
    IF expires_days > 0 AND expires_days <= 36500 THEN
        expires := pg_catalog.now() + expires_days * interval '1 day';
    END IF;
    outcome := CASE
        WHEN create_token.name IS NULL
            OR create_token.name !~ '^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}$'
            THEN 'refused: invalid name'
        WHEN create_token.role IS NULL
            OR create_token.role NOT IN ('viewer', 'operator', 'admin')
            THEN 'refused: invalid role'
        WHEN expires_days IS NOT NULL AND expires IS NULL THEN 'refused: invalid expiry'
        WHEN create_token.token_hash IS NULL OR create_token.token_hash !~ '^[0-9a-f]{64}$'
            THEN 'refused: invalid hash'
        WHEN actor IS NULL THEN 'refused: no actor'
    END;
    IF outcome IS NULL THEN
        INSERT INTO aggjobs.api_tokens AS t (name, role, token_hash, created_by, expires_at)
            VALUES (create_token.name, create_token.role, create_token.token_hash, actor,
                    expires)
            ON CONFLICT ON CONSTRAINT api_tokens_name_key DO NOTHING;
        outcome := CASE WHEN FOUND THEN 'created' ELSE 'refused: name exists' END;
    END IF;
    INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
        VALUES (COALESCE(actor, '?'), 'token.create',
                pg_catalog.left(create_token.name, 200),
                pg_catalog.jsonb_build_object(
                    'role', pg_catalog.left(create_token.role, 100),
                    'expires_at', expires,
                    'expires_days', CASE WHEN expires IS NULL THEN expires_days::text END,
                    'db_user', session_user),
                outcome, source);
    RETURN outcome;
END
$$;

-- Revoke the active token `name`; audited. Returns whether there was one.
CREATE FUNCTION aggjobs.revoke_token(name text, actor text, source text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done boolean;
BEGIN
    UPDATE aggjobs.api_tokens AS t SET revoked_at = pg_catalog.now()
        WHERE t.name = revoke_token.name AND t.revoked_at IS NULL;
    done := FOUND;
    INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
        VALUES (COALESCE(actor, '?'), 'token.revoke',
                pg_catalog.left(revoke_token.name, 200),
                pg_catalog.jsonb_build_object('db_user', session_user),
                CASE WHEN done THEN 'revoked' ELSE 'refused: no active token of that name' END,
                source);
    RETURN done;
END
$$;

-- A valid token was presented: its last use, at most once a minute (not audited: every
-- request would be a row).
CREATE FUNCTION aggjobs.token_used(token_id bigint)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE aggjobs.api_tokens AS t SET last_used_at = pg_catalog.now()
    WHERE t.id = token_id AND t.revoked_at IS NULL
      AND (t.last_used_at IS NULL OR t.last_used_at < pg_catalog.now() - interval '1 minute')
$$;

REVOKE EXECUTE ON FUNCTION aggjobs.create_token(text, text, text, text, double precision, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.revoke_token(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.token_used(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aggjobs.create_token(text, text, text, text, double precision, text)
    TO aggjobs_worker;
GRANT EXECUTE ON FUNCTION aggjobs.revoke_token(text, text, text) TO aggjobs_worker;
GRANT EXECUTE ON FUNCTION aggjobs.token_used(bigint) TO aggjobs_worker;
