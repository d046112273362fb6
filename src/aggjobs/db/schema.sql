-- The canonical schema: what all numbered migrations add up to. A test applies this file and
-- the migrations to two databases and compares them; change both together.

CREATE SCHEMA IF NOT EXISTS analytics;

CREATE TABLE IF NOT EXISTS public.agent_runs (
    id bigint PRIMARY KEY,
    workspace_id bigint NOT NULL,
    user_id bigint,
    agent_id bigint,
    status text NOT NULL,
    started_at timestamptz NOT NULL,
    completed_at timestamptz,
    runtime_seconds double precision,
    credits_consumed numeric(14,4)
);
CREATE TABLE IF NOT EXISTS public.user_events (
    id bigint PRIMARY KEY,
    workspace_id bigint NOT NULL,
    user_id bigint NOT NULL,
    event_type text NOT NULL,
    occurred_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS public.credit_transactions (
    id bigint PRIMARY KEY,
    workspace_id bigint NOT NULL,
    user_id bigint,
    kind text NOT NULL,
    amount numeric(14,4) NOT NULL,
    created_at timestamptz NOT NULL
);

-- The engine scans whole hours by time and single workspace-hours by (workspace, time).
CREATE INDEX IF NOT EXISTS agent_runs_started_at_idx ON public.agent_runs (started_at);
CREATE INDEX IF NOT EXISTS agent_runs_workspace_started_at_idx
    ON public.agent_runs (workspace_id, started_at);
CREATE INDEX IF NOT EXISTS user_events_occurred_at_idx ON public.user_events (occurred_at);
CREATE INDEX IF NOT EXISTS user_events_workspace_occurred_at_idx
    ON public.user_events (workspace_id, occurred_at);
CREATE INDEX IF NOT EXISTS credit_transactions_created_at_idx
    ON public.credit_transactions (created_at);
CREATE INDEX IF NOT EXISTS credit_transactions_workspace_created_at_idx
    ON public.credit_transactions (workspace_id, created_at);

-- Per source: rows whose time is before `threshold` are change-tracked (NULL: none). The
-- triggers carry the same instant as a constant in their WHEN clause, so writes ahead of it
-- cost nothing.
CREATE TABLE aggjobs.sources (
    source text PRIMARY KEY,
    threshold timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Where the source lives (0005): filled from the catalog; trusted by the SECURITY
    -- DEFINER functions, so written by the owner only.
    relation_schema text,
    relation_name text,
    time_column text,
    key_column text  -- 0020: the source's key (Citus' distribution column)
);

-- Per rollup and grain: every bucket before `watermark` is materialized (NULL: none yet).
-- `reset_requested` (hour grain): the source was truncated; the next refresh starts over.
CREATE TABLE aggjobs.watermarks (
    rollup text NOT NULL,
    grain text NOT NULL CHECK (grain IN ('hour', 'day', 'week')),
    watermark timestamptz,
    reset_requested boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Retention: buckets before `horizon` can no longer be recomputed (their inputs were
    -- deleted), so changes logged there are dropped instead of rebuilding a partial bucket.
    horizon timestamptz,
    PRIMARY KEY (rollup, grain)
);

-- Written by the platform's writes through the tracking triggers: append-only, no index and
-- no unique key, so that concurrent writers never wait on each other here.
-- workspace_id NULL with bucket NULL records a TRUNCATE of the source.
CREATE TABLE aggjobs.invalidation_log (
    source text NOT NULL,
    workspace_id bigint,
    bucket timestamptz,
    logged_at timestamptz NOT NULL DEFAULT now(),
    -- 0020: a TRUNCATE's marker (its workspace_id is 0: Citus' distribution column cannot
    -- be NULL; a NULL workspace, the markers before 0020, is one too)
    truncated boolean NOT NULL DEFAULT false
);

