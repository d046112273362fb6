-- aggjobs_native 1.2 to 1.3: an hour's exact quantile and sketch in one aggregate.
-- `aggjobs migrate` updates an install made at 1.0, 1.1 or 1.2.
\echo Use "ALTER EXTENSION aggjobs_native UPDATE TO '1.3'" to load this file. \quit

CREATE TYPE @extschema@.digest_result AS (quantile double precision, keys integer[],
                                          counts bigint[]);

CREATE FUNCTION @extschema@.digest_of_step(internal, double precision, double precision)
RETURNS internal
AS 'MODULE_PATHNAME', 'aggjobs_digest_of_step' LANGUAGE c IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION @extschema@.digest_of_final(internal, double precision, double precision)
RETURNS @extschema@.digest_result
AS 'MODULE_PATHNAME', 'aggjobs_digest_of_final' LANGUAGE c IMMUTABLE PARALLEL SAFE;

-- digest(collect(x) FILTER (WHERE x IS NOT NULL), q) as one aggregate: the values kept in one
-- array a group (NULLs skipped), sorted once by the final function, which returns NULL for
-- a group without values. q is the same on every row (the first row's is used). SSPACE as
-- collect's.
CREATE AGGREGATE @extschema@.digest_of(double precision, double precision) (
    SFUNC = @extschema@.digest_of_step,
    STYPE = internal,
    FINALFUNC = @extschema@.digest_of_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = READ_WRITE,
    SSPACE = 640
);
