-- 0020 (issue 18): what Citus needs of the tables it distributes by workspace_id.
--
-- The TRUNCATE marker of the invalidation log carries a workspace (0), since a
-- distribution column cannot be NULL; `truncated` says it is a marker. (Markers of the
-- trigger functions before this one, a NULL workspace, are still read as markers.)
ALTER TABLE aggjobs.invalidation_log ADD COLUMN truncated boolean NOT NULL DEFAULT false;

-- Each source's key column (the distribution column on Citus), for the raw-row deletes
-- below: filled from the catalog, like the source's relation.
ALTER TABLE aggjobs.sources ADD COLUMN key_column text;

-- Retention's raw-row deletes name their rows by (key, time), not by ctid: a ctid names a
-- row of one shard, and Citus refuses a distributed DELETE whose ctids come from a
-- subquery it plans apart. Every row of a (key, time) picked is before `before`, so
-- deleting them all is right (a batch may exceed `batch` by the rows sharing a time). A row
-- with a NULL key (outside the contract: the key is NOT NULL) is in no group and is kept: a
-- batch that picked it would never delete it, and retention would stall on it.
CREATE OR REPLACE FUNCTION aggjobs.delete_raw_before(source text, before timestamptz,
                                                     batch integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
    key_column text;
    leaf regclass;
    deleted bigint := 0;
    n bigint;
BEGIN
    IF before IS NULL OR batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'delete_raw_before needs a time and a positive batch size'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO target FROM aggjobs.source_relation(source);
    SELECT coalesce(s.key_column, 'workspace_id') INTO key_column
        FROM aggjobs.sources AS s WHERE s.source = delete_raw_before.source;
    INSERT INTO aggjobs.retention_transactions (txid) VALUES (pg_catalog.pg_current_xact_id())
        ON CONFLICT DO NOTHING;
    -- the table itself, or each leaf of a partitioned one
    FOR leaf IN
        SELECT target.relation::regclass
            WHERE (SELECT c.relkind FROM pg_catalog.pg_class AS c
                   WHERE c.oid = target.relation::regclass) <> 'p'
        UNION ALL
        (SELECT t.relid FROM pg_catalog.pg_partition_tree(target.relation::regclass) AS t
            JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
            WHERE t.isleaf AND c.relkind = 'r'
            ORDER BY t.level, c.relname)
    LOOP
        EXECUTE pg_catalog.format(
            'DELETE FROM %1$s WHERE (%2$I, %3$I) IN'
            ' (SELECT %2$I, %3$I FROM %1$s WHERE %3$I < $1 AND %2$I IS NOT NULL LIMIT $2)',
            leaf, key_column, target.time_column)
            USING before, batch - deleted;
        GET DIAGNOSTICS n = ROW_COUNT;
        deleted := deleted + n;
        EXIT WHEN deleted >= batch;
    END LOOP;
    DELETE FROM aggjobs.retention_transactions AS r
        WHERE r.txid = pg_catalog.pg_current_xact_id();
    RETURN deleted;
END
$$;
