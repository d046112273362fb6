-- 0014 (issue 15): each rollup's definition as its tables were built, the versions being
-- rebuilt beside them, and the tables of versions no longer in force (docs/rollups.md,
-- "Changing a rollup").
-- state: 'live' (its tables are analytics.<rollup>_<grain>), 'building' (rebuilt from the
-- raw rows in aggjobs_build.<rollup>_<grain>, its engine state under '<rollup>@v<version>'),
-- 'retired' (replaced by a later version), 'cancelled' (a rebuild given up: the definition
-- changed again first), 'removed' (no longer declared). `aggjobs migrate` writes it; the
-- worker reads it, and records why a rebuild failed its check (check_error).
CREATE TABLE aggjobs.rollup_definitions (
    rollup text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    state text NOT NULL CHECK (state IN ('live', 'building', 'retired', 'cancelled', 'removed')),
    fingerprint text NOT NULL,
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    rebuild_from timestamptz,  -- building: the first hour rebuilt (raw rows before it are gone)
    check_error text,          -- building: why its check before the swap failed, if it did
    PRIMARY KEY (rollup, version)
);
CREATE UNIQUE INDEX rollup_definitions_one_live ON aggjobs.rollup_definitions (rollup)
    WHERE state = 'live';
CREATE UNIQUE INDEX rollup_definitions_one_building ON aggjobs.rollup_definitions (rollup)
    WHERE state = 'building';
