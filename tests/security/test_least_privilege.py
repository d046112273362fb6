"""Issue 21, "the roles are least privilege in fact" (docs/security.md): bounded tracking
thresholds that `migrate` repairs, api_tokens changed only through audited functions, a
retention bypass no other session can switch on, and foreign advisory-lock holders named."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from aggjobs.api import tokens
from aggjobs.catalog import BUILTIN_SOURCES, Grain, get_rollup
from aggjobs.db.migrate import migrate
from aggjobs.engine.refresh import refresh
from aggjobs.errors import LockBusy
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.monitor import alerts, overview
from aggjobs.settings import Settings
from aggjobs.sql import tracking
from tests import platform as p
from tests.reference import assert_matches

from .conftest import as_user

NOW = datetime.now(UTC)
HOUR = NOW.replace(minute=0, second=0, microsecond=0)
H = timedelta(hours=1)
Denied = pg_errors.InsufficientPrivilege
Invalid = pg_errors.InvalidParameterValue


def count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def refused(conn: psycopg.Connection, stmt: str, params: tuple | None = None,
            error: type[Exception] = Denied) -> None:
    with pytest.raises(error), conn.transaction():
        conn.execute(stmt, params)  # type: ignore[arg-type]


def materialize(conn: psycopg.Connection, settings: Settings) -> None:
    """Runs in the three hours before the current one, rolled up to the current hour: the
    tracking thresholds are then at HOUR."""
    for h in (1, 2, 3):
        for ws in (1, 2):
            p.run(conn, ws=ws, at=HOUR - h * H + timedelta(minutes=10 * ws), runtime=float(h))
    p.refresh_all(conn, settings, HOUR + timedelta(minutes=5))


# -- finding 2: bounded thresholds, repaired by migrate ---------------------------------------
@pytest.mark.parametrize("threshold", [
    "infinity", "-infinity", "1969-12-31 23:59:59+00", "0044-03-15 00:00:00+00 BC",
    "9999-01-01 00:00:00+00", "now() + interval '11 minutes'", "now() + interval '30 days'",
    "NULL"])
def test_the_worker_cannot_move_a_threshold_out_of_bounds(conn, threshold):
    conn.execute("SET ROLE aggjobs_worker")
    value = threshold if threshold.startswith(("now", "NULL")) else f"'{threshold}'"
    with pytest.raises(Invalid, match="tracking threshold"):
        conn.execute(f"SELECT aggjobs.move_tracking_threshold('agent_runs', {value})")
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT threshold FROM aggjobs.sources WHERE source = 'agent_runs'"
                        ).fetchone()[0] is None
    assert "infinity" not in conn.execute(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'aggjobs_track_insert'"
        " AND tgrelid = 'public.agent_runs'::regclass").fetchone()[0]


def test_a_threshold_within_the_clock_margin_is_accepted(conn):
    conn.execute("SET ROLE aggjobs_worker")
    moved = conn.execute("SELECT aggjobs.move_tracking_threshold('agent_runs',"
                         " now() + interval '9 minutes')").fetchone()[0]
    assert moved > NOW


def break_threshold(conn: psycopg.Connection, source_name: str, value: str) -> None:
    """What the old move_tracking_threshold let the worker do: the source's triggers and its
    sources row at `value` (done here by the owner)."""
    source = next(s for s in BUILTIN_SOURCES if s.name == source_name)
    for stmt in tracking.create_triggers(source, datetime(2001, 2, 3, tzinfo=UTC)):
        text = re.sub(r"'[^']*'::timestamptz", f"'{value}'::timestamptz", stmt.as_string(conn))
        conn.execute(text)  # type: ignore[arg-type]
    conn.execute("UPDATE aggjobs.sources SET threshold = %s WHERE source = %s",
                 (value, source_name))


@pytest.mark.parametrize("broken", ["infinity", "2150-01-01 00:00:00+00"])
def test_migrate_repairs_a_broken_threshold(conn, db_url, settings, broken):
    materialize(conn, settings)
    break_threshold(conn, "agent_runs", broken)
    before = count(conn, "aggjobs.invalidation_log")
    p.run(conn, ws=1, at=datetime.now(UTC))
    assert count(conn, "aggjobs.invalidation_log") == before + 1  # every insert is logged
    # The function refuses to go on from it, saying what repairs it.
    with pytest.raises(Invalid, match="aggjobs migrate"):
        conn.execute("SELECT aggjobs.move_tracking_threshold('agent_runs', %s)", (HOUR,))
    # Status names it (it tracebacked on an infinite threshold) and says what repairs it.
    state = overview(conn, settings).as_dict()
    assert not state["healthy"]
    assert any("tracking threshold" in p and "aggjobs migrate" in p for p in state["problems"]
               ), state["problems"]

    with psycopg.connect(db_url, autocommit=True) as owner:
        migrate(owner)
    # Back at the end of what is materialized, triggers included.
    assert conn.execute("SELECT threshold FROM aggjobs.sources WHERE source = 'agent_runs'"
                        ).fetchone()[0] == HOUR
    trigger = conn.execute(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'aggjobs_track_insert'"
        " AND tgrelid = 'public.agent_runs'::regclass").fetchone()[0]
    assert "infinity" not in trigger and "2150" not in trigger
    logged = count(conn, "aggjobs.invalidation_log")
    conn.execute(
        "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,"
        " runtime_seconds, credits_consumed)"
        " SELECT 5000000 + g, 1 + g % 3, 1, 1, 'completed', now(), 2.5, 1 FROM"
        " generate_series(1, 1000) AS g")
    assert count(conn, "aggjobs.invalidation_log") == logged  # current rows: not logged

    reports = p.refresh_all(conn, settings, datetime.now(UTC))
    assert all(r.grains for r in reports.values())
    assert_matches(conn, "execution_metrics", Grain.HOUR, HOUR)
    assert not any("tracking threshold" in p for p in overview(conn, settings).problems)


def test_migrate_leaves_a_threshold_within_bounds(conn, db_url, settings):
    materialize(conn, settings)
    with psycopg.connect(db_url, autocommit=True) as owner:
        migrate(owner)
    assert {t for (t,) in conn.execute("SELECT threshold FROM aggjobs.sources")} == {HOUR}


# -- finding 3 and the token part of 10: api_tokens through audited functions only ------------
TOKEN_WRITES = [
    ("INSERT INTO aggjobs.api_tokens (name, role, token_hash, created_by)"
    " VALUES ('mine', 'admin', repeat('a', 64), 'w')"),
    "UPDATE aggjobs.api_tokens SET revoked_at = NULL",
    "UPDATE aggjobs.api_tokens SET role = 'admin'",
    "UPDATE aggjobs.api_tokens SET token_hash = repeat('b', 64)",
    "DELETE FROM aggjobs.api_tokens",
    "TRUNCATE aggjobs.api_tokens",
]


def test_the_worker_changes_tokens_only_through_the_audited_functions(conn, worker):
    secret, row = tokens.create(worker, "ops", "operator", actor="cli:alice", expires_days=1)
    assert row["name"] == "ops" and tokens.verify(worker, secret) == "operator"
    tokens.revoke(worker, "ops", actor="cli:alice")
    for stmt in TOKEN_WRITES:
        refused(worker, stmt)
    assert conn.execute("SELECT name, role, revoked_at IS NOT NULL FROM aggjobs.api_tokens"
                        ).fetchall() == [("ops", "operator", True)]
    audited = conn.execute("SELECT actor, action, target, outcome, params->>'db_user'"
                           " FROM aggjobs.audit_log ORDER BY id").fetchall()
    user = worker.info.user
    assert audited == [("cli:alice", "token.create", "ops", "created", user),
                       ("cli:alice", "token.revoke", "ops", "revoked", user)]
    # The reader cannot even call them.
    for call in ("SELECT aggjobs.create_token('x', 'admin', repeat('a', 64), 'r', NULL, NULL)",
                 "SELECT aggjobs.revoke_token('ops', 'r', NULL)",
                 "SELECT aggjobs.token_used(1)"):
        refused(conn, "SET LOCAL ROLE aggjobs_reader; " + call)


@pytest.mark.parametrize("name,role,days,outcome", [
    ("a b", "viewer", None, "refused: invalid name"),
    ("", "viewer", None, "refused: invalid name"),
    ("x'; DROP TABLE aggjobs.api_tokens; --", "viewer", None, "refused: invalid name"),
    ("nul\x00byte", "viewer", None, "refused: invalid name"),
    ("trailing\n", "viewer", None, "refused: invalid name"),
    ("n" * 101, "viewer", None, "refused: invalid name"),
    ("ok", "root", None, "refused: invalid role"),
    ("ok", "viewer", -1, "refused: invalid expiry"),
    ("ok", "viewer", 0, "refused: invalid expiry"),
    ("ok", "viewer", float("inf"), "refused: invalid expiry"),
    ("ok", "viewer", float("nan"), "refused: invalid expiry"),
    pytest.param("ok", "viewer", 10 ** 400, "refused: invalid expiry", id="ok-viewer-1e400"),
    ("ok", "viewer", 36501, "refused: invalid expiry"),
])
def test_every_refused_creation_is_audited(conn, worker, name, role, days, outcome):
    with pytest.raises(tokens.TokenError):
        tokens.create(worker, name, role, actor="api:t-admin", expires_days=days,
                      source="10.1.2.3")
    assert count(conn, "aggjobs.api_tokens") == 0
    rows = conn.execute("SELECT actor, action, outcome, source FROM aggjobs.audit_log"
                        ).fetchall()
    assert rows == [("api:t-admin", "token.create", outcome, "10.1.2.3")]


def test_a_taken_name_and_an_unknown_revoke_are_refused_and_audited(conn, worker):
    tokens.create(worker, "ops", "viewer", actor="a")
    with pytest.raises(tokens.TokenExists, match="exists already"):
        tokens.create(worker, "ops", "admin", actor="mallory")
    with pytest.raises(tokens.UnknownToken, match="no active token"):
        tokens.revoke(worker, "nobody", actor="mallory")
    assert conn.execute("SELECT role FROM aggjobs.api_tokens").fetchall() == [("viewer",)]
    assert conn.execute("SELECT actor, action, target, outcome FROM aggjobs.audit_log"
                        " ORDER BY id").fetchall() == [
        ("a", "token.create", "ops", "created"),
        ("mallory", "token.create", "ops", "refused: name exists"),
        ("mallory", "token.revoke", "nobody", "refused: no active token of that name")]


# -- finding 4: the retention bypass belongs to delete_raw_before -----------------------------
@pytest.fixture
def platform_writer(db_url: str) -> Iterator[str]:
    """The URL of a login role that writes public.agent_runs, with docs/security.md's grant."""
    name = f"aggjobs_t_platform_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA public, aggjobs TO {}").format(role))
        admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.agent_runs"
                              " TO {}").format(role))
        admin.execute(sql.SQL("GRANT INSERT ON aggjobs.invalidation_log TO {}").format(role))
    yield as_user(db_url, name)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE usename = %s", (name,))
        admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
        admin.execute(sql.SQL("DROP ROLE {}").format(role))


