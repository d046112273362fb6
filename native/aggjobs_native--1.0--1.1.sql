-- aggjobs_native 1.0 to 1.1: aggregate collect (see aggjobs_native--1.1.sql), which the
-- rollups' SQL of this version uses; `aggjobs migrate` runs the update.
\echo Use "ALTER EXTENSION aggjobs_native UPDATE TO '1.1'" to load this file. \quit

CREATE AGGREGATE @extschema@.collect(double precision) (
    SFUNC = pg_catalog.array_agg_transfn,
    STYPE = internal,
    FINALFUNC = pg_catalog.array_agg_finalfn,
    FINALFUNC_EXTRA,
    SSPACE = 640
);