-- Groups to recompute, per rollup and grain; filled from invalidation_log and by finer
-- grains' recomputes, consumed in the same transaction as the recompute.
CREATE TABLE aggjobs.pending_groups (
    rollup text NOT NULL,
    grain text NOT NULL CHECK (grain IN ('hour', 'day', 'week')),
    bucket timestamptz NOT NULL,
    workspace_id bigint NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollup, grain, bucket, workspace_id)
);
-- 0010: queue tables, vacuumed once 1,000 rows are dead whatever their size.
ALTER TABLE aggjobs.invalidation_log SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000);
ALTER TABLE aggjobs.pending_groups SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000);

-- Backfills: resumable progress (the grain being recomputed and how far), one row per rollup
-- and requested range.
CREATE TABLE aggjobs.backfills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollup text NOT NULL,
    range_start timestamptz NOT NULL,
    range_end timestamptz NOT NULL,
    grain text NOT NULL CHECK (grain IN ('hour', 'day', 'week')),
    done_until timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK (range_start < range_end)
);
CREATE UNIQUE INDEX backfills_one_open_per_range
    ON aggjobs.backfills (rollup, range_start, range_end) WHERE status <> 'succeeded';

-- Log-bucket sketch: bucket i holds (gamma^(i-1), gamma^i] with gamma = 1.015; its
-- representative 2*gamma^i/(gamma+1) is within (gamma-1)/(gamma+1) = 0.745% of every value in
-- it. Values <= 1e-9 share bucket -32768 (represented by 0); +Infinity and NaN bucket 32767;
-- finite values above 1.015^32766 (about 1e211) share bucket 32766 (0009). Not STRICT, so that the planner inlines them into the aggregate queries (NULL gives NULL).
CREATE FUNCTION aggjobs.sketch_key(x double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN x <= 1e-9 THEN -32768
        WHEN x = 'Infinity'::float8 OR x = 'NaN'::float8 THEN 32767
        ELSE least(ceil(ln(x) / ln(1.015::float8)), 32766)::integer
    END
$$;

CREATE FUNCTION aggjobs.sketch_value(k integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN k = -32768 THEN 0::float8
        WHEN k = 32767 THEN 'Infinity'::float8
        ELSE 2 * power(1.015::float8, k) / 2.015::float8
    END
$$;

-- percentile_cont(q) read off a sketch whose keys are ascending: interpolates between the
-- representatives of the two order statistics percentile_cont interpolates between, so its
-- relative error is bounded by the buckets' (a convex combination keeps the bound).
CREATE FUNCTION aggjobs.sketch_quantile(keys integer[], counts bigint[], q double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    n bigint := 0;
    pos double precision;
    lo_rank bigint;
    frac double precision;
    seen bigint := 0;
    lo_value double precision;
    i integer;
BEGIN
    IF keys IS NULL OR cardinality(keys) = 0 THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. cardinality(counts) LOOP
        n := n + counts[i];
    END LOOP;
    pos := q * (n - 1);
    lo_rank := floor(pos)::bigint;
    frac := pos - lo_rank;
    FOR i IN 1 .. cardinality(keys) LOOP
        seen := seen + counts[i];
        IF lo_value IS NULL AND seen > lo_rank THEN
            lo_value := aggjobs.sketch_value(keys[i]);
            IF frac = 0 THEN
                RETURN lo_value;
            END IF;
        END IF;
        IF lo_value IS NOT NULL AND seen > lo_rank + 1 THEN
            RETURN lo_value + frac * (aggjobs.sketch_value(keys[i]) - lo_value);
        END IF;
    END LOOP;
    RETURN lo_value;
END
$$;

-- One row per run of a job, written as it goes: 'running' first, then its end state.
-- `steps` holds each step's outcome: name, status, rows, seconds, attempts, error.
-- `slot` is the scheduled instant a beat-triggered run belongs to: one run per slot, so a
-- second beat's duplicate is recorded as skipped.
-- `backend_pid` is the run's PostgreSQL session: a 'running' row whose session is gone
-- belongs to a dead process and is marked 'abandoned'.
CREATE TABLE aggjobs.job_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job text NOT NULL,
    trigger text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'retry', 'backfill')),
    who text NOT NULL,
    as_of timestamptz NOT NULL,
    slot timestamptz,
    status text NOT NULL
        CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'abandoned')),
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    steps jsonb NOT NULL DEFAULT '[]',
    error text,
    attempt integer NOT NULL DEFAULT 1,
    host text NOT NULL,
    pid integer NOT NULL,
    backend_pid integer,
    task_id text,
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX job_runs_job_started_idx ON aggjobs.job_runs (job, started_at DESC);
CREATE INDEX job_runs_running_idx ON aggjobs.job_runs (job) WHERE status = 'running';
CREATE UNIQUE INDEX job_runs_one_run_per_slot ON aggjobs.job_runs (job, slot)
    WHERE slot IS NOT NULL AND status IN ('running', 'succeeded', 'failed');