def test_no_other_session_can_switch_tracking_off(conn, settings, platform_writer):
    materialize(conn, settings)
    ids = [r for (r,) in conn.execute("SELECT id FROM agent_runs ORDER BY id")]
    with psycopg.connect(platform_writer, autocommit=True) as writer:
        writer.execute("SET aggjobs.retention = 'on'")
        writer.execute("DELETE FROM agent_runs WHERE id = %s", (ids[0],))
        with writer.transaction():
            writer.execute("SET LOCAL aggjobs.retention = 'on'")
            writer.execute("DELETE FROM agent_runs WHERE id = %s", (ids[1],))
        # Nor can it claim to be retention's transaction.
        refused(writer, "INSERT INTO aggjobs.retention_transactions"
                        " VALUES (pg_current_xact_id())")
        refused(writer, "SELECT aggjobs.delete_raw_before('agent_runs', now(), 10)")
    assert count(conn, "aggjobs.invalidation_log") == 2  # both deletes logged
    p.refresh_all(conn, settings, HOUR + timedelta(minutes=5))
    assert_matches(conn, "execution_metrics", Grain.HOUR, HOUR)
    assert_matches(conn, "execution_metrics", Grain.DAY, HOUR)


def test_a_writer_cannot_shadow_the_trigger_functions_operators(conn, settings, db_url,
                                                              platform_writer):
    """A writer with a schema of its own put before pg_catalog, where `=` and `<>` on text
    are always false: the trigger function (which runs as the writer) still logs."""
    materialize(conn, settings)
    name = conninfo_to_dict(platform_writer)["user"]
    conn.execute(sql.SQL("CREATE SCHEMA evil AUTHORIZATION {}").format(sql.Identifier(name)))
    with psycopg.connect(platform_writer, autocommit=True) as writer:
        writer.execute("CREATE FUNCTION evil.never(text, text) RETURNS boolean"
                       " LANGUAGE sql IMMUTABLE AS 'SELECT false'")
        for op in ("=", "<>"):
            writer.execute(f"CREATE OPERATOR evil.{op} (LEFTARG = text, RIGHTARG = text,"
                           " FUNCTION = evil.never)")
        writer.execute("SET search_path = evil, pg_catalog, public")
        late = conn.execute("SELECT min(id) FROM agent_runs").fetchone()[0]
        writer.execute("UPDATE agent_runs SET workspace_id = 7 WHERE id = %s", (late,))
        writer.execute("DELETE FROM agent_runs WHERE id = %s", (late,))
    assert count(conn, "aggjobs.invalidation_log") == 3  # old and new group, then the delete
    conn.execute("DROP SCHEMA evil CASCADE")


