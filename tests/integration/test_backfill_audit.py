"""A backfill's audit rows survive its process (operations.py, issue 21 finding 10): a row
when it starts, in its own transaction; one when it ends; `abandoned` for one whose process
was killed, written by the next job run (or backfill) that sees its session gone.

Real processes: `aggjobs backfill` killed with SIGKILL, or its session terminated, while its
first chunk waits, inside its transaction, on a row lock this test holds."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from aggjobs.catalog import get_rollup
from aggjobs.engine import state
from aggjobs.engine.backfill import BackfillBusy, backfill
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.settings import Settings
from tests import platform as p

AGGJOBS = Path(sys.executable).parent / "aggjobs"
T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, in the past
LO, HI = T0, T0 + timedelta(days=1)
ROLLUP = "user_activity"


@pytest.fixture
def refreshed(conn: psycopg.Connection, settings: Settings) -> psycopg.Connection:
    """Two days materialized: a backfill of the first one has chunks to recompute."""
    p.seed_sources(conn, T0, rows=2 * 24 * 6, every=timedelta(minutes=10))
    p.refresh_all(conn, settings, T0 + timedelta(days=2))
    return conn


def audit_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT id, actor, outcome, params, source FROM aggjobs.audit_log"
                        " WHERE action = 'backfill' ORDER BY id").fetchall()


def wait_for(check: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def cli_backfill(db_url: str) -> subprocess.Popen:
    env = dict(os.environ, AGGJOBS_DATABASE_URL=db_url, AGGJOBS_HOURS_PER_TRANSACTION="1")
    return subprocess.Popen([str(AGGJOBS), "backfill", ROLLUP, "--from", LO.isoformat(),
                             "--to", HI.isoformat()], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@contextmanager
def first_chunk_blocked(conn: psycopg.Connection, db_url: str
                        ) -> Iterator[tuple[subprocess.Popen, int, int]]:
    """A CLI backfill whose first chunk has recomputed its rows and waits, in its open
    transaction, for the backfills row this test locks: (process, start's audit id, its
    session). The lock is let go after the block, so that the backend goes on and ends."""
    gate = psycopg.connect(db_url)  # not autocommit: the row lock is held until rollback
    lock = psycopg.connect(db_url, autocommit=True)
    proc = None
    try:
        with state.rollup_lock(lock, get_rollup(ROLLUP), wait_s=10):  # no chunk yet
            proc = cli_backfill(db_url)
            started = wait_for(lambda: conn.execute(
                "SELECT a.id, (a.params->>'session_pid')::int, b.id FROM aggjobs.audit_log a"
                " JOIN aggjobs.backfills b ON b.backend_pid = (a.params->>'session_pid')::int"
                " WHERE a.action = 'backfill' AND a.outcome = 'started'"
                " ORDER BY a.id DESC").fetchone(), "the backfill to start")
            gate.execute("SELECT 1 FROM aggjobs.backfills WHERE id = %s FOR UPDATE",
                          (started[2],))
        wait_for(lambda: conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"
            " AND backend_xid IS NOT NULL", (started[1],)).fetchone(), "the chunk to block")
        yield proc, started[0], started[1]
    finally:
        gate.rollback()
        gate.close()
        lock.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_gone(conn: psycopg.Connection, pid: int) -> None:
    wait_for(lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                      (pid,)).fetchone(), f"backend {pid} to end")


def test_a_killed_backfill_leaves_its_start_and_the_next_job_run_marks_it_abandoned(
        refreshed, db_url, settings) -> None:
    conn = refreshed
    with first_chunk_blocked(conn, db_url) as (proc, started_id, pid):
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    wait_gone(conn, pid)
    [(row_id, actor, outcome, params, source)] = audit_rows(conn)  # the start, alone
    assert (row_id, actor, outcome) == (started_id, f"cli:{getpass.getuser()}@{socket.gethostname()}",
                                       "started")
    assert params["rollups"] == [ROLLUP] and params["session_pid"] == pid
    assert source.startswith("cli:")
    assert conn.execute("SELECT status, done_until FROM aggjobs.backfills").fetchall() == [
        ("running", LO)]  # its chunk was rolled back with its session

    assert run_job(RunRequest(job="refresh_materialized_views"), settings).status == (
        "succeeded")
    start, end = audit_rows(conn)
    assert start[0] == started_id
    assert end[1:3] == (start[1], ("abandoned: its session ended before it recorded an "
                                   "outcome (process killed or session terminated)"))
    assert end[3]["started_id"] == started_id and end[3]["noticed_by"].startswith("worker:")
    assert end[4] == start[4]
    [(status, error)] = conn.execute("SELECT status, error FROM aggjobs.backfills").fetchall()
    assert status == "failed" and error.startswith("abandoned")
    # Swept again: nothing more. Run again: the range resumes, with its own two rows.
    run_job(RunRequest(job="refresh_materialized_views"), settings)
    again = subprocess.run([str(AGGJOBS), "backfill", ROLLUP, "--from", LO.isoformat(),
                            "--to", HI.isoformat()], capture_output=True, text=True,
                           env=dict(os.environ, AGGJOBS_DATABASE_URL=db_url), timeout=120,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert "(resumed)" in again.stdout
    outcomes = [r[2].split(":")[0] for r in audit_rows(conn)]
    assert outcomes == ["started", "abandoned", "started", "succeeded"]


def test_a_backfill_whose_session_is_terminated_records_why_it_failed(
        refreshed, db_url, settings) -> None:
    """The process outlives its session, so it knows the outcome: it writes it through a
    new session (a kill, above, leaves that to the sweep)."""
    conn = refreshed
    with first_chunk_blocked(conn, db_url) as (proc, started_id, pid):
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: database error:") and "terminat" in line, line
    start, end = audit_rows(conn)
    assert (start[0], start[2]) == (started_id, "started")
    assert end[2].startswith("failed: ") and "terminat" in end[2], end[2]
    assert end[3]["started_id"] == started_id
    # The backfills row is left 'running' by its dead session: the sweep fails it, and
    # writes no second outcome for the start.
    run_job(RunRequest(job="refresh_materialized_views"), settings)
    assert len(audit_rows(conn)) == 2
    assert conn.execute("SELECT status FROM aggjobs.backfills").fetchone()[0] == "failed"


def test_a_backfill_running_in_a_live_session_is_busy_and_resumable_once_it_is_gone(
        refreshed, db_url, settings) -> None:
    """The engine's side of the 409: a running backfill of the same range in a live session
    is refused (not resumed beside it); once that session is gone it resumes."""
    conn, rollup = refreshed, get_rollup(ROLLUP)
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("INSERT INTO aggjobs.backfills (rollup, range_start, range_end, grain,"
                      " done_until, backend_pid) VALUES (%s, %s, %s, 'hour', %s,"
                      " pg_backend_pid())", (ROLLUP, LO, HI, LO + timedelta(hours=5)))
        with pytest.raises(BackfillBusy, match=r"backfill \d+ of user_activity over \["
                           r".* is running in another session"):
            backfill(conn, rollup, LO, HI, settings=settings)
        pid = other.info.backend_pid
    wait_gone(conn, pid)
    report = backfill(conn, rollup, LO, HI, settings=settings)
    assert report.resumed
    assert conn.execute("SELECT status, backend_pid FROM aggjobs.backfills").fetchall() == [
        ("succeeded", conn.info.backend_pid)]


def test_the_cli_refuses_a_range_another_session_is_backfilling(refreshed, db_url) -> None:
    conn = refreshed
    lock = psycopg.connect(db_url, autocommit=True)
    try:
        with state.rollup_lock(lock, get_rollup(ROLLUP), wait_s=10):  # the first one waits
            first = cli_backfill(db_url)
            wait_for(lambda: conn.execute("SELECT 1 FROM aggjobs.backfills").fetchone(),
                     "the first backfill to open")
            second = subprocess.run(first.args, capture_output=True, text=True, timeout=120,
                                    env=dict(os.environ, AGGJOBS_DATABASE_URL=db_url),
                                    check=False)
        _, err = first.communicate(timeout=120)
    finally:
        lock.close()
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert line.startswith("error: backfill ") and "is running in another session" in line
    assert first.returncode == 0, err
    rows = [(r[2].split(":")[0], r[3].get("started_id")) for r in audit_rows(conn)]
    ids = [r[0] for r in audit_rows(conn)]
    assert rows == [("started", None), ("started", None), ("refused", ids[1]),
                    ("succeeded", ids[0])]
