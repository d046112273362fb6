-- aggjobs_native 1.0 to 1.1. A new install runs 1.0's script then this one (PostgreSQL
-- follows the update path to the control file's default_version); `aggjobs migrate` updates
-- an install made at 1.0.
\echo Use "ALTER EXTENSION aggjobs_native UPDATE TO '1.1'" to load this file. \quit

-- array_agg of a group's values, with the size of its state at the start declared (SSPACE):
-- for an internal state the planner otherwise assumes 8 kB a group, and a hash aggregate of
-- an hour's groups (5,000 workspaces) then keeps only about a thousand of them in a 4 MB
-- work_mem and writes the rows of the others to disk, though all fit (docs/native.md).
CREATE AGGREGATE @extschema@.collect(double precision) (
    SFUNC = pg_catalog.array_agg_transfn,
    STYPE = internal,
    FINALFUNC = pg_catalog.array_agg_finalfn,
    FINALFUNC_EXTRA,
    SSPACE = 640
);