def test_retention_deletes_stay_untracked_and_leave_no_marker(conn, worker, settings):
    materialize(conn, settings)
    n = worker.execute("SELECT aggjobs.delete_raw_before('agent_runs', %s, 100)",
                       (HOUR - 2 * H,)).fetchone()[0]
    assert n == 2
    assert count(conn, "aggjobs.invalidation_log") == 0
    assert count(conn, "aggjobs.retention_transactions") == 0
    refused(worker, "INSERT INTO aggjobs.retention_transactions VALUES (pg_current_xact_id())")
    # In the same transaction, after the call, a delete is tracked again.
    with conn.transaction():
        conn.execute("SELECT aggjobs.delete_raw_before('agent_runs', %s, 100)", (HOUR - H,))
        conn.execute("DELETE FROM agent_runs WHERE started_at >= %s", (HOUR - H,))
    assert count(conn, "aggjobs.invalidation_log") == 2  # workspaces 1 and 2, hour -1


# -- finding 9: foreign holders of the advisory locks are named -------------------------------
LOCKS = {"job": "SELECT pg_advisory_lock(hashtext('aggjobs.job'), hashtext('hourly_rollup'))",
         "rollup": "SELECT pg_advisory_lock(hashtext('aggjobs.rollup'),"
                   " hashtext('execution_metrics'))"}


