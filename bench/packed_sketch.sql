-- A measured design, not product code: the p95 sketch packed into one numeric, so that a
-- day's (or week's) sketches merge by the built-in sum() instead of by unnesting every
-- (key, count) pair (docs/native.md, "Without them"). Run on a suite database whose day is
-- rolled up (bench/suite.py --only daily):
--
--   psql -X -h 127.0.0.1 -U postgres -d aggjobs_bench_24h -f bench/packed_sketch.sql
--
-- It works in a scratch schema and two scratch tables, and drops them at the end.
--
-- The packing: key k's count is the 12-digit field k + 512 of an integer, counted from its
-- least significant end, for keys -512 to 1023 (values from 1.015^-512, about 0.5 ms, to
-- 1.015^1023, about 47 days; other keys would need a side array, not built here). Counts
-- then add field by field as long as none reaches 10^12. A run of fields read as one number
-- is, modulo 10^12 - 1, the sum of its fields (10^12 = 1 modulo 10^12 - 1): the whole
-- number gives the count of values, a chunk of 40 fields its values in one operation.

\set ON_ERROR_STOP on
SET work_mem = '64MB';
SET jit = off;
DROP SCHEMA IF EXISTS packed_sketch CASCADE;
CREATE SCHEMA packed_sketch;

-- A sketch's arrays packed. The terms are added from the top key down: sum() rescales its
-- accumulator at every term that reaches below it, and ascending keys cost twice as much.
CREATE FUNCTION packed_sketch.pack(keys integer[], counts bigint[]) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sum((c::text || 'e' || (12 * (k + 512)))::numeric ORDER BY k DESC)
    FROM unnest(keys, counts) AS u(k, c)
    WHERE k BETWEEN -512 AND 1023
$$;

