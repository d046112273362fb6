-- The C functions of aggjobs (docs/native.md). Each returns exactly what the portable SQL
-- of src/aggjobs/sql/rollup.py returns; tests/integration/test_native.py holds them to it.
\echo Use "CREATE EXTENSION aggjobs_native" to load this file. \quit

CREATE TYPE @extschema@.sketch AS (keys integer[], counts bigint[]);
CREATE TYPE @extschema@.digest AS (quantile double precision, keys integer[], counts bigint[]);

-- percentile_cont(q) of the values (NULLs must be filtered out first) and their log-bucket
-- sketch (aggjobs.sketch_key), from one in-memory sort.
CREATE FUNCTION @extschema@.digest(vals double precision[], q double precision)
RETURNS @extschema@.digest
AS 'MODULE_PATHNAME', 'aggjobs_digest' LANGUAGE c IMMUTABLE PARALLEL SAFE;

-- Sketches merged: counts summed per key, keys ascending; NULL when no key is seen.
CREATE FUNCTION @extschema@.sketch_merge_step(internal, integer[], bigint[]) RETURNS internal
AS 'MODULE_PATHNAME', 'aggjobs_sketch_merge_step' LANGUAGE c IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION @extschema@.sketch_merge_final(internal) RETURNS @extschema@.sketch
AS 'MODULE_PATHNAME', 'aggjobs_sketch_merge_final' LANGUAGE c IMMUTABLE PARALLEL SAFE;
CREATE AGGREGATE @extschema@.sketch_merge(integer[], bigint[]) (
    SFUNC = @extschema@.sketch_merge_step,
    STYPE = internal,
    FINALFUNC = @extschema@.sketch_merge_final
);

-- aggjobs.sketch_quantile, in C.
CREATE FUNCTION @extschema@.sketch_quantile(keys integer[], counts bigint[], q double precision)
RETURNS double precision
AS 'MODULE_PATHNAME', 'aggjobs_sketch_quantile' LANGUAGE c IMMUTABLE PARALLEL SAFE;
