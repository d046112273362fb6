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