CREATE SCHEMA aggjobs_build;
CREATE SCHEMA aggjobs_retired;
CREATE TABLE aggjobs.retired_tables (
    table_name text PRIMARY KEY,
    rollup text NOT NULL,
    version integer NOT NULL,
    grain text NOT NULL,
    retired_at timestamptz NOT NULL DEFAULT now()
);
-- A table retires to aggjobs_retired as <table>__v<version> (its indexes renamed so that
-- they cannot clash there), listed in retired_tables until it is dropped.
CREATE FUNCTION aggjobs.grain_suffix(grain text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE grain WHEN 'hour' THEN 'hourly' WHEN 'day' THEN 'daily' WHEN 'week' THEN 'weekly' END
$$;
CREATE FUNCTION aggjobs.retire_table(t regclass, retired_name text, p_rollup text,
                                     p_version integer, p_grain text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i regclass;
BEGIN
    -- its indexes (and so its constraints) get names no other retired table can have
    FOR i IN SELECT x.indexrelid::regclass FROM pg_index AS x WHERE x.indrelid = t LOOP
        EXECUTE format('ALTER INDEX %s RENAME TO %I', i, 'retired_index_' || i::oid);
    END LOOP;
    EXECUTE format('ALTER TABLE %s RENAME TO %I', t, retired_name);
    EXECUTE format('ALTER TABLE %s SET SCHEMA aggjobs_retired', t);
    INSERT INTO aggjobs.retired_tables (table_name, rollup, version, grain)
    VALUES (retired_name, p_rollup, p_version, p_grain);
END
$$;
-- The swap of a rebuilt version (called by the worker, which owns no table): one
-- transaction, so that a reader sees the old tables or the new ones, never a mix.
CREATE FUNCTION aggjobs.swap_rollup_version(p_rollup text, p_version integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    live aggjobs.rollup_definitions;
    next aggjobs.rollup_definitions;
    key text := p_rollup || '@v' || p_version;
    g text;
    t text;
    tables oid[] := '{}';
    v record;
    stmt text;
    kind text;
BEGIN
    SELECT * INTO next FROM aggjobs.rollup_definitions AS d
    WHERE d.rollup = p_rollup AND d.version = p_version AND d.state = 'building' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rollup % has no version % being rebuilt', p_rollup, p_version;
    END IF;
    SELECT * INTO live FROM aggjobs.rollup_definitions AS d
    WHERE d.rollup = p_rollup AND d.state = 'live' FOR UPDATE;
    FOR g IN SELECT jsonb_array_elements_text(live.definition -> 'grains') LOOP
        t := format('analytics.%I', p_rollup || '_' || aggjobs.grain_suffix(g));
        IF to_regclass(t) IS NOT NULL THEN
            tables := tables || to_regclass(t)::oid;
        END IF;
    END LOOP;
    -- Views read tables by identity, not by name: every view over the live tables (and over
    -- those views) is saved, dropped, and made again over the new tables below, with its
    -- indexes, owner, comment and grants.
    CREATE TEMP TABLE swap_views ON COMMIT DROP AS
    WITH RECURSIVE deps(oid, depth) AS (
        SELECT r.ev_class, 1
        FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = ANY(tables) AND r.ev_class <> d.refobjid
        UNION ALL
        SELECT r.ev_class, deps.depth + 1
        FROM deps
        JOIN pg_depend AS d ON d.refobjid = deps.oid AND d.classid = 'pg_rewrite'::regclass
         AND d.refclassid = 'pg_class'::regclass
        JOIN pg_rewrite AS r ON r.oid = d.objid AND r.ev_class <> deps.oid
        WHERE deps.depth < 32
    )
    SELECT c.oid, max(deps.depth) AS depth, c.relkind, n.nspname, c.relname,
           pg_get_viewdef(c.oid) AS def, pg_get_userbyid(c.relowner) AS owner,
           obj_description(c.oid, 'pg_class') AS comment,
           ARRAY(SELECT pg_get_indexdef(x.indexrelid) FROM pg_index AS x
                 WHERE x.indrelid = c.oid) AS indexes,
           ARRAY(SELECT format('GRANT %s ON %I.%I TO %s', a.privilege_type, n.nspname, c.relname,
                               CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                    ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
                 FROM aclexplode(c.relacl) AS a WHERE a.grantee <> c.relowner) AS grants
    FROM deps JOIN pg_class AS c ON c.oid = deps.oid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    GROUP BY c.oid, c.relkind, n.nspname, c.relname, c.relowner;
    -- The live tables' other indexes (those views.sql makes for the views' reads), made
    -- again on the new tables below; the key and bucket indexes they have already.
    CREATE TEMP TABLE swap_indexes ON COMMIT DROP AS
    SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS def
    FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid
    WHERE x.indrelid = ANY(tables)
      AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = x.indexrelid);
    FOR v IN SELECT * FROM swap_views ORDER BY depth DESC LOOP
        EXECUTE format('DROP %s IF EXISTS %I.%I',
                       CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END,
                       v.nspname, v.relname);
    END LOOP;
    -- The live tables retire; the rebuilt ones take their names.
    FOR g IN SELECT jsonb_array_elements_text(live.definition -> 'grains') LOOP
        t := p_rollup || '_' || aggjobs.grain_suffix(g);
        IF to_regclass(format('analytics.%I', t)) IS NOT NULL THEN
            PERFORM aggjobs.retire_table(format('analytics.%I', t)::regclass,
                                         t || '__v' || live.version, p_rollup, live.version, g);
        END IF;
    END LOOP;
    FOR g IN SELECT jsonb_array_elements_text(next.definition -> 'grains') LOOP
        t := p_rollup || '_' || aggjobs.grain_suffix(g);
        EXECUTE format('ALTER TABLE aggjobs_build.%I SET SCHEMA analytics', t);
        EXECUTE format('GRANT SELECT ON analytics.%I TO aggjobs_reader', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON analytics.%I'
                       ' TO aggjobs_worker', t);
    END LOOP;
    FOR v IN SELECT * FROM swap_indexes LOOP
        IF to_regclass(format('analytics.%I', v.name)) IS NULL THEN
            BEGIN
                EXECUTE v.def;
            EXCEPTION WHEN undefined_column OR undefined_table THEN
                NULL;  -- over a column, or a grain's table, the new version no longer has
            END;
        END IF;
    END LOOP;
    -- The engine's state follows: the new version's becomes the rollup's.
    DELETE FROM aggjobs.watermarks AS w WHERE w.rollup = p_rollup;
    DELETE FROM aggjobs.pending_groups AS p WHERE p.rollup = p_rollup;
    DELETE FROM aggjobs.quarantine AS q WHERE q.rollup = p_rollup;
    UPDATE aggjobs.watermarks AS w SET rollup = p_rollup WHERE w.rollup = key;
    UPDATE aggjobs.pending_groups AS p SET rollup = p_rollup WHERE p.rollup = key;
    UPDATE aggjobs.quarantine AS q SET rollup = p_rollup WHERE q.rollup = key;
    UPDATE aggjobs.rollup_definitions AS d SET state = 'retired', retired_at = now()
    WHERE d.rollup = p_rollup AND d.state = 'live';
    UPDATE aggjobs.rollup_definitions AS d SET state = 'live', check_error = NULL
    WHERE d.rollup = p_rollup AND d.version = p_version;
    FOR v IN SELECT * FROM swap_views ORDER BY depth LOOP
        kind := CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END;
        EXECUTE format('CREATE %s %I.%I AS %s', kind, v.nspname, v.relname,
                       rtrim(v.def, E'; \n'));
        FOREACH stmt IN ARRAY v.indexes LOOP
            EXECUTE stmt;
        END LOOP;
        EXECUTE format('ALTER %s %I.%I OWNER TO %I', kind, v.nspname, v.relname, v.owner);
        IF v.comment IS NOT NULL THEN
            EXECUTE format('COMMENT ON %s %I.%I IS %L', kind, v.nspname, v.relname, v.comment);
        END IF;
        FOREACH stmt IN ARRAY v.grants LOOP
            EXECUTE stmt;
        END LOOP;
    END LOOP;
END
$$;
-- The retired tables kept longer than grace_s seconds, dropped (the cleanup job's).
CREATE FUNCTION aggjobs.drop_retired_tables(grace_s double precision)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text;
BEGIN
    FOR t IN DELETE FROM aggjobs.retired_tables
             WHERE retired_at <= now() - make_interval(secs => greatest(grace_s, 0))
             RETURNING table_name LOOP
        EXECUTE format('DROP TABLE IF EXISTS aggjobs_retired.%I', t);
        RETURN NEXT t;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION aggjobs.retire_table(regclass, text, text, integer, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.swap_rollup_version(text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.drop_retired_tables(double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aggjobs.swap_rollup_version(text, integer) TO aggjobs_worker;
GRANT EXECUTE ON FUNCTION aggjobs.drop_retired_tables(double precision) TO aggjobs_worker;