-- Who did what, when, with which parameters, and how it ended: manual runs, backfills,
-- repairs, cleanup deletions, token changes, denied requests.
CREATE TABLE aggjobs.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    action text NOT NULL,
    target text,
    params jsonb NOT NULL DEFAULT '{}',
    outcome text NOT NULL,
    source text  -- the client address (0005); NULL when not over HTTP
);
CREATE INDEX audit_log_at_idx ON aggjobs.audit_log (at);

-- Filled by the daily job (health scores and reports).
CREATE TABLE analytics.workspace_health_daily (
    workspace_id bigint NOT NULL,
    day date NOT NULL,
    score numeric(5, 2) CHECK (score BETWEEN 0 AND 100),
    status text NOT NULL
        CHECK (status IN ('healthy', 'at_risk', 'critical', 'insufficient_data')),
    components jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, day),
    CHECK ((status = 'insufficient_data') = (score IS NULL))
);

CREATE TABLE analytics.daily_reports (
    day date NOT NULL,
    workspace_id bigint,
    report jsonb NOT NULL,
    generated_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (day, workspace_id)
);

-- Buckets whose recompute failed with a permanent error (bad data, a constraint): counted
-- per run; after AGGJOBS_QUARANTINE_AFTER failures the bucket is quarantined, i.e. skipped
-- so that it cannot block the rest. A later successful recompute (backfill) clears it.
CREATE TABLE aggjobs.quarantine (
    rollup text NOT NULL,
    grain text NOT NULL CHECK (grain IN ('hour', 'day', 'week')),
    bucket timestamptz NOT NULL,
    failures integer NOT NULL,
    last_error text NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at timestamptz NOT NULL DEFAULT now(),
    quarantined_at timestamptz,
    PRIMARY KEY (rollup, grain, bucket)
);

-- API tokens for `aggjobs serve`: only the SHA-256 of each secret is stored; roles are
-- ordered viewer < operator < admin; valid while neither revoked nor expired.
CREATE TABLE aggjobs.api_tokens (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (name <> ''),  -- unique among live tokens (0017)
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz
);

-- Alert incidents (0004): opened when a problem is first seen, resolved when it clears.
CREATE TABLE aggjobs.alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL,
    message text NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE UNIQUE INDEX alerts_one_open_per_key ON aggjobs.alerts (key) WHERE resolved_at IS NULL;

-- Liveness (0016): each worker's and scheduler's latest heartbeat (database clock) and its
-- clean shutdown; one row per process name (docs/jobs.md, "Liveness").
CREATE TABLE aggjobs.heartbeats (
    kind text NOT NULL CHECK (kind IN ('worker', 'scheduler')),
    name text NOT NULL CHECK (name <> ''),
    host text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL DEFAULT '{}',
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    PRIMARY KEY (kind, name)
);

