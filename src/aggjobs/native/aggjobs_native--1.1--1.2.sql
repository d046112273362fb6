-- aggjobs_native 1.1 to 1.2: the sets of distinct user ids (user_activity's `__set`
-- columns) in C. `aggjobs migrate` updates an install made at 1.0 or 1.1.
\echo Use "ALTER EXTENSION aggjobs_native UPDATE TO '1.2'" to load this file. \quit

CREATE FUNCTION @extschema@.set_union_step(internal, bigint[]) RETURNS internal
AS 'MODULE_PATHNAME', 'aggjobs_set_union_step' LANGUAGE c IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION @extschema@.set_of_step(internal, bigint) RETURNS internal
AS 'MODULE_PATHNAME', 'aggjobs_set_of_step' LANGUAGE c IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION @extschema@.set_final(internal) RETURNS bigint[]
AS 'MODULE_PATHNAME', 'aggjobs_set_final' LANGUAGE c IMMUTABLE PARALLEL SAFE;

-- The union of sets (bigint[] ascending or not, no NULL member): array_agg(DISTINCT v ORDER
-- BY v) over their members. NULL when no member is seen. SSPACE: the planner otherwise
-- assumes 8 kB a group for an internal state (see collect, 1.1).
CREATE AGGREGATE @extschema@.set_union(bigint[]) (
    SFUNC = @extschema@.set_union_step,
    STYPE = internal,
    FINALFUNC = @extschema@.set_final,
    SSPACE = 1024
);

-- The distinct values, ascending: array_agg(DISTINCT v ORDER BY v) FILTER (WHERE v IS NOT
-- NULL), computed by a hash aggregate where that one needs the input sorted.
CREATE AGGREGATE @extschema@.set_of(bigint) (
    SFUNC = @extschema@.set_of_step,
    STYPE = internal,
    FINALFUNC = @extschema@.set_final,
    SSPACE = 256
);

-- sketch_merge with the size of a group's state declared: a day's at 50,000 workspaces is
-- 2 kB (1.2 keeps it in an array of 32-bit counts). With the planner's 8 kB a group, a
-- hash aggregate of a day's 50,000 groups stopped taking groups into memory at 16,000 and
-- wrote the others' hourly rows to disk (259 MB).
CREATE OR REPLACE AGGREGATE @extschema@.sketch_merge(integer[], bigint[]) (
    SFUNC = @extschema@.sketch_merge_step,
    STYPE = internal,
    FINALFUNC = @extschema@.sketch_merge_final,
    SSPACE = 2048
);
