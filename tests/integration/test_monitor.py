"""`aggjobs status` and `aggjobs runs` over real run history: what ran, what failed, why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.monitor import next_run, overview, run_history
from aggjobs.settings import Settings
from tests import platform as p

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
H = timedelta(hours=1)
AGGJOBS = str(Path(sys.executable).with_name("aggjobs"))


def aggjobs(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url, "COLUMNS": "120"}
    return subprocess.run([AGGJOBS, *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def fresh(conn: psycopg.Connection, settings: Settings) -> Settings:
    """Runs in the three hours before now, rolled up: every table within its target."""
    for h in range(1, 4):
        for ws in (1, 2):
            p.run(conn, ws=ws, at=NOW - h * H, runtime=2.0)
    return settings.model_copy(update={"retry_attempts": 1, "max_buckets_per_refresh": 24 * 9})


def hourly(settings: Settings) -> str:
    return run_job(RunRequest(job="hourly_rollup", as_of=NOW), settings).status


def poison(conn: psycopg.Connection, on: bool) -> None:
    """Make the execution_metrics hour step fail for good (a stand-in for bad data)."""
    if on:
        conn.execute("ALTER TABLE analytics.execution_metrics_hourly"
                     " ADD CONSTRAINT poison CHECK (total_executions < 0)")
    else:
        conn.execute("ALTER TABLE analytics.execution_metrics_hourly DROP CONSTRAINT poison")


def job_state(state: dict, job: str) -> dict:
    return next(j for j in state["jobs"] if j["job"] == job)


def test_failures_in_a_row_make_status_unhealthy_until_a_success(conn, fresh, db_url):
    assert hourly(fresh) == "succeeded"
    assert overview(conn, fresh).healthy

    conn.execute("DELETE FROM analytics.execution_metrics_hourly")  # to be rebuilt
    conn.execute("UPDATE aggjobs.watermarks SET watermark = NULL WHERE grain = 'hour'")
    poison(conn, True)
    assert hourly(fresh) == "failed"
    state = overview(conn, fresh).as_dict()
    assert job_state(state, "hourly_rollup")["consecutive_failures"] == 1
    assert state["healthy"]  # one failure is not yet an incident (AGGJOBS_ALERT_FAILURES=2)

    with psycopg.connect(db_url, autocommit=True) as other:  # a run in progress elsewhere:
        other.execute("SELECT pg_advisory_lock(hashtext('aggjobs.job'), hashtext("
                      "'hourly_rollup'))")
        assert hourly(fresh) == "skipped"  # skipped runs neither fail nor succeed
    assert hourly(fresh) == "failed"

    state = overview(conn, fresh).as_dict()
    hourly_state = job_state(state, "hourly_rollup")
    assert hourly_state["consecutive_failures"] == 2 and hourly_state["last_status"] == "failed"
    assert not state["healthy"]
    [problem] = [x for x in state["problems"] if x.startswith("hourly_rollup")]
    assert "2 runs failed in a row" in problem and "CheckViolation" in problem
    assert "aggjobs runs --job hourly_rollup" in problem

    cli = aggjobs(db_url, "status")
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "unhealthy: hourly_rollup: 2 runs failed in a row" in cli.stdout
    doc = json.loads(aggjobs(db_url, "status", "--json").stdout)
    assert doc["healthy"] is False and doc["problems"] == state["problems"]

    poison(conn, False)
    assert hourly(fresh) == "succeeded"
    state = overview(conn, fresh).as_dict()
    assert job_state(state, "hourly_rollup")["consecutive_failures"] == 0
    assert state["healthy"], state["problems"]
    assert aggjobs(db_url, "status").returncode == 0


def test_an_abandoned_run_counts_as_a_failure(conn, fresh):
    conn.execute(
        "INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, host, pid, backend_pid)"
        " VALUES ('cleanup_old_data', 'schedule', 'beat', now(), 'running', 'h', 1, 0)")
    assert run_job(RunRequest(job="refresh_materialized_views"), fresh).status == "succeeded"
    state = job_state(overview(conn, fresh).as_dict(), "cleanup_old_data")
    assert (state["last_status"], state["consecutive_failures"]) == ("abandoned", 1)


def test_a_run_over_its_time_budget_is_reported(conn, fresh):
    conn.execute(
        "INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, started_at, host, pid,"
        " backend_pid) VALUES ('hourly_rollup', 'schedule', 'beat', now(), 'running',"
        " now() - interval '2 hours', 'h', 1, pg_backend_pid())")  # alive: not abandoned
    state = overview(conn, fresh).as_dict()
    [problem] = [x for x in state["problems"] if x.startswith("hourly_rollup")]
    assert "over its 1800 s budget" in problem


def test_stale_tables_are_reported_with_what_to_do(conn, fresh):
    assert hourly(fresh) == "succeeded"
    later = overview(conn, fresh, now=NOW + 5 * H).as_dict()
    stale = [x for x in later["problems"] if "_hourly" in x]
    assert len(stale) == len(BUILTIN_ROLLUPS) and all("h behind (target 2 h)" in x for x in stale)
    assert "aggjobs run hourly_rollup" in stale[0]


def test_next_run_follows_the_schedule_and_its_overrides():
    settings = Settings(schedule={"weekly_rollup": "off", "hourly_rollup": "10 * * * *"})
    at = datetime(2026, 11, 29, 4, 7, tzinfo=UTC)  # a Sunday
    assert next_run("hourly_rollup", settings, at) == at.replace(minute=10)
    assert next_run("daily_rollup", settings, at) == datetime(2026, 11, 30, 1, tzinfo=UTC)
    assert next_run("weekly_rollup", settings, at) is None
    assert next_run("refresh_materialized_views", settings, at) == at.replace(minute=15)


def test_runs_lists_history_with_each_failed_steps_error(conn, fresh, db_url):
    assert hourly(fresh) == "succeeded"
    conn.execute("DELETE FROM analytics.execution_metrics_hourly")
    conn.execute("UPDATE aggjobs.watermarks SET watermark = NULL WHERE grain = 'hour'")
    poison(conn, True)
    assert hourly(fresh) == "failed"
    run_job(RunRequest(job="refresh_materialized_views"), fresh)

    rows = run_history(conn, job="hourly_rollup")
    assert [r["status"] for r in rows] == ["failed", "succeeded"]  # newest first
    failed = {s["name"]: s for s in rows[0]["steps"]}
    assert failed["execution_metrics.hour"]["status"] == "failed"
    assert "CheckViolation" in failed["execution_metrics.hour"]["error"]
    assert failed["user_activity.hour"]["status"] == "succeeded"

    text = aggjobs(db_url, "runs", "--job", "hourly_rollup")
    assert text.returncode == 0, text.stderr
    assert "execution_metrics.hour: CheckViolation" in text.stdout
    doc = json.loads(aggjobs(db_url, "runs", "--json").stdout)
    assert [r["job"] for r in doc] == ["refresh_materialized_views", "hourly_rollup",
                                       "hourly_rollup"]
    future = (datetime.now(UTC) + H).isoformat()
    assert aggjobs(db_url, "runs", "--since", future).returncode == 2
    recent = json.loads(aggjobs(db_url, "runs", "--json", "--since",
                                (datetime.now(UTC) - H).isoformat()).stdout)
    assert len(recent) == 3
    assert aggjobs(db_url, "runs", "--job", "nope").returncode == 2
