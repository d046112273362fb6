-- 0008: time-partitioned sources (docs/rollups.md, "Partitioned sources"; docs/security.md).
-- The platform may own the sources as tables partitioned by range of their time column.
-- Retention then drops whole old partitions through a third narrow SECURITY DEFINER path,
-- and deletes the rest row by row partition by partition (a ctid names a row only within
-- one partition: deleting `ctid = ANY(...)` through the parent would hit rows of other
-- partitions that share those ctids).

-- Retention's only way to delete raw rows: at most `batch` rows of a known source whose time
-- is before `before`. aggjobs.retention is on only while it runs, so the tracking triggers do
-- not log these deletes. A partitioned source is deleted from leaf by leaf.
CREATE OR REPLACE FUNCTION aggjobs.delete_raw_before(source text, before timestamptz, batch integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET aggjobs.retention = 'on' AS $$
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
    IF (SELECT c.relkind FROM pg_catalog.pg_class AS c
            WHERE c.oid = target.relation::regclass) <> 'p' THEN
        EXECUTE pg_catalog.format(
            'DELETE FROM %s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %s WHERE %I < $1 LIMIT $2))',
            target.relation, target.relation, target.time_column)
            USING before, batch;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        RETURN deleted;
    END IF;
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
    RETURN deleted;
END
$$;

-- Retention's only way to drop partitions: the oldest direct partition of a known source,
-- partitioned by range of its time column alone, whose whole range ends at or before
-- `before` (a finite upper bound; never the default partition), is detached and dropped, in
-- the caller's transaction. Returns it with the rows it held (counted just before), or no
-- row when there is none (or the source is not partitioned that way). `lock_timeout_ms`
-- bounds the wait for the platform's sessions on the source: when it runs out the partition
-- is returned with dropped = false and nothing changes.
CREATE FUNCTION aggjobs.drop_partition_before(
    source text, before timestamptz, lock_timeout_ms integer DEFAULT NULL)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz,
               row_count bigint, dropped boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' AS $$
DECLARE
    target record;
    parent regclass;
    child regclass;
BEGIN
    IF before IS NULL THEN
        RAISE EXCEPTION 'drop_partition_before needs a time'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO target FROM aggjobs.source_relation(source);
    parent := target.relation::regclass;
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_partitioned_table AS pt
            JOIN pg_catalog.pg_attribute AS a
                ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
            WHERE pt.partrelid = parent AND pt.partstrat = 'r' AND pt.partnatts = 1
                AND a.attname = target.time_column) THEN
        RETURN;
    END IF;
    -- Bounds as pg_get_expr prints them under this function's DateStyle and TimeZone:
    -- FOR VALUES FROM ('2026-03-02 00:00:00+00') TO ('2026-03-03 00:00:00+00'), MINVALUE,
    -- MAXVALUE; the default partition is `DEFAULT` and never matches.
    SELECT b.oid, b.lo, b.hi INTO child, range_start, range_end
        FROM (
            SELECT c.oid,
                CASE m[1] WHEN 'MINVALUE' THEN '-infinity'::timestamptz
                    ELSE pg_catalog.btrim(m[1], '''')::timestamptz END AS lo,
                CASE m[2] WHEN 'MAXVALUE' THEN 'infinity'::timestamptz
                    ELSE pg_catalog.btrim(m[2], '''')::timestamptz END AS hi
            FROM pg_catalog.pg_inherits AS i
                JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
                CROSS JOIN LATERAL pg_catalog.regexp_match(
                    pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                    '^FOR VALUES FROM \((.+)\) TO \((.+)\)$') AS m
            WHERE i.inhparent = parent AND NOT i.inhdetachpending AND c.relispartition
                AND c.relkind IN ('r', 'p')
        ) AS b
        WHERE b.hi <= before AND b.hi < 'infinity'::timestamptz
        ORDER BY b.hi, b.lo
        LIMIT 1;
    IF child IS NULL THEN
        RETURN;
    END IF;
    partition_name := child::text;
    EXECUTE pg_catalog.format('SELECT count(*) FROM %s', child) INTO row_count;
    IF lock_timeout_ms IS NOT NULL THEN
        PERFORM pg_catalog.set_config('lock_timeout', lock_timeout_ms || 'ms', true);
    END IF;
    BEGIN
        EXECUTE pg_catalog.format('ALTER TABLE %s DETACH PARTITION %s', parent, child);
        EXECUTE pg_catalog.format('DROP TABLE %s', child);
        dropped := true;
    EXCEPTION WHEN lock_not_available THEN
        dropped := false;
    END;
    RETURN NEXT;
END
$$;

REVOKE EXECUTE ON FUNCTION aggjobs.drop_partition_before(text, timestamptz, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aggjobs.drop_partition_before(text, timestamptz, integer)
    TO aggjobs_worker;
