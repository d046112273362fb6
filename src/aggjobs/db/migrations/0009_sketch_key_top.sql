-- Finite values above 1.015^32766 (about 1e211) got keys from 32767 up: the key reserved for
-- +Infinity and NaN, and beyond it, so keys no longer ordered values as the values do. They
-- now share the top finite bucket (its representative is 1.015^32766 for all of them).
CREATE OR REPLACE FUNCTION aggjobs.sketch_key(x double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN x <= 1e-9 THEN -32768
        WHEN x = 'Infinity'::float8 OR x = 'NaN'::float8 THEN 32767
        ELSE least(ceil(ln(x) / ln(1.015::float8)), 32766)::integer
    END
$$;
