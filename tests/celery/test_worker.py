"""Jobs sent to real Celery workers (subprocesses) through a real broker."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain
from tests import platform as p
from tests.celery.conftest import job_runs, poll
from tests.reference import assert_matches

pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, in the past
HOURS = 12
AS_OF = T0 + timedelta(hours=HOURS, minutes=5)
BELOW = T0 + timedelta(hours=HOURS)


def seed(conn: psycopg.Connection) -> None:
    p.seed_sources(conn, T0, rows=HOURS * 6 + 3, every=timedelta(minutes=10))


def finished(conn: psycopg.Connection, job: str, n: int = 1):
    def check():
        rows = [r for r in job_runs(conn, job) if r["status"] != "running"]
        return rows if len(rows) >= n else None
    return check


def test_a_task_sent_to_a_worker_runs_the_job(workers, celery_app, conn) -> None:
    seed(conn)
    worker = workers.start()
    sent = celery_app.send_task("hourly_rollup", kwargs={"as_of": AS_OF.isoformat()})
    rows = poll(finished(conn, "hourly_rollup"), 60, "the hourly_rollup run to finish")
    assert len(rows) == 1, rows
    run = rows[0]
    assert run["status"] == "succeeded", (run["error"], worker.text()[-3000:])
    assert run["task_id"] == sent.id
    assert run["trigger"] == "manual" and run["slot"] is None and run["attempt"] == 1
    assert run["as_of"] == AS_OF
    assert run["finished_at"] is not None and run["error"] is None
    assert run["who"] == f"{worker.name}@{run['host']}", run["who"]
    names = [s["name"] for s in run["steps"]]
    assert names == [f"{r.name}.hour" for r in BUILTIN_ROLLUPS] + [
        "view.caches", "view.workspace_overview", "view.platform_daily_overview"]
    assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
    for rollup in BUILTIN_ROLLUPS:
        assert assert_matches(conn, rollup.name, Grain.HOUR, BELOW) > 0
    assert p.watermarks(conn)[("execution_metrics", "hour")] == BELOW


def test_scheduled_duplicates_sent_to_a_worker_run_once(workers, celery_app, conn) -> None:
    """Two copies of a scheduled task (two beats) for one slot: one run, one skipped."""
    seed(conn)
    workers.start()
    for _ in range(2):
        celery_app.send_task("refresh_materialized_views", kwargs={"trigger": "schedule"})
    rows = poll(finished(conn, "refresh_materialized_views", 2), 60, "both copies to finish")
    if rows[0]["slot"] != rows[1]["slot"]:  # sent across a 15-minute boundary: two slots
        pytest.skip("the two copies straddled a slot boundary")
    assert sorted(r["status"] for r in rows) == ["skipped", "succeeded"], rows
    skipped = next(r for r in rows if r["status"] == "skipped")
    assert "already ran" in skipped["error"], skipped["error"]


def step_waiting(conn: psycopg.Connection, job: str = "hourly_rollup") -> bool:
    """A session of the job (the run's or a step's) waits on a lock."""
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND application_name LIKE %s", (f"aggjobs:{job}%",)).fetchone()[0] > 0


def rollup_state(conn: psycopg.Connection) -> tuple:
    return (conn.execute("SELECT count(*) FROM analytics.execution_metrics_hourly").fetchone()[0],
            p.watermarks(conn).get(("execution_metrics", "hour")))


def test_pool_child_killed_mid_job_loses_nothing(workers, celery_app, conn, db_url) -> None:
    """SIGKILL of the process running the job, while it waits on a rollup table: the task is
    rejected back to the queue (acks_late + reject_on_worker_lost) and redelivered; the dead
    run ends 'abandoned', a later run does the work, and no partial result is ever visible."""
    seed(conn)
    before = rollup_state(conn)
    worker = workers.start(AGGJOBS_LOCK_TIMEOUT_MS="120000", AGGJOBS_RETRY_BASE_S="0.2")
    blocker = psycopg.connect(db_url, application_name="aggjobs:tests-blocker")
    try:
        blocker.execute("LOCK TABLE analytics.execution_metrics_hourly IN ACCESS EXCLUSIVE MODE")
        sent = celery_app.send_task("hourly_rollup", kwargs={"as_of": AS_OF.isoformat()})
        run = poll(lambda: next((r for r in job_runs(conn, "hourly_rollup")
                                 if r["status"] == "running"), None),
                   60, "the run to start")
        assert run["task_id"] == sent.id
        # (the rollups run on sessions of their own: execution_metrics' is the one blocked)
        poll(lambda: step_waiting(conn), 30, "the run to block")
        assert run["pid"] != worker.pid, "the job runs in a pool child, not the main process"
        os.kill(run["pid"], signal.SIGKILL)
        # the worker sees its child die and puts the message back; a new child takes it
        poll(lambda: "WorkerLostError" in worker.text(), 30,
             "the worker to notice the lost child")
        # (read through the blocker: anyone else would queue behind its lock)
        assert rollup_state(blocker) == before
    finally:
        blocker.rollback()
        blocker.close()

    def done():
        rows = job_runs(conn, "hourly_rollup")
        return rows if any(r["status"] == "succeeded" for r in rows) and \
            not any(r["status"] == "running" for r in rows) else None

    rows = poll(done, 90, "the redelivered task to succeed")
    history = [(r["status"], r["attempt"], r["task_id"]) for r in rows]
    # the killed run, then the redelivered message's run: same task, second attempt
    assert history == [("abandoned", 1, sent.id), ("succeeded", 2, sent.id)], (
        history, worker.text()[-3000:])
    killed = rows[0]
    assert killed["id"] == run["id"] and "died" in killed["error"]
    for rollup in BUILTIN_ROLLUPS:
        assert assert_matches(conn, rollup.name, Grain.HOUR, BELOW) > 0
    assert worker.alive()
