"""Backfills over HTTP are queued for a worker: a real `aggjobs serve` and a real Celery
worker on a real broker (Redis).

Ten identical concurrent `POST /api/backfills`: one is queued (202), nine are 409 naming it
(issue 21 finding 5: one or two were a 500, a UniqueViolation of
backfills_one_open_per_range); the worker then runs it to success, audited (queued, started,
succeeded; each refusal too). And a running backfill cancelled from the API stops before its
next chunk, `cancelled`, its outcome audited: a worker's, and a terminal's `aggjobs backfill`.
A worker's pool child killed mid-backfill: the task is redelivered and resumes the row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from aggjobs.api import tokens
from aggjobs.catalog import get_rollup
from aggjobs.engine import state
from aggjobs.settings import Settings
from tests import platform as p
from tests.api.serve import serving
from tests.celery.conftest import Workers, broker_url, poll, workers  # noqa: F401  (fixtures)

T0 = datetime(2026, 11, 2, tzinfo=UTC)
N = 10
BODY = {"rollups": ["user_activity"], "from": T0.isoformat(),
        "to": (T0 + timedelta(days=1)).isoformat()}


def prepared(conn: psycopg.Connection, settings: Settings) -> dict[str, str]:
    """Two days of source rows, rolled up; an operator's token as a header."""
    p.seed_sources(conn, T0, rows=2 * 24 * 6, every=timedelta(minutes=10))
    p.refresh_all(conn, settings, T0 + timedelta(days=2))
    secret = tokens.create(conn, "op", "operator", actor="tests")[0]
    return {"Authorization": f"Bearer {secret}"}


def status_of(conn: psycopg.Connection, backfill_id: int) -> str | None:
    row = conn.execute("SELECT status FROM aggjobs.backfills WHERE id = %s",
                       (backfill_id,)).fetchone()
    return row[0] if row else None


