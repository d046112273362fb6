-- The sum of float8 values where PostgreSQL's sum() raises "value out of range: overflow"
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
