"""An API over a real database with real run history: succeeded, failed, skipped and
abandoned runs made by the real runner, and a token of each role."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from aggjobs.api import tokens
from aggjobs.api.app import create_api
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.settings import Settings
from tests import platform as p

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
EVIL = "<script>alert('pwned')</script> & \"quoted\""
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
H = timedelta(hours=1)


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"retry_attempts": 1, "max_buckets_per_refresh": 24 * 9})


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_api(api_settings)) as c:
        yield c


@pytest.fixture
def keys(conn: psycopg.Connection) -> dict[str, str]:
    """One token per role, plus a revoked and an expired operator token."""
    made = {role: tokens.create(conn, f"t-{role}", role, actor="tests")[0]
            for role in tokens.ROLES}
    made["revoked"] = tokens.create(conn, "t-revoked", "operator", actor="tests")[0]
    tokens.revoke(conn, "t-revoked", actor="tests")
    made["expired"] = tokens.create(conn, "t-expired", "operator", actor="tests",
                                    expires_days=1)[0]
    conn.execute("UPDATE aggjobs.api_tokens SET expires_at = now() - interval '1 second'"
                 " WHERE name = 't-expired'")
    made["wrong"] = tokens.new_secret()
    return made


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def hourly(settings: Settings) -> str:
    return run_job(RunRequest(job="hourly_rollup", as_of=NOW), settings).status


@pytest.fixture
def history(conn: psycopg.Connection, api_settings: Settings, db_url: str) -> Settings:
    """hourly_rollup: succeeded, failed (a poisoned table), skipped (its lock held
    elsewhere); cleanup_old_data: abandoned (a dead session's 'running' row, swept by the
    next run); refresh_materialized_views: succeeded."""
    for h in range(1, 4):
        for ws in (1, 2):
            p.run(conn, ws=ws, at=NOW - h * H, runtime=2.0)
    assert hourly(api_settings) == "succeeded"
    conn.execute("DELETE FROM analytics.execution_metrics_hourly")
    conn.execute("UPDATE aggjobs.watermarks SET watermark = NULL WHERE grain = 'hour'")
    conn.execute("ALTER TABLE analytics.execution_metrics_hourly"
                 " ADD CONSTRAINT poison CHECK (total_executions < 0)")
    assert hourly(api_settings) == "failed"
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('aggjobs.job'), hashtext("
                      "'hourly_rollup'))")
        assert hourly(api_settings) == "skipped"
    conn.execute(
        "INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, host, pid, backend_pid)"
        " VALUES ('cleanup_old_data', 'schedule', 'beat', now(), 'running', 'h', 1, 0)")
    assert run_job(RunRequest(job="refresh_materialized_views"),
                   api_settings).status == "succeeded"
    statuses = {s for (s,) in conn.execute("SELECT DISTINCT status FROM aggjobs.job_runs")}
    assert statuses == {"succeeded", "failed", "skipped", "abandoned"}
    return api_settings


@pytest.fixture
def board(conn: psycopg.Connection, history: Settings) -> Settings:
    """The API's run history plus: a failed daily_rollup run whose error (and failed step's)
    holds markup, backfills running (40 %), succeeded and failed, a stale hourly rollup
    (10 h behind its 2 h target) and a stored daily report of yesterday."""
    conn.execute(
        "INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, started_at,"
        " finished_at, steps, error, host, pid) VALUES ('daily_rollup', 'schedule', 'beat',"
        " now(), 'failed', now() - interval '5 minutes', now() - interval '4 minutes',"
        " %s, %s, 'h', 1)",
        (Jsonb([{"name": "refresh:user_activity:day", "status": "failed",
                 "error": f"step says {EVIL}"}]), f"RuntimeError: {EVIL}"))
    for status, done in (("running", 4), ("succeeded", 10), ("failed", 2)):
        conn.execute(
            "INSERT INTO aggjobs.backfills (rollup, range_start, range_end, grain, done_until,"
            " status, finished_at, error) VALUES (%s, %s, %s, 'hour', %s, %s, %s, %s)",
            (f"bf_{status}", HOUR - timedelta(hours=30), HOUR - timedelta(hours=20),
             HOUR - timedelta(hours=30 - done), status,
             None if status == "running" else HOUR, "boom" if status == "failed" else None))
    # 10 h before the hour the dashboard is read in, not the hour this module was imported
    # in: a suite that crossed an hour between the two saw 11 h
    conn.execute("UPDATE aggjobs.watermarks"
                 " SET watermark = date_trunc('hour', now()) - interval '10 hours'"
                 " WHERE rollup = 'user_activity' AND grain = 'hour'")
    conn.execute("INSERT INTO analytics.daily_reports (day, workspace_id, report)"
                 " VALUES (current_date - 1, NULL, '{}')")
    return history
