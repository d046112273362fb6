"""`aggjobs migrate` checks the platform's source tables against what the rollups read
(db/check.py): a missing or mistyped column exits 2 with one line listing each, and the
migration changes nothing (issue 21: it used to migrate, then every refresh tracebacked)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from aggjobs.db.check import SourceMismatch
from aggjobs.db.migrate import migrate
from tests.acceptance.test_cli import cli, one_line_error
from tests.conftest import create_database, drop_database

# The contract's tables (docs/contract.md#source-tables), with the changes a test makes to them.
AGENT_RUNS = {"id": "bigint PRIMARY KEY", "workspace_id": "bigint NOT NULL",
              "user_id": "bigint", "agent_id": "bigint", "status": "text NOT NULL",
              "started_at": "timestamptz NOT NULL", "completed_at": "timestamptz",
              "runtime_seconds": "double precision", "credits_consumed": "numeric(14,4)"}
USER_EVENTS = {"id": "bigint PRIMARY KEY", "workspace_id": "bigint NOT NULL",
               "user_id": "bigint NOT NULL", "event_type": "text NOT NULL",
               "occurred_at": "timestamptz NOT NULL"}
CREDIT_TRANSACTIONS = {"id": "bigint PRIMARY KEY", "workspace_id": "bigint NOT NULL",
                       "user_id": "bigint", "kind": "text NOT NULL",
                       "amount": "numeric(14,4) NOT NULL", "created_at": "timestamptz NOT NULL"}


def create_table(conn: psycopg.Connection, name: str, columns: dict[str, str | None]) -> None:
    body = ", ".join(f"{col} {ddl}" for col, ddl in columns.items() if ddl is not None)
    conn.execute(f"CREATE TABLE public.{name} ({body})")


@pytest.fixture
def platform_db(server_url: str) -> Iterator[str]:
    name = f"aggjobs_src_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    yield url
    drop_database(server_url, name)


def state(conn: psycopg.Connection) -> tuple:
    """What a refused migrate must leave as it was: schemas and the sources' columns."""
    return (conn.execute("SELECT to_regnamespace('aggjobs'), to_regnamespace('analytics')"
                         ).fetchone(),
            conn.execute("SELECT table_name, column_name, data_type FROM information_schema"
                         ".columns WHERE table_schema = 'public' ORDER BY 1, 2").fetchall(),
            conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone())


def test_migrate_lists_missing_and_mistyped_source_columns_and_changes_nothing(
        platform_db: str) -> None:
    with psycopg.connect(platform_db, autocommit=True) as conn:
        create_table(conn, "agent_runs", {**AGENT_RUNS, "runtime_seconds": None,
                                          "started_at": "text NOT NULL"})
        create_table(conn, "user_events", {**USER_EVENTS, "user_id": "text NOT NULL"})
        create_table(conn, "credit_transactions", {**CREDIT_TRANSACTIONS,
                                                   "kind": "integer NOT NULL"})
        before = state(conn)

        result = cli("migrate", url=platform_db)
        assert result.returncode == 2, result.stdout + result.stderr
        line = one_line_error(result)
        for problem in (
            ("public.agent_runs.started_at is text, must be timestamp with time zone (read by "
             "agent_executions (source.time_column), execution_metrics (source.time_column))"),
            ("public.agent_runs.runtime_seconds is missing (read by execution_metrics "
             "(measures.avg_runtime.column, measures.p95_runtime.column))"),
            ("public.user_events.user_id is text, must be smallint, integer or bigint (read by "
             "user_activity (measures.active_users.column))"),
            ("public.credit_transactions.kind is integer, must be a text type (read by "
             "credit_consumption (measures.credits_used.where.column, "
             "measures.credits_refunded.where.column, measures.credits_granted.where.column))"),
        ):
            assert problem in line, line
        assert line.count(" is missing") + line.count(", must be ") == 4, line
        assert result.stdout == ""
        assert state(conn) == before

        with pytest.raises(SourceMismatch):  # in-process too: the db layer raises it
            migrate(conn)
        assert state(conn) == before


def test_other_types_that_read_the_same_are_accepted(platform_db: str) -> None:
    """varchar or an enum for a status, integer keys, a float amount, a domain over bigint:
    the rollups read them alike, so migrate goes on."""
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute("CREATE TYPE run_status AS ENUM ('running', 'completed', 'failed',"
                     " 'cancelled')")
        conn.execute("CREATE DOMAIN workspace_ref AS bigint CHECK (VALUE > 0)")
        create_table(conn, "agent_runs", {**AGENT_RUNS, "status": "run_status NOT NULL",
                                          "workspace_id": "workspace_ref NOT NULL",
                                          "runtime_seconds": "real"})
        create_table(conn, "user_events", {**USER_EVENTS, "workspace_id": "integer NOT NULL",
                                           "event_type": "varchar(40) NOT NULL"})
        create_table(conn, "credit_transactions", {**CREDIT_TRANSACTIONS,
                                                   "amount": "double precision NOT NULL",
                                                   "kind": "varchar(20) NOT NULL"})
    result = cli("migrate", url=platform_db)
    assert result.returncode == 0, result.stderr
    assert cli("refresh", "--as-of", "2026-01-01", url=platform_db).returncode == 0
