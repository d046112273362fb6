-- 0015 (issue 16): the live views analytics.<rollup>_<grain>_live (sql/live.py), which
-- `aggjobs migrate` makes beside each rollup table. A version being rebuilt carries the SQL
-- of its live views (live_views: [{name, sql, comment}] in grain order), written by migrate;
-- the swap makes them from it, since the worker that swaps may create nothing itself.
ALTER TABLE aggjobs.rollup_definitions ADD COLUMN live_views jsonb;

CREATE OR REPLACE FUNCTION aggjobs.swap_rollup_version(p_rollup text, p_version integer)
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
    old_live text[] := '{}';
    lv jsonb;
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
        old_live := old_live || (p_rollup || '_' || aggjobs.grain_suffix(g) || '_live');
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
    -- The rollup's live views (0015, sql/live.py) are made from the new version's SQL, which
    -- migrate wrote in its row (the worker cannot write it); one of a grain it no longer
    -- has is not made again. Other views are made again as they were.
    FOR v IN SELECT * FROM swap_views ORDER BY depth LOOP
        kind := CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END;
        IF v.nspname = 'analytics' AND v.relname = ANY(old_live) THEN
            SELECT e INTO lv FROM jsonb_array_elements(next.live_views) AS e
            WHERE e ->> 'name' = v.relname;
            CONTINUE WHEN lv IS NULL;
            v.def := lv ->> 'sql';
            v.comment := lv ->> 'comment';
        END IF;
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
    -- The live views of the new version's other grains (or all, if there were none).
    FOR lv IN SELECT e FROM jsonb_array_elements(coalesce(next.live_views, '[]')) AS e LOOP
        IF to_regclass(format('analytics.%I', lv ->> 'name')) IS NULL THEN
            EXECUTE format('CREATE VIEW analytics.%I AS %s', lv ->> 'name', lv ->> 'sql');
            EXECUTE format('COMMENT ON VIEW analytics.%I IS %L', lv ->> 'name',
                           lv ->> 'comment');
            EXECUTE format('GRANT SELECT ON analytics.%I TO aggjobs_reader', lv ->> 'name');
        END IF;
    END LOOP;
END
$$;