def test_a_foreign_lock_holder_is_named_and_alerted_on(conn, settings, login_role):
    squatter_url = login_role("aggjobs_reader")
    worker_url = login_role("aggjobs_worker")
    squatter = psycopg.connect(squatter_url, autocommit=True, application_name="squatter")
    try:
        pid = squatter.info.backend_pid
        user = squatter.info.user
        for stmt in LOCKS.values():
            squatter.execute(stmt)
        with psycopg.connect(worker_url, autocommit=True) as own:  # aggjobs' own: not named
            own.execute("SELECT pg_advisory_lock(hashtext('aggjobs.rollup'),"
                        " hashtext('user_activity'))")

            status = overview(conn, settings).as_dict()
            named = [m for m in status["problems"] if f"pid {pid}" in m]
            assert len(named) == 2 and not status["healthy"], status["problems"]
            assert all(user in m and "squatter" in m and
                       f"SELECT pg_terminate_backend({pid})" in m for m in named)
            assert any("job hourly_rollup" in m for m in named)
            assert any("rollup execution_metrics" in m for m in named)
            assert not [m for m in status["problems"] if own.info.user in m]

        # The run it stalls is skipped naming it, and alerts on it at once.
        result = run_job(RunRequest(job="hourly_rollup", as_of=NOW), settings)
        assert result.status == "skipped"
        assert f"pid {pid}" in result.error and user in result.error, result.error
        assert conn.execute("SELECT count(*) FROM aggjobs.alerts WHERE resolved_at IS NULL"
                            " AND key LIKE %s", (f"foreign_lock:{pid}:%",)).fetchone()[0] == 2
        # A refresh waits, then gives up naming it.
        with pytest.raises(LockBusy, match=f"pid {pid}.*pg_terminate_backend"):
            refresh(conn, get_rollup("execution_metrics"), as_of=NOW, settings=settings,
                    lock_wait_s=0.3)
    finally:
        squatter.close()
    for _ in range(100):  # the backend ends a moment after the client closes
        if not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()[0]:
            break
        time.sleep(0.05)
    events = alerts.evaluate(conn, settings)
    assert sorted(e["event"] for e in events if e["incident"].startswith("foreign_lock")) == \
        ["resolved", "resolved"]
    assert run_job(RunRequest(job="hourly_rollup", as_of=NOW), settings).status == "succeeded"
