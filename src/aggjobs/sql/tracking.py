"""Change tracking on the sources: row triggers whose WHEN clause holds a constant threshold.

A write is logged only when the row's time is before the threshold (the materialized
point), so the platform's ordinary writes, ahead of it, run no trigger function at all: the
WHEN clause is a comparison with a constant, evaluated before any function call. Moving the
threshold is `CREATE OR REPLACE TRIGGER` in one short transaction; its SHARE ROW EXCLUSIVE
lock waits for the writers in flight, so every write that commits afterwards sees the new
threshold, and every write before it is visible to the refresh that follows.
"""

from __future__ import annotations

from datetime import datetime

from psycopg import sql

from ..catalog.model import Source

I, L, S = sql.Identifier, sql.Literal, sql.SQL

FUNCTION_PREFIX = "track_"
TRIGGERS = ("aggjobs_track_insert", "aggjobs_track_update", "aggjobs_track_delete")


def function_ident(source: Source) -> sql.Identifier:
    return I("aggjobs", FUNCTION_PREFIX + source.name)


def hour_of(row: str, source: Source) -> sql.Composed:
    return S("pg_catalog.date_trunc('hour', {}.{}, 'UTC')").format(S(row), I(source.time_column))


EQ, NE = S("OPERATOR(pg_catalog.=)"), S("OPERATOR(pg_catalog.<>)")


# The trigger function's body, a template of create_function's.
FUNCTION = S(
    """CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP {eq} 'TRUNCATE' THEN
        -- Only for the table itself: on Citus a TRUNCATE fires this on each shard too
        -- (table_102008), where logging would be a distributed query nested in one. The
        -- marker has a workspace (0): the log is distributed by it, never NULL there.
        IF TG_TABLE_NAME {eq} {table}::pg_catalog.name THEN
            INSERT INTO aggjobs.invalidation_log (source, workspace_id, truncated)
                VALUES ({src}, 0, true);
        END IF;
        RETURN NULL;
    END IF;
    -- Retention deletes rows whose buckets stay as they are: nothing to recompute. (Two
    -- IFs: a condition with a subquery is not a simple expression, and would cost the
    -- executor's start-up on every insert and update too.)
    IF TG_OP {eq} 'DELETE' THEN
        IF EXISTS (SELECT FROM aggjobs.retention_transactions AS r
                   WHERE r.txid {eq} pg_catalog.pg_current_xact_id_if_assigned()) THEN
            RETURN NULL;
        END IF;
    END IF;
    IF TG_OP {ne} 'INSERT' THEN
        {log_old}
    END IF;
    -- The new group, unless the same as the old (a NULL compares as different: logged).
    IF TG_OP {eq} 'INSERT' OR (TG_OP {eq} 'UPDATE'
            AND ((OLD.{key} {eq} NEW.{key}) IS NOT TRUE
                 OR ({old_hour} {eq} {new_hour}) IS NOT TRUE)) THEN
        {log_new}
    END IF;
    RETURN NULL;
END
$body$"""
)
LOG = S("INSERT INTO aggjobs.invalidation_log (source, workspace_id, bucket) VALUES ({}, {}, {});")


def create_function(source: Source) -> sql.Composed:
    """The trigger function: log (key, hour) of the old and the new row; retention's deletes
    are not logged. They are those of a transaction aggjobs.delete_raw_before listed in
    aggjobs.retention_transactions while it runs (owner-only: no other session can claim to
    be retention, as the settable GUC aggjobs.retention let any). Looked up for a DELETE only
    (one primary-key probe beside the log row it saves); inserts and updates cost what they
    did, and writes ahead of the threshold run no function at all.

    It runs as whoever writes, under their search_path: every function and operator is
    schema-qualified, so that a writer cannot shadow `=` or date_trunc (in a schema of its
    own put before pg_catalog) to log nothing or the wrong hour. Qualifying costs nothing;
    a `SET search_path` clause would cost every late write a GUC save and restore. The key
    is an integer (it goes to invalidation_log.workspace_id), whose `=` is pg_catalog's."""
    return FUNCTION.format(
        fn=function_ident(source),
        src=L(source.name),
        table=L(source.table),
        key=I(source.key_column),
        eq=EQ,
        ne=NE,
        old_hour=hour_of("OLD", source),
        new_hour=hour_of("NEW", source),
        log_old=log_row("OLD", source),
        log_new=log_row("NEW", source),
    )


def log_row(row: str, source: Source) -> sql.Composed:
    """The INSERT logging the (key, hour) of `row` (OLD or NEW) into the invalidation log."""
    return LOG.format(L(source.name), S("{}.{}").format(S(row), I(source.key_column)),
                      hour_of(row, source))


def create_triggers(source: Source, threshold: datetime | None) -> list[sql.Composed]:
    """The three row triggers and the TRUNCATE trigger, with `threshold` as a constant
    (None: track nothing yet)."""
    table = I(source.schema, source.table)
    t = I(source.time_column)
    th = L(threshold) if threshold is not None else S("NULL::timestamptz")
    conditions = {
        "aggjobs_track_insert": ("INSERT", S("NEW.{} < {}").format(t, th)),
        "aggjobs_track_update": (
            "UPDATE",
            S("(OLD.{t} < {th} OR NEW.{t} < {th}) AND OLD IS DISTINCT FROM NEW").format(t=t, th=th),
        ),
        "aggjobs_track_delete": ("DELETE", S("OLD.{} < {}").format(t, th)),
    }
    stmts = [
        S(
            "CREATE OR REPLACE TRIGGER {name} AFTER {op} ON {table} FOR EACH ROW"
            " WHEN ({cond}) EXECUTE FUNCTION {fn}()"
        ).format(name=I(name), op=S(op), table=table, cond=cond, fn=function_ident(source))
        for name, (op, cond) in conditions.items()
    ]
    stmts.append(
        S(
            "CREATE OR REPLACE TRIGGER aggjobs_track_truncate AFTER TRUNCATE ON {}"
            " FOR EACH STATEMENT EXECUTE FUNCTION {}()"
        ).format(table, function_ident(source))
    )
    return stmts