def test_ten_identical_concurrent_backfills_one_queued_nine_409_then_a_worker_runs_it(
        conn, db_url, settings: Settings, workers: Workers) -> None:  # noqa: F811
    headers = prepared(conn, settings)
    env = workers.env(AGGJOBS_API_RATE_LIMIT="off")
    with serving(env) as served, ThreadPoolExecutor(N) as pool:
        def post() -> httpx.Response:
            return httpx.post(f"{served.base}/api/backfills", json=BODY, timeout=60,
                              headers=headers)

        answers = list(pool.map(lambda _: post(), range(N)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [202] + [409] * (N - 1), [(a.status_code, a.text) for a in answers]
        [winner] = [a for a in answers if a.status_code == 202]
        [queued] = winner.json()["backfills"]
        backfill_id = queued["id"]
        assert status_of(conn, backfill_id) == "queued"  # no worker yet: the request is done
        workers.start()
        poll(lambda: status_of(conn, backfill_id) == "succeeded", 90, "the worker's backfill")
        shown = httpx.get(f"{served.base}{queued['url']}", headers=headers).json()
    for answer in answers:
        if answer.status_code == 409:
            detail = answer.json()["detail"]
            assert detail.startswith(f"backfill {backfill_id} of user_activity over [")
            assert "is queued already" in detail and "\n" not in detail
    assert (shown["status"], shown["progress"], shown["requested_by"]) == (
        "succeeded", 1.0, "api:op")
    assert conn.execute("SELECT id, status FROM aggjobs.backfills").fetchall() == [
        (backfill_id, "succeeded")]
    rows = conn.execute("SELECT id, outcome, params->>'started_id' FROM aggjobs.audit_log"
                        " WHERE action = 'backfill' ORDER BY id").fetchall()
    outcomes = sorted(outcome.split(":")[0] for _, outcome, _ in rows)
    assert outcomes == ["queued"] + ["refused"] * (N - 1) + ["started", "succeeded"]
    [start] = [row_id for row_id, outcome, _ in rows if outcome == "started"]
    assert [ref for _, outcome, ref in rows if outcome == "succeeded"] == [str(start)]
    assert "Traceback" not in served.output and "UniqueViolation" not in served.output


def test_a_running_backfill_cancelled_over_http_stops_before_its_next_chunk(
        conn, db_url, settings: Settings, workers: Workers) -> None:  # noqa: F811
    headers = prepared(conn, settings)
    lock = psycopg.connect(db_url, autocommit=True)
    with serving(workers.env()) as served:
        # The rollup's lock held here: the worker's backfill waits at its first chunk.
        with state.rollup_lock(lock, get_rollup("user_activity"), wait_s=10):
            got = httpx.post(f"{served.base}/api/backfills", json=BODY, headers=headers)
            assert got.status_code == 202, got.text
            backfill_id = got.json()["backfills"][0]["id"]
            workers.start()
            poll(lambda: status_of(conn, backfill_id) == "running", 60, "the worker's claim")
            cancel = httpx.post(f"{served.base}/api/backfills/{backfill_id}/cancel",
                                headers=headers)
            assert cancel.status_code == 200, cancel.text
            assert cancel.json() == {"id": backfill_id, "rollup": "user_activity",
                                     "cancelled": True, "status": "running", "was": "running"}
        poll(lambda: status_of(conn, backfill_id) == "cancelled", 60, "the cancellation")
        again = httpx.post(f"{served.base}/api/backfills/{backfill_id}/cancel", headers=headers)
        assert again.status_code == 409 and "is cancelled" in again.json()["detail"]
    lock.close()
    grain, done_until, error = conn.execute(
        "SELECT grain, done_until, error FROM aggjobs.backfills WHERE id = %s",
        (backfill_id,)).fetchone()
    assert error == f"backfill {backfill_id} of user_activity cancelled by api:op"
    # its first chunk (AGGJOBS_HOURS_PER_TRANSACTION hours) done, and nothing after it
    assert grain == "hour" and T0 < done_until < T0 + timedelta(days=1)
    outcomes = [o for (o,) in conn.execute(
        "SELECT outcome FROM aggjobs.audit_log WHERE action LIKE 'backfill%' ORDER BY id")]
    assert outcomes == ["queued", "started", "requested", f"cancelled: {error}"]


def test_a_terminals_backfill_cancelled_from_the_api_stops_with_one_line(
        conn, db_url, settings: Settings, workers: Workers) -> None:  # noqa: F811
    """`aggjobs backfill` reads the same flag: cancelled from the dashboard, it stops before
    its next chunk and exits 2 naming who cancelled it."""
    headers = prepared(conn, settings)
    lock = psycopg.connect(db_url, autocommit=True)
    env = workers.env()
    with serving(env) as served:
        with state.rollup_lock(lock, get_rollup("user_activity"), wait_s=10):
            cli = subprocess.Popen(
                [sys.executable, "-m", "aggjobs", "backfill", "user_activity", "--from",
                 BODY["from"], "--to", BODY["to"]], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            backfill_id = poll(lambda: conn.execute(
                "SELECT id FROM aggjobs.backfills WHERE status = 'running'").fetchone(),
                60, "the terminal's backfill")[0]
            cancel = httpx.post(f"{served.base}/api/backfills/{backfill_id}/cancel",
                                headers=headers)
            assert cancel.status_code == 200 and cancel.json()["status"] == "running"
        out, err = cli.communicate(timeout=60)
    lock.close()
    assert cli.returncode == 2, (out, err)
    assert err.strip() == f"error: backfill {backfill_id} of user_activity cancelled by api:op"
    assert status_of(conn, backfill_id) == "cancelled"


def pool_children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a prefork worker's pool)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_backfill_whose_worker_dies_is_redelivered_and_resumed(
        conn, db_url, settings: Settings, workers: Workers) -> None:  # noqa: F811
    headers = prepared(conn, settings)
    lock = psycopg.connect(db_url, autocommit=True)
    with serving(workers.env()) as served:
        with state.rollup_lock(lock, get_rollup("user_activity"), wait_s=10):
            got = httpx.post(f"{served.base}/api/backfills", json=BODY, headers=headers)
            backfill_id = got.json()["backfills"][0]["id"]
            worker = workers.start()
            poll(lambda: status_of(conn, backfill_id) == "running", 60, "the worker's claim")
            [child] = pool_children(worker.pid)
            os.kill(child, signal.SIGKILL)
            poll(lambda: "WorkerLostError" in worker.text(), 30, "the lost child noticed")
            # the message comes back (acks_late, reject_on_worker_lost) to a new child,
            # which finds the dead one's session gone and claims the row again
            poll(lambda: conn.execute(
                "SELECT count(*) FROM aggjobs.audit_log WHERE action = 'backfill'"
                " AND outcome = 'started'").fetchone()[0] == 2, 60, "the second start")
        poll(lambda: status_of(conn, backfill_id) == "succeeded", 90, "the resumed backfill")
    lock.close()
    outcomes = [o.split(":")[0] for (o,) in conn.execute(
        "SELECT outcome FROM aggjobs.audit_log WHERE action = 'backfill' ORDER BY id")]
    assert outcomes == ["queued", "started", "abandoned", "started", "succeeded"]
    assert worker.alive()
