"""A refresh that dies mid-transaction leaves consistent tables; the next refresh converges.

The refresh commits one chunk of buckets per transaction together with the watermark, so
whatever happens to the process, the committed state is "every bucket below the watermark
is right, nothing at or after it exists", and a later refresh continues from there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from aggjobs.catalog import Grain, get_rollup
from aggjobs.db.connect import connect, translate_errors
from aggjobs.engine.refresh import refresh
from aggjobs.errors import DatabaseUnavailable
from aggjobs.settings import Settings
from tests import platform as p
from tests.reference import assert_matches

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 9, tzinfo=UTC)  # a Monday, in the past (the CLI refuses futures)
HOURS = 48
END = START + timedelta(hours=HOURS)
ROLLUP = "execution_metrics"
AGGJOBS = Path(sys.executable).parent / "aggjobs"


def load_runs(conn: psycopg.Connection, n: int) -> None:
    """n agent_runs spread evenly over [START, END) in 3 workspaces, set-based."""
    conn.execute(
        """
        INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,
                                runtime_seconds, credits_consumed)
        SELECT g, 1 + g %% 3, 1 + g %% 97, 1 + g %% 5, s.status,
               %(start)s::timestamptz + (g - 1) * (%(span)s::interval / %(n)s),
               CASE WHEN s.status = 'running' THEN NULL
                    ELSE 0.5 + (g::bigint * 7919 %% 10007) / 100.0 END,
               CASE WHEN s.status = 'running' THEN NULL ELSE (g %% 1000) / 100.0 END
        FROM generate_series(1, %(n)s) AS g,
             LATERAL (SELECT (ARRAY['completed', 'failed', 'running', 'cancelled'])
                             [1 + (g / 3) %% 4] AS status) AS s
        """,
        {"start": START, "span": timedelta(hours=HOURS), "n": n},
    )
    conn.execute("ANALYZE agent_runs")
    assert conn.execute("SELECT count(*), min(started_at) >= %s, max(started_at) < %s"
                        " FROM agent_runs", (START, END)).fetchone() == (n, True, True)


def hour_mark(conn: psycopg.Connection) -> datetime | None:
    return p.watermarks(conn)[(ROLLUP, "hour")]


def start_cli_refresh(db_url: str) -> subprocess.Popen:
    env = dict(os.environ, AGGJOBS_DATABASE_URL=db_url, AGGJOBS_HOURS_PER_TRANSACTION="1")
    return subprocess.Popen(
        [str(AGGJOBS), "refresh", ROLLUP, "--as-of", END.isoformat()],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_gone(conn: psycopg.Connection, pid: int, timeout: float = 60.0) -> None:
    """Until the backend `pid` has exited (its transaction rolled back, its locks freed)."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
        assert time.monotonic() < deadline, f"backend {pid} still alive after {timeout} s"
        time.sleep(0.05)


def assert_consistent(conn: psycopg.Connection) -> dict:
    """Committed state only: rows below each watermark are right, none at or after it."""
    marks = p.watermarks(conn)
    rollup = get_rollup(ROLLUP)
    for grain in rollup.grains:
        wm = marks[(ROLLUP, grain.value)]
        assert_matches(conn, ROLLUP, grain, wm)
        table = f"analytics.{rollup.table(grain)}"
        if wm is None:
            n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        else:
            bound = wm if grain is Grain.HOUR else wm.date()
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE {grain.column} >= %s",
                             (bound,)).fetchone()[0]
        assert n == 0, f"{table}: {n} rows at or after the watermark {wm} (partial result)"
    return marks


def assert_converges(conn: psycopg.Connection, settings: Settings, mark_before: datetime
                     ) -> None:
    """An in-process refresh continues from the committed watermark and reaches END."""
    # The killed client's backend may still hold the rollup's advisory lock a moment.
    reports = p.refresh_all(conn, settings, END, lock_wait_s=60)
    hour = reports[ROLLUP].grains[0]
    assert hour.watermark_before == mark_before  # continued, not started over
    assert hour.new_buckets == (END - mark_before) // timedelta(hours=1)
    marks = p.watermarks(conn)
    assert marks[(ROLLUP, "hour")] == END
    assert marks[(ROLLUP, "day")] == END  # END is a UTC midnight
    assert marks[(ROLLUP, "week")] == START  # the week of START is not over yet
    assert assert_matches(conn, ROLLUP, Grain.HOUR, END) == 3 * HOURS
    assert assert_matches(conn, ROLLUP, Grain.DAY, END) == 3 * 2
    assert conn.execute("SELECT count(*) FROM aggjobs.pending_groups").fetchone()[0] == 0


