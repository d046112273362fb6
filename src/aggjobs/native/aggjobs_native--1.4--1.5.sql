-- aggjobs_native 1.4 to 1.5: the hour's digest with the sum and count of its values, for an
-- average over the same column. `aggjobs migrate` updates an install made at 1.0 to 1.4.
\echo Use "ALTER EXTENSION aggjobs_native UPDATE TO '1.5'" to load this file. \quit

CREATE TYPE @extschema@.digest_mean_result AS (quantile double precision, keys integer[],
                                               counts bigint[], sum double precision,
                                               n bigint);

CREATE FUNCTION @extschema@.digest_mean_of_final(internal, double precision, double precision)
RETURNS @extschema@.digest_mean_result
AS 'MODULE_PATHNAME', 'aggjobs_digest_mean_of_final' LANGUAGE c IMMUTABLE PARALLEL SAFE;

-- digest_of's fields, then the values' sum as aggjobs.float_sum gives it (small and big
-- values summed apart, in the rows' order) and their count: an average's (sum, n) without
-- two filtered sums and a count over every row. NULL for a group without values. The
-- state is digest_of's.
CREATE AGGREGATE @extschema@.digest_mean_of(double precision, double precision) (
    SFUNC = @extschema@.digest_of_step,
    STYPE = internal,
    FINALFUNC = @extschema@.digest_mean_of_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = READ_WRITE,
    SSPACE = 640
);