-- percentile_cont(q) off a packed sketch, as aggjobs.sketch_quantile reads the arrays:
-- whole chunks of 40 fields from the top down while both order statistics lie below them,
-- then field by field, skipping zero fields.
CREATE FUNCTION packed_sketch.quantile(p numeric, q double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m CONSTANT numeric := 999999999999;
    s text;
    b bytea;        -- the digits; bytea, whose offsets cost nothing (text's walk UTF-8)
    d integer;
    n bigint;
    r bigint;       -- the lower order statistic's rank, ascending from 0
    frac double precision;
    above bigint := 0;  -- values in the fields before position i
    c bigint;
    i integer := 1;
    top integer;    -- the key of the first field
    hi_key integer;
    z integer;
BEGIN
    IF p IS NULL OR p = 0 THEN
        RETURN NULL;
    END IF;
    n := p % m;
    s := p::text;
    d := octet_length(s);
    s := repeat('0', (12 - d % 12) % 12) || s;
    d := octet_length(s);
    b := convert_to(s, 'SQL_ASCII');
    top := d / 12 - 1 - 512;
    r := floor(q * (n - 1))::bigint;
    frac := q * (n - 1) - r;
    LOOP
        EXIT WHEN i + 480 > d + 1;
        c := (convert_from(substring(b FROM i FOR 480), 'SQL_ASCII')::numeric % m)::bigint;
        EXIT WHEN above + c > n - 2 - r;
        above := above + c;
        i := i + 480;
    END LOOP;
    LOOP
        z := octet_length(substring(b FROM i FOR 480))
             - octet_length(ltrim(substring(b FROM i FOR 480), '\x30'::bytea));
        i := i + (z / 12) * 12;
        c := convert_from(substring(b FROM i FOR 12), 'SQL_ASCII')::bigint;
        IF c > 0 THEN
            IF hi_key IS NULL AND above + c > n - 2 - r THEN
                hi_key := top - (i - 1) / 12;
            END IF;
            IF above + c > n - 1 - r THEN
                RETURN aggjobs.sketch_value(top - (i - 1) / 12) + CASE WHEN frac = 0 THEN 0
                    ELSE frac * (aggjobs.sketch_value(hi_key)
                                 - aggjobs.sketch_value(top - (i - 1) / 12)) END;
            END IF;
            above := above + c;
        END IF;
        i := i + 12;
    END LOOP;
END
$$;

SELECT max(day) AS day FROM analytics.execution_metrics_daily \gset
CREATE TEMP TABLE arrays AS
    SELECT * FROM analytics.execution_metrics_hourly
    WHERE hour >= :'day'::date AND hour < :'day'::date + 1;

\echo == packing the hourly sketches of the day (what the hourly steps would add, 24 hours)
\timing on
CREATE TEMP TABLE packed AS
    SELECT workspace_id, hour, total_executions, successful_executions, failed_executions,
           avg_runtime, p95_runtime, total_credits, avg_runtime__sum, avg_runtime__n,
           packed_sketch.pack(p95_runtime__keys, p95_runtime__counts) AS p95_runtime__packed,
           updated_at
    FROM arrays;
\timing off
VACUUM ANALYZE arrays;
VACUUM ANALYZE packed;
SELECT count(*) AS hourly_rows,
       (SELECT sum(cardinality(p95_runtime__keys)) FROM arrays) AS pairs,
       pg_size_pretty(pg_total_relation_size('arrays')) AS with_arrays,
       pg_size_pretty(pg_total_relation_size('packed')) AS packed
FROM arrays;

\timing on
\echo == the p95 of the day and its merged sketch: the portable merge, as the engine writes it
CREATE TEMP TABLE by_arrays AS
    SELECT workspace_id,
           aggjobs.sketch_quantile(array_agg(k ORDER BY k), array_agg(c ORDER BY k), 0.95) AS p95,
           array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts
    FROM (SELECT workspace_id, u.k, sum(u.c)::bigint AS c
          FROM arrays, unnest(p95_runtime__keys, p95_runtime__counts) AS u(k, c)
          GROUP BY 1, 2) AS pairs
    GROUP BY 1;
\echo == the same, packed: sum()
CREATE TEMP TABLE by_sum AS
    SELECT workspace_id, sum(p95_runtime__packed) AS p95_runtime__packed
    FROM packed GROUP BY 1;
\echo == the p95 read off the packed day sketches
CREATE TEMP TABLE by_sum_p95 AS
    SELECT workspace_id, packed_sketch.quantile(p95_runtime__packed, 0.95) AS p95 FROM by_sum;
\echo == the same with the C functions (aggjobs_native.sketch_merge), for scale
CREATE TEMP TABLE by_c AS
    SELECT workspace_id, aggjobs_native.sketch_quantile((s).keys, (s).counts, 0.95) AS p95
    FROM (SELECT workspace_id, aggjobs_native.sketch_merge(p95_runtime__keys,
                                                           p95_runtime__counts) AS s
          FROM arrays GROUP BY 1) AS merged;
\timing off

\echo == the same p95 every way, and the count of values the packed sketch holds
SELECT count(*) AS workspaces,
       count(*) FILTER (WHERE a.p95 IS DISTINCT FROM p.p95) AS packed_differs,
       count(*) FILTER (WHERE a.p95 IS DISTINCT FROM c.p95) AS c_differs,
       count(*) FILTER (WHERE a.p95 IS DISTINCT FROM d.p95_runtime) AS stored_differs,
       count(*) FILTER (WHERE s.p95_runtime__packed % 999999999999
                              IS DISTINCT FROM d.avg_runtime__n) AS count_differs
FROM by_arrays AS a
JOIN by_sum_p95 AS p USING (workspace_id)
JOIN by_sum AS s USING (workspace_id)
JOIN by_c AS c USING (workspace_id)
JOIN analytics.execution_metrics_daily AS d ON d.workspace_id = a.workspace_id AND d.day = :'day';

DROP SCHEMA packed_sketch CASCADE;
