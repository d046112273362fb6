-- aggjobs_native 1.3 to 1.4: sum(numeric) with its state in one allocation.
-- `aggjobs migrate` updates an install made at 1.0, 1.1, 1.2 or 1.3.
\echo Use "ALTER EXTENSION aggjobs_native UPDATE TO '1.4'" to load this file. \quit

CREATE FUNCTION @extschema@.numeric_sum_step(internal, numeric)
RETURNS internal
AS 'MODULE_PATHNAME', 'aggjobs_numeric_sum_step' LANGUAGE c IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION @extschema@.numeric_sum_final(internal)
RETURNS numeric
AS 'MODULE_PATHNAME', 'aggjobs_numeric_sum_final' LANGUAGE c IMMUTABLE PARALLEL SAFE;

-- sum(x) for numeric x: the same value and display scale, NULL over no values; the sum kept
-- as an integer of its scale's units while it has at most 36 digits (then, and at NaN or an
-- infinity, as numeric_add makes it). SSPACE: the state.
CREATE AGGREGATE @extschema@.numeric_sum(numeric) (
    SFUNC = @extschema@.numeric_sum_step,
    STYPE = internal,
    FINALFUNC = @extschema@.numeric_sum_final,
    SSPACE = 48
);
