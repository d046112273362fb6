"""The API's reads on a replica (AGGJOBS_READ_DATABASE_URL), writes on the primary.

The replica is simulated: a copy of the test database (CREATE DATABASE ... TEMPLATE) reached
through a URL whose options make every session read-only (`default_transaction_read_only`),
so that any write the reading routes attempted would fail with a 500. After the copy the
primary moves on (a new run, a new token, a revocation): what the reading routes show is the
replica's state, while the token check and every audit row use the primary.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.conninfo import make_conninfo

from aggjobs.api import tokens
from aggjobs.api.app import create_api
from aggjobs.db.connect import connect
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.settings import Settings
from tests import platform as p
from tests.api.serve import serving
from tests.conftest import create_database, drop_database, with_dbname

READ_ONLY = "-c default_transaction_read_only=on"
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def count(url: str, sql: str, *params) -> int:
    with psycopg.connect(url) as c:
        return c.execute(sql, params).fetchone()[0]


@pytest.fixture
def setup(server_url: str, db_url: str, settings: Settings) -> Iterator[dict]:
    """The primary with data, a run and tokens; its copy as a read-only replica; then the
    primary moves on."""
    with psycopg.connect(db_url, autocommit=True) as c:
        for h in range(1, 4):
            for ws in (1, 2):
                p.run(c, ws=ws, at=NOW - timedelta(hours=h), runtime=2.0)
        keys = {role: tokens.create(c, f"t-{role}", role, actor="tests")[0]
                for role in tokens.ROLES}
        keys["later-revoked"] = tokens.create(c, "t-later-revoked", "viewer",
                                              actor="tests")[0]
    assert run_job(RunRequest(job="hourly_rollup", as_of=NOW), settings).status == "succeeded"

    name = f"aggjobs_r_{uuid.uuid4().hex[:12]}"
    create_database(server_url, name, template=psycopg.conninfo.conninfo_to_dict(
        db_url)["dbname"])
    try:
        replica = make_conninfo(with_dbname(server_url, name), options=READ_ONLY)
        writable_replica = with_dbname(server_url, name)
        # the primary moves on; the replica has not caught up
        assert run_job(RunRequest(job="refresh_materialized_views"),
                       settings).status == "succeeded"
        with psycopg.connect(db_url, autocommit=True) as c:
            keys["new"] = tokens.create(c, "t-new", "viewer", actor="tests")[0]
            tokens.revoke(c, "t-later-revoked", actor="tests")
            audit_before = c.execute("SELECT count(*) FROM aggjobs.audit_log").fetchone()[0]
        yield {"keys": keys, "replica": replica, "replica_rw": writable_replica,
               "settings": settings.model_copy(update={"read_database_url": replica,
                                                       "retry_attempts": 1}),
               "audit_before": audit_before}
    finally:
        drop_database(server_url, name)


def test_the_replica_url_really_is_read_only(setup) -> None:
    """Through aggjobs' own connect(): the URL's options survive beside the session limits."""
    with connect("api-read", url=setup["replica"], settings=setup["settings"]) as c:
        assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert c.execute("SHOW statement_timeout").fetchone() == ("5min",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("DELETE FROM aggjobs.job_runs")


READS = ["/api/jobs", "/api/jobs/hourly_rollup/runs",
         "/api/jobs/refresh_materialized_views/runs", "/api/rollups", "/api/backfills", "/",
         "/metrics"]


def test_reads_come_from_the_replica_and_never_write(setup, db_url) -> None:
    keys, replica_rw = setup["keys"], setup["replica_rw"]
    with TestClient(create_api(setup["settings"])) as client:
        for path in READS:
            got = client.get(path, headers=auth(keys["viewer"]))
            assert got.status_code == 200, (path, got.status_code, got.text[:500])
        latest = client.get("/api/reports/latest", headers=auth(keys["viewer"]))
        assert latest.status_code == 404  # none stored yet: still a read, on the replica
        assert client.get("/api/retention", headers=auth(keys["admin"])).status_code == 200
        assert client.get("/healthz").json() == {"ok": True}

        # the replica's state: the views' run made on the primary after the copy is not there
        jobs = {j["job"]: j for j in client.get("/api/jobs",
                                                headers=auth(keys["viewer"])).json()["jobs"]}
        assert jobs["hourly_rollup"]["last_status"] == "succeeded"
        assert jobs["refresh_materialized_views"]["last_status"] is None
        assert client.get("/api/jobs/refresh_materialized_views/runs",
                          headers=auth(keys["viewer"])).json() == []
        metrics = client.get("/metrics", headers=auth(keys["viewer"])).text
        assert 'aggjobs_job_runs_retained{job_name="hourly_rollup",status="succeeded"} 1.0' in metrics
        assert 'job_name="refresh_materialized_views",status="succeeded"} 1.0' not in metrics
    # the primary has it
    assert count(db_url, "SELECT count(*) FROM aggjobs.job_runs"
                 " WHERE job = 'refresh_materialized_views'") == 1
    # the replica was only read: its tokens were never marked used
    assert count(replica_rw, "SELECT count(*) FROM aggjobs.api_tokens"
                 " WHERE last_used_at IS NOT NULL") == 0
    assert count(db_url, "SELECT count(*) FROM aggjobs.api_tokens WHERE name = 't-viewer'"
                 " AND last_used_at IS NOT NULL") == 1


def test_tokens_are_checked_on_the_primary(setup) -> None:
    """A token made after the copy works; one revoked after it is refused at once, though
    the replica still has it active."""
    keys = setup["keys"]
    with TestClient(create_api(setup["settings"])) as client:
        assert client.get("/api/jobs", headers=auth(keys["new"])).status_code == 200
        assert client.get("/api/jobs", headers=auth(keys["later-revoked"])).status_code == 401
    assert count(setup["replica_rw"], "SELECT count(*) FROM aggjobs.api_tokens"
                 " WHERE name = 't-later-revoked' AND revoked_at IS NULL") == 1


def test_denials_and_triggers_write_to_the_primary(setup, db_url) -> None:
    keys, replica_rw = setup["keys"], setup["replica_rw"]
    replica_audit = count(replica_rw, "SELECT count(*) FROM aggjobs.audit_log")
    with TestClient(create_api(setup["settings"])) as client:
        assert client.get("/api/rollups").status_code == 401
        assert client.get("/api/rollups", headers=auth(tokens.new_secret())).status_code == 401
        assert client.get("/api/retention", headers=auth(keys["viewer"])).status_code == 403
        ran = client.post("/api/jobs/refresh_materialized_views/run",
                          headers=auth(keys["operator"]))
        assert ran.status_code == 200 and ran.json()["status"] == "succeeded", ran.text
        made = client.post("/api/tokens", headers=auth(keys["admin"]),
                           json={"name": "t-made", "role": "viewer"})
        assert made.status_code == 201, made.text
        # the new token works at once on a reading route (checked on the primary)
        fresh = made.json()["secret"]
        assert client.get("/api/rollups", headers=auth(fresh)).status_code == 200
    with psycopg.connect(db_url) as c:
        rows = c.execute("SELECT action, target, outcome FROM aggjobs.audit_log WHERE id > %s"
                         " ORDER BY id", (setup["audit_before"],)).fetchall()
    # sorted: the second 401 of the client's minute is written when the app stops (its
    # minute's aggregated denials, docs/api.md)
    assert sorted(rows) == sorted([
        ("denied", "/api/rollups", "401"), ("denied", "/api/rollups", "401"),
        ("denied", "/api/retention", "403"), ("run", "refresh_materialized_views", "succeeded"),
        ("token.create", "t-made", "created")]), rows
    assert count(db_url, "SELECT count(*) FROM aggjobs.job_runs"
                 " WHERE job = 'refresh_materialized_views'") == 2
    assert count(replica_rw, "SELECT count(*) FROM aggjobs.audit_log") == replica_audit


def test_healthz_reports_a_replica_that_does_not_answer(settings, server_url) -> None:
    gone = with_dbname(server_url, f"aggjobs_missing_{uuid.uuid4().hex[:8]}")
    api = create_api(settings.model_copy(update={"read_database_url": gone}))
    with TestClient(api) as client:
        got = client.get("/healthz")
    assert got.status_code == 503
    assert got.json()["error"].startswith("read replica: "), got.json()


def test_serve_reads_from_the_replica_over_real_http(setup, db_url) -> None:
    """`aggjobs serve` with AGGJOBS_READ_DATABASE_URL in its environment."""
    keys = setup["keys"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")},
           "AGGJOBS_DATABASE_URL": db_url, "AGGJOBS_READ_DATABASE_URL": setup["replica"]}
    with serving(env) as served:
        assert served.health.status_code == 200, served.health.text
        got = httpx.get(f"{served.base}/api/jobs/refresh_materialized_views/runs",
                        headers=auth(keys["viewer"]), timeout=10)
        assert got.status_code == 200 and got.json() == [], got.text  # the replica's state
        page = httpx.get(f"{served.base}/", params={"token": keys["viewer"]}, timeout=10)
        assert page.status_code == 200 and "hourly_rollup" in page.text
