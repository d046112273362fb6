"""The liveness rules on a real database (docs/jobs.md, "Liveness"): when a missing worker
or scheduler becomes a problem, the alerts a heartbeat checks, and the cleanup of old rows.
The real processes are in tests/celery/test_liveness.py."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from aggjobs.db import heartbeats
from aggjobs.db.heartbeats import Process
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.monitor import alerts, overview
from aggjobs.monitor.liveness import heartbeat_interval
from aggjobs.settings import Settings

WORKER = Process("worker", "w@host", queues=["aggjobs"], host="host", pid=10)
BEAT = Process("scheduler", "beat.11@host", host="host", pid=11)


@pytest.fixture
def live(settings: Settings) -> Settings:
    return settings.model_copy(update={"liveness_seconds": 60})


def age(conn: psycopg.Connection, process: Process, seconds: float, column: str = "seen_at"
        ) -> None:
    """As if `process`'s last heartbeat (or its stop) was `seconds` ago."""
    conn.execute(f"UPDATE aggjobs.heartbeats SET {column} = now() - make_interval(secs => %s)"
                 " WHERE name = %s", (seconds, process.name))


def incidents(conn: psycopg.Connection, settings: Settings) -> list[str]:
    return [k for k in overview(conn, settings).incidents if k.startswith("no_")]


def test_the_heartbeat_interval_follows_the_setting(settings: Settings) -> None:
    for limit, interval in ((120, 15), (0, 15), (20, 5), (4, 1), (0.5, 0.25)):
        assert heartbeat_interval(settings.model_copy(
            update={"liveness_seconds": limit})) == interval


def test_a_missing_process_is_a_problem_only_past_the_setting(conn, live) -> None:
    assert incidents(conn, live) == ["no_worker", "no_scheduler"]  # never seen: at once
    heartbeats.beat(conn, WORKER, first=True)
    heartbeats.beat(conn, BEAT, first=True)
    assert incidents(conn, live) == []
    age(conn, WORKER, 50)  # silent, gone, but for less than the setting
    state = overview(conn, live).as_dict()
    assert [r["state"] for r in state["liveness"]["workers"]] == ["silent"]
    assert incidents(conn, live) == []
    age(conn, WORKER, 70)
    [problem] = [p for p in overview(conn, live).problems if p.startswith("no worker")]
    assert "none alive for 70 s (over AGGJOBS_LIVENESS_SECONDS=60)" in problem
    assert "the last, w@host (pid 10), last heartbeat at" in problem
    heartbeats.beat(conn, WORKER)  # back
    assert incidents(conn, live) == []

    heartbeats.stopped(conn, BEAT)  # a clean stop: down at once, a problem after the setting
    assert overview(conn, live).liveness["schedulers"][0]["state"] == "stopped"
    assert incidents(conn, live) == []
    age(conn, BEAT, 61, "stopped_at")
    [problem] = [p for p in overview(conn, live).problems if p.startswith("no scheduler")]
    assert "stopped at" in problem
    assert incidents(conn, live.model_copy(update={"liveness_seconds": 0})) == []  # off


def test_a_restart_keeps_the_row_and_starts_it_anew(conn) -> None:
    heartbeats.beat(conn, WORKER, first=True)
    age(conn, WORKER, 3600, "started_at")
    heartbeats.beat(conn, WORKER)
    [row] = heartbeats.read(conn)
    assert (row["checked_at"] - row["started_at"]).total_seconds() > 3000
    heartbeats.stopped(conn, WORKER)
    heartbeats.beat(conn, Process("worker", "w@host", host="host", pid=99), first=True)
    [row] = heartbeats.read(conn)
    assert row["pid"] == 99 and row["stopped_at"] is None
    assert (row["checked_at"] - row["started_at"]).total_seconds() < 60
    # the old process's late stop does not stop its successor
    heartbeats.stopped(conn, WORKER)
    assert heartbeats.read(conn)[0]["stopped_at"] is None


def test_a_heartbeat_checks_the_liveness_alerts_alone_once_each(conn, live) -> None:
    conn.execute("INSERT INTO aggjobs.alerts (key, message) VALUES ('failing:x', 'x')")
    heartbeats.beat(conn, WORKER, first=True)
    events = alerts.evaluate(conn, live, liveness_only=True)
    assert [(e["event"], e["incident"]) for e in events] == [("fired", "no_scheduler")]
    assert alerts.evaluate(conn, live, liveness_only=True) == []  # announced once
    heartbeats.beat(conn, BEAT, first=True)
    events = alerts.evaluate(conn, live, liveness_only=True)
    assert [(e["event"], e["incident"]) for e in events] == [("resolved", "no_scheduler")]
    # the other incidents are left to the full check after each run
    assert conn.execute("SELECT resolved_at FROM aggjobs.alerts WHERE key = 'failing:x'"
                        ).fetchone() == (None,)


def test_cleanup_forgets_processes_gone_for_a_day(conn, settings) -> None:
    keep = settings.model_copy(update={"retention_days": {
        "raw": 0, "hourly": 0, "daily": 0, "weekly": 0, "job_runs": 0}})
    old_beat = Process("scheduler", "beat.1@old", host="old", pid=1)
    for process in (WORKER, BEAT, old_beat):
        heartbeats.beat(conn, process, first=True)
    age(conn, old_beat, 86400 + 60)
    heartbeats.stopped(conn, BEAT)
    age(conn, BEAT, 86400 - 600, "stopped_at")
    result = run_job(RunRequest(job="cleanup_old_data", as_of=datetime.now(UTC)), keep)
    assert result.status == "succeeded", result.error
    step = next(s for s in result.steps if s.name == "cleanup.heartbeats")
    assert step.rows == 1
    assert sorted(r["name"] for r in heartbeats.read(conn)) == ["beat.11@host", "w@host"]
    audited = conn.execute("SELECT target, outcome FROM aggjobs.audit_log"
                           " WHERE action = 'retention_delete'").fetchall()
    assert audited == [('"aggjobs"."heartbeats"', "1 rows deleted")], audited
