"""Least-privilege database roles (docs/contract.md#roles, docs/security.md): connect as a
login member of aggjobs_worker and of aggjobs_reader and prove what each can do and what is
refused; the audit log is append-only for every role, the owner included."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from aggjobs.catalog import BUILTIN_ROLLUPS, BUILTIN_SOURCES, Grain
from aggjobs.jobs.runner import RunRequest, RunResult, run_job
from aggjobs.settings import Settings
from aggjobs.sql import tracking
from tests import platform as p
from tests.reference import assert_matches

from .conftest import as_user

T0 = datetime(2026, 3, 2, tzinfo=UTC)
H, D = timedelta(hours=1), timedelta(days=1)
RAW = {"agent_runs": "started_at", "user_events": "occurred_at",
       "credit_transactions": "created_at"}
KEEP = {"hourly": 0, "daily": 0, "weekly": 0, "job_runs": 0}
Denied = pg_errors.InsufficientPrivilege


def load(conn: psycopg.Connection, start: datetime, hours: int) -> None:
    for h in range(hours):
        at = start + h * H + timedelta(minutes=7)
        ws = 1 + h % 3
        p.run(conn, ws=ws, at=at, runtime=1.0 + h % 5, user=1 + h % 2)
        p.event(conn, ws=ws, user=1 + h % 4, at=at)
        p.credit(conn, ws=ws, kind="usage", amount="1.25", at=at)


def job(settings: Settings, name: str, as_of: datetime) -> RunResult:
    return run_job(RunRequest(job=name, as_of=as_of), settings)


def steps(result: RunResult) -> dict[str, dict]:
    return {s.name: vars(s) for s in result.steps}


def refused(conn: psycopg.Connection, stmt: str, params: tuple | None = None,
            error: type[Exception] = Denied) -> None:
    with pytest.raises(error), conn.transaction():
        conn.execute(stmt, params)  # type: ignore[arg-type]


def count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def as_worker(settings: Settings, worker_url: str) -> Settings:
    return settings.model_copy(update={
        "database_url": worker_url, "retry_attempts": 2, "retry_base_s": 0.05,
        "lock_wait_s": 10.0, "retention_days": {}})


# -- roles ------------------------------------------------------------------------------------
def test_group_roles_exist_and_cannot_log_in(conn):
    rows = conn.execute("SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb"
                        " FROM pg_roles WHERE rolname LIKE 'aggjobs\\_%%er' ORDER BY 1").fetchall()
    assert rows == [("aggjobs_reader", False, False, False, False),
                    ("aggjobs_worker", False, False, False, False)]


# -- the worker -------------------------------------------------------------------------------
def test_worker_runs_every_job_end_to_end(conn, as_worker):
    load(conn, T0, 72)
    assert conn.execute("SELECT count(*) FROM aggjobs.sources WHERE threshold IS NOT NULL"
                        ).fetchone()[0] == 0

    result = job(as_worker, "hourly_rollup", T0 + 30 * H)
    assert result.status == "succeeded", result
    # The refresh moved every source's tracking threshold (through the SECURITY DEFINER
    # function): a late write behind it, by the platform, is logged and rolled up next time.
    thresholds = dict(conn.execute("SELECT source, threshold FROM aggjobs.sources"))
    assert all(t is not None and t >= T0 + 29 * H for t in thresholds.values()), thresholds
    p.run(conn, ws=2, at=T0 + 3 * H + timedelta(minutes=30), runtime=42.0)
    assert count(conn, "aggjobs.invalidation_log") == 1
    result = job(as_worker, "hourly_rollup", T0 + 50 * H)
    assert result.status == "succeeded", result
    for r in BUILTIN_ROLLUPS:
        assert_matches(conn, r.name, Grain.HOUR, T0 + 50 * H)

    for name in ("daily_rollup", "refresh_materialized_views"):
        result = job(as_worker, name, T0 + 50 * H)
        assert result.status == "succeeded", (name, result)
    for r in BUILTIN_ROLLUPS:
        assert_matches(conn, r.name, Grain.DAY, T0 + 2 * D)
    assert count(conn, "analytics.workspace_overview") > 0

    # Retention deletes raw rows only through aggjobs.delete_raw_before: untracked, batched,
    # never past what is rolled up, audited.
    before = {t: count(conn, f"public.{t}") for t in RAW}
    cleaning = as_worker.model_copy(update={"retention_days": {"raw": 1, **KEEP},
                                            "cleanup_batch_rows": 5})
    result = job(cleaning, "cleanup_old_data", T0 + 30 * D)
    assert result.status == "succeeded", result
    held = T0 + 50 * H
    for table, column in RAW.items():
        left = conn.execute(f"SELECT min({column}) FROM public.{table}").fetchone()[0]
        assert left >= held
        deleted = steps(result)[f"cleanup.{table}"]["rows"]
        assert deleted > 5 and before[table] - deleted == count(conn, f"public.{table}")
    assert count(conn, "aggjobs.invalidation_log") == 0
    audit = dict(conn.execute("SELECT target, actor FROM aggjobs.audit_log"
                              " WHERE action = 'retention_delete'"))
    assert set(audit) == {f'"public"."{t}"' for t in RAW}
    runs = conn.execute("SELECT job, status FROM aggjobs.job_runs ORDER BY id").fetchall()
    assert [s for _, s in runs] == ["succeeded"] * 5


def test_worker_cannot_write_the_sources(conn, worker):
    load(conn, T0, 2)
    for table in RAW:
        assert count(worker, f"public.{table}") == 2  # it reads them
        refused(worker, f"UPDATE public.{table} SET workspace_id = 9")
        refused(worker, f"DELETE FROM public.{table}")
        refused(worker, f"TRUNCATE public.{table}")
        refused(worker, f"INSERT INTO public.{table} SELECT * FROM public.{table} LIMIT 1")
        refused(worker, f"DROP TRIGGER aggjobs_track_insert ON public.{table}")
        assert count(conn, f"public.{table}") == 2
    # Nor the table that tells the SECURITY DEFINER functions where the sources are.
    refused(worker, "UPDATE aggjobs.sources SET relation_schema = 'aggjobs',"
                    " relation_name = 'audit_log', time_column = 'at'")
    refused(worker, "INSERT INTO aggjobs.sources (source, relation_schema, relation_name,"
                    " time_column) VALUES ('audit', 'aggjobs', 'audit_log', 'at')")
    refused(worker, "SELECT * FROM aggjobs.source_relation('agent_runs')")


@pytest.mark.parametrize("source", [
    "aggjobs.audit_log", "audit_log", "job_runs", "public.agent_runs",
    "agent_runs; DROP TABLE aggjobs.audit_log", "agent_runs' OR '1'='1", '"agent_runs"', "", "AGENT_RUNS",
])
def test_delete_raw_before_refuses_anything_but_a_source(conn, worker, source):
    load(conn, T0, 3)
    conn.execute("INSERT INTO aggjobs.audit_log (actor, action, outcome) VALUES ('t', 't', 't')")
    snapshot = {t: count(conn, t) for t in
                ("aggjobs.audit_log", "aggjobs.job_runs", *(f"public.{t}" for t in RAW))}
    refused(worker, "SELECT aggjobs.delete_raw_before(%s, %s, 100)", (source, T0 + D),
            error=pg_errors.InvalidParameterValue)
    refused(worker, "SELECT aggjobs.move_tracking_threshold(%s, %s)", (source, T0 + D),
            error=pg_errors.InvalidParameterValue)
    assert {t: count(conn, t) for t in snapshot} == snapshot


def test_delete_raw_before_deletes_a_bounded_batch_untracked(conn, worker):
    load(conn, T0, 10)
    # Track everything, so that a tracked delete would show in the log.
    assert conn.execute("SELECT aggjobs.move_tracking_threshold('agent_runs', %s)",
                        (T0 + 30 * D,)).fetchone()[0] == T0 + 30 * D
    n = worker.execute("SELECT aggjobs.delete_raw_before('agent_runs', %s, 3)",
                       (T0 + 5 * H,)).fetchone()[0]
    assert n == 3
    n = worker.execute("SELECT aggjobs.delete_raw_before('agent_runs', %s, 100)",
                       (T0 + 5 * H,)).fetchone()[0]
    assert n == 2
    assert conn.execute("SELECT min(started_at) FROM agent_runs").fetchone()[0] >= T0 + 5 * H
    assert count(conn, "public.user_events") == 10
    assert count(conn, "aggjobs.invalidation_log") == 0
    # The setting was on only inside the function: the worker's session has it off.
    assert worker.execute("SELECT current_setting('aggjobs.retention', true)"
                          ).fetchone()[0] in (None, "")
    refused(worker, "SELECT aggjobs.delete_raw_before('agent_runs', %s, 0)", (T0 + D,),
            error=pg_errors.InvalidParameterValue)
    # A sources row pointing into aggjobs (only the owner could write one) is refused too.
    conn.execute("INSERT INTO aggjobs.sources (source, relation_schema, relation_name,"
                 " time_column) VALUES ('evil', 'aggjobs', 'audit_log', 'at')")
    refused(worker, "SELECT aggjobs.delete_raw_before('evil', now(), 10)",
            error=pg_errors.InvalidParameterValue)


def test_moved_triggers_are_the_ones_the_catalog_declares(conn):
    """move_tracking_threshold re-creates exactly what tracking.create_triggers makes."""
    until = T0 + 7 * H
    for source in BUILTIN_SOURCES:
        conn.execute("SELECT aggjobs.move_tracking_threshold(%s, %s)", (source.name, until))
        defs = "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s::regclass"
        rel = f"{source.schema}.{source.table}"
        moved = sorted(conn.execute(defs, (rel,)).fetchall())
        for stmt in tracking.create_triggers(source, until):
            conn.execute(stmt)
        assert sorted(conn.execute(defs, (rel,)).fetchall()) == moved
        assert str(until.year) in dict(moved)["aggjobs_track_insert"]
    # The threshold only grows.
    assert conn.execute("SELECT aggjobs.move_tracking_threshold('agent_runs', %s)",
                        (T0,)).fetchone()[0] == until


# -- the audit log ----------------------------------------------------------------------------
AUDIT_WRITES = ["UPDATE aggjobs.audit_log SET outcome = 'forged'",
                "DELETE FROM aggjobs.audit_log",
                "DELETE FROM aggjobs.audit_log WHERE false",
                "TRUNCATE aggjobs.audit_log"]


def test_audit_log_is_append_only_for_the_worker_and_the_owner(conn, worker):
    worker.execute("INSERT INTO aggjobs.audit_log (actor, action, target, outcome, source)"
                   " VALUES ('w', 'run', 'hourly_rollup', 'ok', '10.0.0.1')")
    assert count(worker, "aggjobs.audit_log") == 1
    for stmt in AUDIT_WRITES:
        refused(worker, stmt)
    for stmt in AUDIT_WRITES:  # the owner (a superuser here) too: the triggers refuse
        with pytest.raises(Denied, match="append-only"), conn.transaction():
            conn.execute(stmt)
    assert conn.execute("SELECT actor, outcome, source FROM aggjobs.audit_log").fetchall() == \
        [("w", "ok", "10.0.0.1")]


# -- the reader -------------------------------------------------------------------------------
def test_reader_reads_the_live_views_not_the_raw_rows_they_read(conn, reader, settings):
    """The live views read the raw rows and the change log as their owner: a reader gets
    the rollups' rows, from the table, from pending changes and for the open hour, and is
    still refused the raw tables themselves (docs/security.md)."""
    load(conn, T0, 30)
    assert job(settings.model_copy(update={"retention_days": {}}), "hourly_rollup",
               T0 + 30 * H).status == "succeeded"
    conn.execute("UPDATE agent_runs SET runtime_seconds = 99 WHERE id % 2 = 0")  # pending
    p.run(conn, ws=1, at=datetime.now(UTC), runtime=5.0)  # the open hour
    for rollup in BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            view = f"analytics.{rollup.table(grain)}_live"
            assert count(reader, view) == count(conn, view) > 0, view
    assert reader.execute("SELECT max(p95_runtime) FROM analytics.execution_metrics_hourly_live"
                          ).fetchone()[0] == 99.0
    for table in ("public.agent_runs", "aggjobs.invalidation_log", "aggjobs.pending_groups"):
        refused(reader, f"SELECT count(*) FROM {table}")


def test_reader_reads_analytics_and_history_only(conn, reader, reader_url, settings):
    load(conn, T0, 30)
    owner = settings.model_copy(update={"retention_days": {}})
    assert job(owner, "hourly_rollup", T0 + 30 * H).status == "succeeded"
    assert job(owner, "refresh_materialized_views", T0 + 30 * H).status == "succeeded"
    conn.execute("INSERT INTO aggjobs.audit_log (actor, action, outcome) VALUES ('a', 'b', 'c')")

    assert count(reader, "analytics.execution_metrics_hourly") > 0
    assert count(reader, "analytics.workspace_overview") >= 0
    assert count(reader, "analytics.workspace_health_daily") == 0
    assert count(reader, "aggjobs.job_runs") == 2
    for table in ("public.agent_runs", "public.user_events", "public.credit_transactions",
                  "aggjobs.api_tokens", "aggjobs.audit_log", "aggjobs.sources",
                  "aggjobs.watermarks", "aggjobs.invalidation_log"):
        refused(reader, f"SELECT count(*) FROM {table}")
    for stmt in ("DELETE FROM analytics.execution_metrics_hourly",
                 "UPDATE analytics.execution_metrics_hourly SET total_executions = 0",
                 "TRUNCATE analytics.execution_metrics_daily",
                 "REFRESH MATERIALIZED VIEW analytics.workspace_overview",
                 "DELETE FROM aggjobs.job_runs",
                 "INSERT INTO aggjobs.audit_log (actor, action, outcome) VALUES ('r', 'r', 'r')",
                 "INSERT INTO public.user_events VALUES (999, 1, 1, 'x', now())",
                 "CREATE TABLE analytics.mine (x int)"):
        refused(reader, stmt)
    refused(reader, "SELECT aggjobs.delete_raw_before('agent_runs', now(), 10)")
    refused(reader, "SELECT aggjobs.move_tracking_threshold('agent_runs', now())")

    # Running a job needs the job state: refused, and nothing is written.
    before = count(conn, "aggjobs.job_runs")
    as_reader = settings.model_copy(update={"database_url": reader_url, "retry_attempts": 1})
    try:
        result = job(as_reader, "hourly_rollup", T0 + 40 * H)
    except psycopg.Error as exc:
        assert isinstance(exc, Denied), exc
    else:
        assert result.status != "succeeded", result
    assert count(conn, "aggjobs.job_runs") == before
    assert p.watermarks(conn)[("execution_metrics", "hour")] == T0 + 30 * H


def test_worker_privileges_cover_tables_created_after_the_migrations(conn, worker, db_url):
    """sync_catalog grants on every migrate: a rollup table made later is writable too."""
    from aggjobs.db.migrate import migrate

    conn.execute("DROP TABLE analytics.user_activity_weekly CASCADE")  # and its live view
    refused(worker, "SELECT 1 FROM analytics.user_activity_weekly",
            error=pg_errors.UndefinedTable)
    with psycopg.connect(db_url, autocommit=True) as owner:
        migrate(owner)
    worker.execute("DELETE FROM analytics.user_activity_weekly")
    assert count(worker, "analytics.user_activity_weekly") == 0
    owners = conn.execute(sql.SQL(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relkind = 'm'"
        " AND relnamespace = 'analytics'::regnamespace")).fetchall()
    assert owners == [("aggjobs_worker",)]


# -- every "cannot" of docs/security.md, "Who can do what" -------------------------------------
Invalid = pg_errors.InvalidParameterValue
DEFINER_CALLS = [
    "SELECT aggjobs.delete_raw_before('agent_runs', now(), 10)",
    "SELECT aggjobs.move_tracking_threshold('agent_runs', now())",
    "SELECT * FROM aggjobs.drop_partition_before('agent_runs', now())",
    "SELECT aggjobs.create_token('x', 'admin', repeat('a', 64), 'me', NULL, NULL)",
    "SELECT aggjobs.revoke_token('x', 'me', NULL)",
    "SELECT aggjobs.token_used(1)",
]
CANNOT = [
    # aggjobs_worker
    *[("worker", stmt, Denied) for stmt in (
        ("INSERT INTO public.agent_runs (id, workspace_id, status, started_at)"
        " VALUES (1, 1, 'completed', now())"),
        "UPDATE public.user_events SET workspace_id = 9",
        "DELETE FROM public.credit_transactions",
        "TRUNCATE public.agent_runs",
        "UPDATE aggjobs.sources SET threshold = 'infinity'",
        ("INSERT INTO aggjobs.sources (source, relation_schema, relation_name, time_column)"
        " VALUES ('audit', 'aggjobs', 'audit_log', 'at')"),
        "DROP TRIGGER aggjobs_track_delete ON public.agent_runs",
        "ALTER TABLE public.agent_runs DISABLE TRIGGER USER",
        "SELECT * FROM aggjobs.source_relation('agent_runs')",
        ("INSERT INTO aggjobs.api_tokens (name, role, token_hash, created_by)"
        " VALUES ('mine', 'admin', repeat('a', 64), 'w')"),
        "UPDATE aggjobs.api_tokens SET revoked_at = NULL, role = 'admin'",
        "DELETE FROM aggjobs.api_tokens",
        "TRUNCATE aggjobs.api_tokens",
        "UPDATE aggjobs.audit_log SET outcome = 'forged'",
        "DELETE FROM aggjobs.audit_log",
        "TRUNCATE aggjobs.audit_log",
        "INSERT INTO aggjobs.schema_migrations (version, name) VALUES (9999, 'x')",
        "INSERT INTO aggjobs.retention_transactions VALUES (pg_current_xact_id())",
        "CREATE TABLE analytics.mine (x int)",
        "CREATE TABLE aggjobs.mine (x int)",
    )],
    ("worker", "SELECT aggjobs.delete_raw_before('aggjobs.audit_log', now(), 10)", Invalid),
    ("worker", "SELECT aggjobs.move_tracking_threshold('agent_runs', 'infinity')", Invalid),
    ("worker", "SELECT aggjobs.move_tracking_threshold('agent_runs', now() + interval '1 day')",
     Invalid),
    # aggjobs_reader
    *[("reader", f"SELECT count(*) FROM {t}", Denied) for t in (
        "public.agent_runs", "aggjobs.api_tokens", "aggjobs.audit_log", "aggjobs.sources",
        "aggjobs.watermarks", "aggjobs.invalidation_log")],
    *[("reader", stmt, Denied) for stmt in (
        "DELETE FROM analytics.execution_metrics_hourly",
        ("INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, host, pid)"
        " VALUES ('x', 'manual', 'r', now(), 'running', 'h', 1)"),
        "INSERT INTO aggjobs.audit_log (actor, action, outcome) VALUES ('r', 'r', 'r')",
        *DEFINER_CALLS)],
    # the platform's writers (with docs/security.md's grant)
    *[("writer", stmt, Denied) for stmt in (
        "SELECT count(*) FROM aggjobs.invalidation_log",
        "DELETE FROM aggjobs.invalidation_log",
        "INSERT INTO aggjobs.retention_transactions VALUES (pg_current_xact_id())",
        "SELECT count(*) FROM aggjobs.api_tokens",
        "INSERT INTO aggjobs.audit_log (actor, action, outcome) VALUES ('p', 'p', 'p')",
        *DEFINER_CALLS)],
    # PUBLIC: a role that can connect and nothing more
    *[("public", stmt, Denied) for stmt in (
        "SELECT count(*) FROM analytics.execution_metrics_hourly",
        "SELECT count(*) FROM aggjobs.job_runs",
        ("INSERT INTO public.agent_runs (id, workspace_id, status, started_at)"
        " VALUES (1, 1, 'completed', now())"),
        *DEFINER_CALLS)],
]


@pytest.fixture
def as_role(db_url: str, login_role) -> Iterator[Callable[[str], psycopg.Connection]]:
    """connect(kind) for kind in worker, reader, writer (the platform's, with the documented
    grant) and public (no grant at all)."""
    opened: list[psycopg.Connection] = []
    made: list[str] = []

    def connect(kind: str) -> psycopg.Connection:
        if kind in ("worker", "reader"):
            url = login_role(f"aggjobs_{kind}")
        else:
            name = f"aggjobs_t_{kind}_{uuid.uuid4().hex[:10]}"
            role = sql.Identifier(name)
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
                if kind == "writer":
                    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA aggjobs TO {}").format(role))
                    admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON"
                                          " public.agent_runs TO {}").format(role))
                    admin.execute(sql.SQL("GRANT INSERT ON aggjobs.invalidation_log TO {}"
                                          ).format(role))
            made.append(name)
            url = as_user(db_url, name)
        opened.append(psycopg.connect(url, autocommit=True))
        return opened[-1]

    yield connect
    for c in opened:
        c.close()
    with psycopg.connect(db_url, autocommit=True) as admin:
        for name in made:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize("kind,stmt,error", CANNOT,
                         ids=[f"{k}-{s[:60]}" for k, s, _ in CANNOT])
def test_role_cannot(conn, as_role, kind, stmt, error):
    load(conn, T0, 2)
    tables = ("public.agent_runs", "public.user_events", "public.credit_transactions",
              "aggjobs.api_tokens", "aggjobs.sources", "aggjobs.audit_log")
    before = {t: count(conn, t) for t in tables}
    refused(as_role(kind), stmt, error=error)
    assert {t: count(conn, t) for t in tables} == before