def test_sigkill_mid_transaction_leaves_consistent_tables(conn, db_url, settings) -> None:
    load_runs(conn, 300_000)
    proc = start_cli_refresh(db_url)
    caught = None
    try:
        deadline = time.monotonic() + 60
        while caught is None and time.monotonic() < deadline:
            row = conn.execute(
                """
                SELECT a.pid, a.state, a.query,
                       (SELECT watermark FROM aggjobs.watermarks
                        WHERE rollup = %s AND grain = 'hour')
                FROM pg_stat_activity AS a
                WHERE a.datname = current_database() AND a.application_name = 'aggjobs:refresh'
                  AND a.state IN ('active', 'idle in transaction') AND a.xact_start IS NOT NULL
                """,
                (ROLLUP,),
            ).fetchone()
            # Only once a few chunks committed and before the hours are all done: a kill in
            # the middle of materializing, with progress to keep.
            if row and row[3] is not None and START + timedelta(hours=3) <= row[3] \
                    <= END - timedelta(hours=3):
                os.kill(proc.pid, signal.SIGKILL)
                caught = row
            elif proc.poll() is not None:
                break
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert caught is not None, (
        f"never saw the refresh inside a transaction (exit {proc.returncode}): {err[-500:]}"
    )
    assert proc.returncode == -signal.SIGKILL
    pid, state, query, _ = caught
    wait_gone(conn, pid)  # its open transaction is rolled back when the backend ends

    marks = assert_consistent(conn)
    wm = marks[(ROLLUP, "hour")]
    assert START + timedelta(hours=3) <= wm < END, (wm, state, query)
    assert marks[(ROLLUP, "day")] is None  # the day waits for all of its hours
    assert_converges(conn, settings, wm)


def test_sigkill_with_uncommitted_chunk_blocked_before_commit(conn, db_url, settings) -> None:
    """Deterministic variant: the chunk has written its rows and waits to move the watermark
    (we hold that row) when the client dies; none of its rows may survive."""
    load_runs(conn, 150_000)
    proc = start_cli_refresh(db_url)
    gate = psycopg.connect(db_url, application_name="aggjobs:tests-gate")
    try:
        deadline = time.monotonic() + 60
        while (wm := hour_mark(conn)) is None or wm < START + timedelta(hours=3):
            assert proc.poll() is None, f"refresh ended early: {proc.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        locked = gate.execute(
            "SELECT watermark FROM aggjobs.watermarks WHERE rollup = %s AND grain = 'hour'"
            " FOR UPDATE", (ROLLUP,)
        ).fetchone()[0]
        assert START + timedelta(hours=3) <= locked < END
        while True:  # the next chunk: recomputed, now waiting on the watermark row
            row = conn.execute(
                """
                SELECT pid, backend_xid IS NOT NULL FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = 'aggjobs:refresh'
                  AND wait_event_type = 'Lock' AND query LIKE 'UPDATE aggjobs.watermarks%'
                """
            ).fetchone()
            if row:
                break
            assert proc.poll() is None, f"refresh ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the refresh never blocked on the watermark"
            time.sleep(0.005)
        pid, has_writes = row
        assert has_writes  # the chunk's DELETE/INSERT are in its open transaction
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        gate.rollback()  # lets the orphaned backend run on, find its client gone, and abort
        gate.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wait_gone(conn, pid)

    marks = assert_consistent(conn)
    assert marks[(ROLLUP, "hour")] == locked
    assert_converges(conn, settings, locked)


def test_terminated_connection_raises_clearly_and_next_refresh_converges(conn, db_url,
                                                                         settings) -> None:
    load_runs(conn, 150_000)
    small = Settings(database_url=db_url, hours_per_transaction=1)
    rconn = connect("refresh", settings=small)
    pid = rconn.info.backend_pid
    failures: list[BaseException] = []
    terminated = threading.Event()

    def terminate_mid_chunk() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as watch, \
                    psycopg.connect(db_url) as gate:
                deadline = time.monotonic() + 60
                while (wm := hour_mark(watch)) is None or wm < START + timedelta(hours=3):
                    assert time.monotonic() < deadline, "the refresh made no progress"
                    time.sleep(0.005)
                gate.execute("SELECT 1 FROM aggjobs.watermarks WHERE rollup = %s"
                             " AND grain = 'hour' FOR UPDATE", (ROLLUP,))
                while not watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"
                    " AND backend_xid IS NOT NULL", (pid,)
                ).fetchone():
                    assert time.monotonic() < deadline, "the refresh never blocked"
                    time.sleep(0.005)
                assert watch.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
                terminated.set()
                wait_gone(watch, pid)
                gate.rollback()
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    killer = threading.Thread(target=terminate_mid_chunk, daemon=True)
    killer.start()
    try:
        with pytest.raises(DatabaseUnavailable) as info, translate_errors():
            refresh(rconn, get_rollup(ROLLUP), as_of=END, settings=small)
    finally:
        killer.join(60)
        rconn.close()
    assert not failures, failures
    assert terminated.is_set()
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    message = str(info.value)
    assert "\n" not in message and "terminat" in message, message

    marks = assert_consistent(conn)
    wm = marks[(ROLLUP, "hour")]
    assert START + timedelta(hours=3) <= wm < END
    assert_converges(conn, settings, wm)
