"""What Citus needs of aggjobs' SQL (issue 18, docs/scaling.md), checked on PostgreSQL: no
Citus here, so each property a distributed database relies on is tested where it shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib.resources import files

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain, sources
from aggjobs.cli.main import app
from aggjobs.db.doctor import diagnose
from aggjobs.db.migrate import migrations
from aggjobs.db.script import statements
from aggjobs.engine.recompute import estimated_rows, input_rows, statement_ranges
from aggjobs.jobs.cleanup import batch_delete
from aggjobs.sql import rollup as rollup_sql
from aggjobs.sql import tracking
from aggjobs.sql.rollup import Scope

T0 = datetime(2026, 3, 2, tzinfo=UTC)

# The top of an EXPLAIN (FORMAT JSON) on Citus 13.2.2 of a distributed scan (trimmed).
CITUS_PLAN = [{"Plan": {"Node Type": "Custom Scan", "Custom Plan Provider": "Citus Adaptive",
                        "Plan Rows": 100000, "Distributed Query": {"Job": {"Task Count": 32}}}}]


def test_each_migration_statement_runs_on_its_own() -> None:
    """Every script migrate runs splits into statements that PostgreSQL's extended protocol
    accepts one by one (it refuses a string of several): migrate on a fresh database, which
    the fixtures do, goes through db/script.py; here the splitting itself."""
    for m in migrations():
        pieces = statements(m.sql)
        assert pieces, m.name
        assert all(not p.rstrip().endswith(";") for p in pieces), m.name
    tricky = ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $b$ SELECT 1; $b$;\n"
              "-- a comment; with a semicolon\nSELECT 'a;b', \"x;y\", E'\\';';\n"
              "/* block; /* nested; */ */ SELECT 2")
    assert len(statements(tricky)) == 3


def test_a_migrated_database_was_built_statement_by_statement(conn: psycopg.Connection
                                                               ) -> None:
    """The extended protocol (prepare=True) refuses several statements in one string: the
    schema the fixtures migrated exists, so every statement went on its own."""
    with pytest.raises(psycopg.errors.SyntaxError):
        conn.execute(b"SELECT 1; SELECT 2", prepare=True)
    conn.rollback()
    assert conn.execute("SELECT max(version) FROM aggjobs.schema_migrations"
                        ).fetchone()[0] == migrations()[-1].version


def test_the_insert_target_is_aliased_in_returning() -> None:
    for rollup in BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            for scope in Scope:
                text = rollup_sql.insert_target(rollup, grain, scope).as_string(None)
                assert " AS target (" in text and "RETURNING target." in text, text


def test_no_ctid_in_deletes_of_distributable_tables(conn: psycopg.Connection) -> None:
    """The rollups' and the sources' retention deletes name rows by key (Citus refuses a
    recursively planned DELETE by ctid), and they still delete what they should."""
    for rollup in BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            stmt = batch_delete(rollup_sql.table_ident(rollup, grain),
                                ["workspace_id", grain.column], sql.SQL("true"))
            assert "ctid" not in stmt.as_string(conn)
    body = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'delete_raw_before'"
                        ).fetchone()[0]
    assert "ctid" not in body
    conn.execute("INSERT INTO agent_runs (id, workspace_id, status, started_at) SELECT i, i %% 3,"
                 " 'running', %s + i * interval '1 minute' FROM generate_series(1, 50) AS i",
                 (T0,))
    deleted = conn.execute("SELECT aggjobs.delete_raw_before('agent_runs', %s, 7)",
                           (T0 + timedelta(minutes=20),)).fetchone()[0]
    assert deleted == 7
    assert conn.execute("SELECT count(*) FROM agent_runs").fetchone()[0] == 43
    assert conn.execute("SELECT count(*) FROM agent_runs WHERE started_at >= %s",
                        (T0 + timedelta(minutes=20),)).fetchone()[0] == 31


def test_the_truncate_marker_carries_a_workspace(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE aggjobs.sources SET threshold = %s", (T0 + timedelta(days=1),))
    for source in sources():  # the triggers with a threshold, as a refresh leaves them
        for stmt in tracking.create_triggers(source, T0 + timedelta(days=1)):
            conn.execute(stmt)
    conn.execute("TRUNCATE credit_transactions")
    rows = conn.execute("SELECT source, workspace_id, bucket, truncated"
                        " FROM aggjobs.invalidation_log").fetchall()
    assert rows == [("credit_transactions", 0, None, True)]


def test_the_views_owner_is_checked_by_doctor(conn: psycopg.Connection) -> None:
    """On PostgreSQL there is nothing to check; the views' owner is the role migrate lets
    log in on Citus (and only there: on PostgreSQL the group role stays NOLOGIN)."""
    owners = {r[0] for r in conn.execute(
        "SELECT matviewowner FROM pg_matviews WHERE schemaname = 'analytics'")}
    assert owners == {"aggjobs_worker"}
    d = diagnose(conn)
    assert not d.citus and d.healthy and not d.problems


def test_doctor_says_not_a_citus_cluster(settings) -> None:
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "not a Citus cluster" in result.output
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["citus"] is False


def test_statement_sizing_works_when_the_estimate_is_useless(conn: psycopg.Connection) -> None:
    """Citus' EXPLAIN gives a constant 100000 rows: no estimate, so the rows are counted."""
    assert estimated_rows(CITUS_PLAN) is None
    conn.execute("INSERT INTO agent_runs (id, workspace_id, status, started_at) SELECT i, i %% 5,"
                 " 'running', %s + (i %% 180) * interval '1 minute' FROM generate_series(1, 3000)"
                 " AS i", (T0,))
    rollup = BUILTIN_ROLLUPS[0]
    counted = conn.execute(rollup_sql.input_rows_count(rollup, Grain.HOUR),
                           {"lo": T0, "hi": T0 + timedelta(hours=3)}).fetchone()[0]
    assert counted == 3000
    assert input_rows(conn, rollup, Grain.HOUR, T0, T0 + timedelta(hours=3)) > 0
    assert statement_ranges(conn, rollup, Grain.HOUR, T0, T0 + timedelta(hours=3))


def test_views_sql_and_schema_split_whole() -> None:
    for name in ("schema.sql", "views.sql"):
        text = files("aggjobs.db").joinpath(name).read_text()
        assert len(statements(text)) > 5