-- Database roles, SECURITY DEFINER paths, append-only audit log (0005; docs/security.md).
-- The grants are made by sync_catalog (aggjobs.db.migrate.sync_grants).
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
-- is before `before` (a few more if rows share a time), in a transaction marked in
-- aggjobs.retention_transactions for the duration of the call only, so the tracking triggers
-- do not log these deletes. A partitioned source is deleted from leaf by leaf (0008). Rows
-- are named by (key, time), not by ctid, which Citus refuses in a distributed DELETE (0020).
CREATE FUNCTION aggjobs.delete_raw_before(source text, before timestamptz,
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

REVOKE EXECUTE ON FUNCTION aggjobs.source_relation(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.delete_raw_before(text, timestamptz, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aggjobs.move_tracking_threshold(text, timestamptz, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aggjobs.delete_raw_before(text, timestamptz, integer)
    TO aggjobs_worker;
GRANT EXECUTE ON FUNCTION aggjobs.move_tracking_threshold(text, timestamptz, integer)
    TO aggjobs_worker;

-- Partitioned sources (0008; docs/rollups.md).
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

-- The hours a live view computes from the raw rows, [lo, hi) an hour apart (sql/live.py,
-- `ahead`; migration 0019): generate_series, planned as the 2 rows it is, not as 1,000.
CREATE FUNCTION aggjobs.live_hours(lo timestamptz, hi timestamptz)
RETURNS SETOF timestamptz
LANGUAGE sql STABLE PARALLEL SAFE ROWS 2 SET search_path = pg_catalog AS $$
    SELECT generate_series(lo, hi - interval '1 hour', interval '1 hour')
$$;

-- percentile_cont(q) of an ascending float8 array (the hour's values, sorted once by
-- array_agg(x ORDER BY x) in the same pass that builds the p95 sketch from them). The
-- arithmetic is percentile_cont's own (PostgreSQL's percentile_cont_final_common and
-- float8_lerp), so the result is bit for bit the same. Where SQL's float checks would refuse
-- a step that C's arithmetic takes silently (hi - lo overflowing past 1e307, a product of
-- two tiny nonzero factors underflowing) it asks percentile_cont itself.
CREATE FUNCTION aggjobs.sorted_quantile(v double precision[], q double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN cardinality(v) IS NULL OR cardinality(v) = 0 THEN NULL
        WHEN floor(q * (cardinality(v) - 1)::float8) = ceil(q * (cardinality(v) - 1)::float8)
            THEN v[1 + floor(q * (cardinality(v) - 1)::float8)::integer]
        WHEN abs(v[1 + floor(q * (cardinality(v) - 1)::float8)::integer]) > 1e307
          OR abs(v[1 + ceil(q * (cardinality(v) - 1)::float8)::integer]) > 1e307
          OR q * (cardinality(v) - 1)::float8 - floor(q * (cardinality(v) - 1)::float8) < 1e-150
          OR v[1 + ceil(q * (cardinality(v) - 1)::float8)::integer]
             - v[1 + floor(q * (cardinality(v) - 1)::float8)::integer] > 0
             AND v[1 + ceil(q * (cardinality(v) - 1)::float8)::integer]
             - v[1 + floor(q * (cardinality(v) - 1)::float8)::integer] < 1e-150
            THEN (SELECT percentile_cont(q) WITHIN GROUP (ORDER BY x) FROM unnest(v) AS x)
        ELSE v[1 + floor(q * (cardinality(v) - 1)::float8)::integer]
            + (q * (cardinality(v) - 1)::float8 - floor(q * (cardinality(v) - 1)::float8))
            * (v[1 + ceil(q * (cardinality(v) - 1)::float8)::integer]
               - v[1 + floor(q * (cardinality(v) - 1)::float8)::integer])
    END
$$;

-- 0012: the sum of float8 values where PostgreSQL's sum() raises "value out of range: overflow"
-- (three runtimes of 1e308 in one group made every recompute of it fail): +-Infinity past
-- the float range, as IEEE arithmetic gives (docs/rollups.md, "Overflow, Infinity and NaN").
-- The generated SQL (sql/rollup.py, float_sum) passes two aggregates:
--   small = sum(x) over |x| < 2^960: fewer than 2^64 of them cannot overflow;
--   big   = sum(x * 2^-64) over the rest (larger values, +-Infinity, NaN): exact, no overflow.
-- Without big values the result is `small`: ordinary data sums bit for bit as sum(x) does.
-- A small sum too tiny to scale (an underflow, an error in SQL) is negligible against big.
CREATE FUNCTION aggjobs.float_sum(small double precision, big double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN big IS NULL THEN small
        WHEN big = 0 THEN coalesce(small, 0)
        WHEN NOT abs(big) < 'Infinity'::float8 THEN big
        WHEN abs(big + CASE WHEN abs(small) >= 2::float8 ^ -900 THEN small * 2::float8 ^ -64
                            ELSE 0 END) <= '1.7976931348623157e308'::float8 * 2::float8 ^ -64
            THEN (big + CASE WHEN abs(small) >= 2::float8 ^ -900 THEN small * 2::float8 ^ -64
                             ELSE 0 END) * 2::float8 ^ 64
        WHEN big + CASE WHEN abs(small) >= 2::float8 ^ -900 THEN small * 2::float8 ^ -64
                        ELSE 0 END > 0 THEN 'Infinity'::float8
        ELSE '-Infinity'::float8
    END
$$;

-- 0021: the sum of bigint counts, as a bigint, with its state in the group (sql/rollup.py,
-- merged_count): sum(bigint)'s int128 state is an allocation apart, a cache miss a row.
CREATE AGGREGATE aggjobs.int8_sum(bigint) (
    SFUNC = int8pl,
    STYPE = bigint,
    COMBINEFUNC = int8pl,
    PARALLEL = SAFE
);

-- 0007: the materialized views' caches (kept by the step view.caches).
CREATE TABLE analytics.platform_daily_stats (
    day date PRIMARY KEY,
    p95_runtime double precision,
    runs_updated_at timestamptz,
    runs_rows bigint,
    active_users bigint,
    users_updated_at timestamptz,
    users_rows bigint,
    computed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE analytics.workspace_window_stats (
    workspace_id bigint PRIMARY KEY,
    p95_runtime_7d double precision,
    runs_window_end date,
    runs_updated_at timestamptz,
    runs_rows bigint,
    active_users_7d bigint,
    users_window_end date,
    users_updated_at timestamptz,
    users_rows bigint,
    computed_at timestamptz NOT NULL DEFAULT now()
);

-- ==== 0011: least privilege in fact (issue 21) ================================== begin ====
-- Migration 0011 also replaces move_tracking_threshold and delete_raw_before (bounded
-- thresholds; the retention marker instead of the aggjobs.retention setting): their final
-- definitions are above, with the 0005 functions.
-- - Tracking thresholds are bounded: move_tracking_threshold accepts only [1970-01-01,
--   now() + 10 minutes]; `aggjobs migrate` repairs one outside (aggjobs.db.migrate).
-- - The tracking triggers skip a DELETE only inside aggjobs.delete_raw_before: it writes its
--   transaction's id to aggjobs.retention_transactions (owner-only), which the trigger
--   function checks; the settable GUC aggjobs.retention no longer means anything.
-- - api_tokens is read-only for the worker: tokens change only through the audited
--   SECURITY DEFINER functions create_token, revoke_token and token_used (the grants are
--   sync_grants').

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
-- ==== 0011 ========================================================================= end ====

-- 0013 (issue 21) ------------------------------------------------------------------------
-- backend_pid: the session running a backfill (a duplicate is refused while it lives; a
-- 'running' row whose session is gone was abandoned). A backfill's audit rows pair up: a
-- 'started' row, then at most one outcome row naming it in params.started_id.
ALTER TABLE aggjobs.backfills ADD COLUMN backend_pid integer;
CREATE UNIQUE INDEX audit_log_one_backfill_outcome
    ON aggjobs.audit_log ((params ->> 'started_id'))
    WHERE action = 'backfill' AND params ? 'started_id';
CREATE INDEX audit_log_backfill_starts ON aggjobs.audit_log (id)
    WHERE action = 'backfill' AND outcome = 'started';
-- end of 0013 ---------------------------------------------------------------------------

-- 0014 (issue 15) ------------------------------------------------------------------------
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
    live_views jsonb,          -- building: its live views' SQL, made by the swap (0015)
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
-- end of 0014 ---------------------------------------------------------------------------

-- 0017 (issue 17): a token's name is unique among the tokens not revoked only, so that a
-- revoked name can be given to a new token; and aggjobs.rotate_token, which replaces a token
-- by a new secret of the same name and role in one transaction, audited.
CREATE UNIQUE INDEX api_tokens_live_name ON aggjobs.api_tokens (name)
    WHERE revoked_at IS NULL;

CREATE OR REPLACE FUNCTION aggjobs.create_token(
    name text, role text, token_hash text, actor text, expires_days double precision,
    source text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
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
            ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING;
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

-- Replace the token `name` (not revoked; expired is fine) by a new secret's hash: the old
-- one revoked and the new one, of the same name and role and of the old one's lifetime from
-- now, created in one transaction; audited as token.rotate. Returns 'rotated' or the refusal.
CREATE FUNCTION aggjobs.rotate_token(name text, token_hash text, actor text, source text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old aggjobs.api_tokens;
    expires timestamptz;
    outcome text := 'rotated';
BEGIN
    SELECT * INTO old FROM aggjobs.api_tokens AS t
        WHERE t.name = rotate_token.name AND t.revoked_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'refused: no active token of that name';
    ELSIF rotate_token.token_hash IS NULL
            OR rotate_token.token_hash !~ '^[0-9a-f]{64}$' THEN
        outcome := 'refused: invalid hash';
    ELSIF actor IS NULL THEN
        outcome := 'refused: no actor';
    ELSE
        expires := pg_catalog.now() + (old.expires_at - old.created_at);
        UPDATE aggjobs.api_tokens AS t SET revoked_at = pg_catalog.now() WHERE t.id = old.id;
        INSERT INTO aggjobs.api_tokens (name, role, token_hash, created_by, expires_at)
            VALUES (old.name, old.role, rotate_token.token_hash, actor, expires);
    END IF;
    INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
        VALUES (COALESCE(actor, '?'), 'token.rotate',
                pg_catalog.left(rotate_token.name, 200),
                pg_catalog.jsonb_build_object('role', old.role, 'expires_at', expires,
                                              'db_user', session_user),
                outcome, source);
    RETURN outcome;
END
$$;
REVOKE EXECUTE ON FUNCTION aggjobs.rotate_token(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aggjobs.rotate_token(text, text, text, text) TO aggjobs_worker;
-- end of 0017 ---------------------------------------------------------------------------

-- 0018 (issue 17): backfills started from the API or the dashboard are queued for a worker
-- (a Celery task) rather than run inside the HTTP request, and any backfill can be cancelled.
-- status 'queued': created by the request, claimed by the worker's task ('running');
-- 'cancelled': stopped on request, between two chunks (what it recomputed stays; a later
-- backfill of the same range resumes it, as it resumes a failed one).
-- cancel_requested: set by a cancel; the backfill checks it before each chunk.
-- requested_by / cancelled_by: who asked (`api:<token>`, `cli:<user>@<host>`).
-- task_id: the Celery task that runs a queued backfill.
ALTER TABLE aggjobs.backfills DROP CONSTRAINT backfills_status_check;
ALTER TABLE aggjobs.backfills ADD CONSTRAINT backfills_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE aggjobs.backfills ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
ALTER TABLE aggjobs.backfills ADD COLUMN requested_by text;
ALTER TABLE aggjobs.backfills ADD COLUMN cancelled_by text;
ALTER TABLE aggjobs.backfills ADD COLUMN task_id text;
-- end of 0018 ---------------------------------------------------------------------------
