"""Each endpoint against real run history; metrics parsed with prometheus-client's parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggjobs.engine.status import rollup_status
from aggjobs.jobs.backfill import Queued, Requester, run_queued
from aggjobs.jobs.registry import JOBS

from .conftest import NOW, auth


def test_healthz_needs_no_token(client):
    got = client.get("/healthz")
    assert got.status_code == 200 and got.json() == {"ok": True}


def test_healthz_is_503_when_the_database_is_gone(api_settings):
    from fastapi.testclient import TestClient

    from aggjobs.api.app import create_api

    broken = api_settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/nowhere"})
    with TestClient(create_api(broken)) as c:
        got = c.get("/healthz")
    assert got.status_code == 503 and got.json()["ok"] is False


def test_jobs_shows_each_job_with_its_last_run_and_problems(client, history, keys):
    got = client.get("/api/jobs", headers=auth(keys["viewer"]))
    assert got.status_code == 200
    doc = got.json()
    assert set(doc) == {"healthy", "checked_at", "problems", "jobs"}
    jobs = {j["job"]: j for j in doc["jobs"]}
    assert list(jobs) == list(JOBS)
    assert jobs["hourly_rollup"]["last_status"] == "failed"  # skipped runs do not count
    assert jobs["hourly_rollup"]["consecutive_failures"] == 1
    assert "CheckViolation" in jobs["hourly_rollup"]["last_error"]
    assert jobs["cleanup_old_data"]["last_status"] == "abandoned"
    assert jobs["refresh_materialized_views"]["last_status"] == "succeeded"
    assert jobs["weekly_rollup"]["last_status"] is None
    assert jobs["hourly_rollup"]["next_run"] is not None


def test_runs_lists_history_newest_first_with_steps_and_errors(client, history, keys, conn):
    got = client.get("/api/jobs/hourly_rollup/runs", headers=auth(keys["viewer"]))
    assert got.status_code == 200
    runs = got.json()
    assert [r["status"] for r in runs] == ["skipped", "failed", "succeeded"]
    failed = runs[1]
    assert "CheckViolation" in failed["error"]
    assert any(s["status"] == "failed" and "poison" in s["error"] for s in failed["steps"])
    assert runs[2]["steps"] and all(s["status"] == "succeeded" for s in runs[2]["steps"])

    limited = client.get("/api/jobs/hourly_rollup/runs?limit=1", headers=auth(keys["viewer"]))
    assert [r["status"] for r in limited.json()] == ["skipped"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    since = client.get("/api/jobs/hourly_rollup/runs", params={"since": future},
                       headers=auth(keys["viewer"]))
    assert since.status_code == 200 and since.json() == []
    abandoned = client.get("/api/jobs/cleanup_old_data/runs", headers=auth(keys["viewer"]))
    assert [r["status"] for r in abandoned.json()] == ["abandoned"]


@pytest.mark.parametrize("path,status", [
    ("/api/jobs/nope/runs", 404),
    ("/api/jobs/hourly_rollup'; DROP TABLE aggjobs.job_runs; --/runs", 404),
    ("/api/jobs/hourly_rollup/runs?since=yesterday", 422),
    ("/api/jobs/hourly_rollup/runs?since=2026-01-01'%20OR%201=1--", 422),
    ("/api/jobs/hourly_rollup/runs?limit=0", 422),
    ("/api/jobs/hourly_rollup/runs?limit=abc", 422),
])
def test_bad_run_queries_are_refused_with_one_line(client, keys, conn, path, status):
    got = client.get(path, headers=auth(keys["viewer"]))
    assert got.status_code == status, got.text
    if isinstance(got.json()["detail"], str):  # ours; FastAPI's 422 lists its errors
        assert "\n" not in got.json()["detail"]
    assert conn.execute("SELECT to_regclass('aggjobs.job_runs')").fetchone()[0] is not None


def test_rollups_shows_freshness_per_rollup_and_grain(client, history, keys, conn):
    got = client.get("/api/rollups", headers=auth(keys["viewer"]))
    assert got.status_code == 200
    rows = {(r["rollup"], r["grain"]): r for r in got.json()}
    expected = rollup_status(conn, now=datetime.now(UTC))
    assert set(rows) == {(r["rollup"], r["grain"]) for r in expected}
    assert rows[("user_activity", "hour")]["watermark"] is not None
    assert rows[("execution_metrics", "hour")]["watermark"] is None  # rebuilt, poisoned


def test_post_run_runs_the_job_and_audits_it(client, history, keys, conn):
    got = client.post("/api/jobs/refresh_materialized_views/run",
                      headers=auth(keys["operator"]))
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["status"] == "succeeded" and doc["steps"]
    row = conn.execute("SELECT status, who, trigger FROM aggjobs.job_runs WHERE id = %s",
                       (doc["id"],)).fetchone()
    assert row == ("succeeded", "api:t-operator", "manual")
    audit = conn.execute("SELECT actor, action, target, outcome FROM aggjobs.audit_log"
                         " WHERE action = 'run' ORDER BY id DESC LIMIT 1").fetchone()
    assert audit == ("api:t-operator", "run", "refresh_materialized_views", "succeeded")

    failed = client.post("/api/jobs/hourly_rollup/run",
                         json={"as_of": datetime.now(UTC).isoformat()},
                         headers=auth(keys["admin"]))
    assert failed.status_code == 200 and failed.json()["status"] == "failed"


@pytest.mark.parametrize("body,status,words", [
    ({"as_of": "not a time"}, 422, "cannot parse timestamp"),
    ({"as_of": "2199-01-01"}, 400, "in the future"),
    ({"as_of": "2026-01-01", "extra": 1}, 422, None),
])
def test_post_run_validates_its_body(client, keys, conn, body, status, words):
    got = client.post("/api/jobs/hourly_rollup/run", json=body, headers=auth(keys["operator"]))
    assert got.status_code == status, got.text
    if words:
        assert words in got.json()["detail"]
    assert conn.execute("SELECT count(*) FROM aggjobs.job_runs").fetchone()[0] == 0


def test_post_run_of_an_unknown_job_is_404(client, keys, conn):
    got = client.post("/api/jobs/nope/run", headers=auth(keys["operator"]))
    assert got.status_code == 404 and "unknown job 'nope'" in got.json()["detail"]


def test_backfill_is_queued_then_run_by_the_task_and_audited(client, history, keys, conn,
                                                              api_settings):
    lo, hi = NOW - 4 * timedelta(hours=1), NOW - timedelta(hours=1)
    body = {"rollups": ["user_activity"], "from": lo.isoformat(), "to": hi.isoformat()}
    got = client.post("/api/backfills", json=body, headers=auth(keys["operator"]))
    assert got.status_code == 202, got.text
    [queued] = got.json()["backfills"]
    assert queued["rollup"] == "user_activity" and queued["url"] == f"/api/backfills/{queued['id']}"
    row = client.get(queued["url"], headers=auth(keys["viewer"])).json()
    assert (row["status"], row["requested_by"], row["progress"]) == (
        "queued", "api:t-operator", 0.0)
    assert row["task_id"]  # sent to the broker (tests: memory://, no worker takes it)
    # what the worker's task runs (tests/api/test_backfill_busy.py runs it in a worker)
    outcome = run_queued(api_settings, Queued(
        [{"id": queued["id"], "rollup": "user_activity"}], lo.isoformat(), hi.isoformat(),
        Requester("api:t-operator", "testclient")))
    assert outcome == {"user_activity": "succeeded"}
    row = client.get(queued["url"], headers=auth(keys["viewer"])).json()
    assert (row["status"], row["progress"]) == ("succeeded", 1.0)
    audit = conn.execute("SELECT id, actor, target, params, outcome, source"
                         " FROM aggjobs.audit_log WHERE action = 'backfill' ORDER BY id").fetchall()
    params = {"rollups": ["user_activity"], "from": lo.isoformat(), "to": hi.isoformat(),
              "days": 0.125}
    # queued by the request, then a row when it starts, one when it ends
    [(_, *asked), (started_id, *start), (_, *end)] = audit
    assert asked == ["api:t-operator", "user_activity",
                     {**params, "backfills": [queued["id"]], "task_id": row["task_id"]},
                     "queued", "testclient"]
    params = {**params, "sessions": 1, "forced": False}
    session = start[2].pop("session_pid")
    assert start == ["api:t-operator", "user_activity", params, "started", "testclient"]
    assert end == ["api:t-operator", "user_activity",
                   {**params, "session_pid": session, "started_id": started_id}, "succeeded",
                   "testclient"]


def test_a_backfill_the_broker_cannot_take_is_503_and_marked_failed(history, keys, conn,
                                                                    api_settings):
    """Nothing waits queued forever: with no broker listening (a loopback port with nothing
    behind it) the rows end failed, and the audit log says queued, then why it failed."""
    from fastapi.testclient import TestClient

    from aggjobs.api.app import create_api

    dead = api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    lo, hi = NOW - 4 * timedelta(hours=1), NOW - timedelta(hours=1)
    body = {"rollups": ["user_activity"], "from": lo.isoformat(), "to": hi.isoformat()}
    with TestClient(create_api(dead)) as client:
        got = client.post("/api/backfills", json=body, headers=auth(keys["operator"]))
    assert got.status_code == 503, got.text
    assert "could not be sent to the workers' broker" in got.json()["detail"]
    status, error = conn.execute("SELECT status, error FROM aggjobs.backfills").fetchone()
    assert status == "failed" and error.startswith("not sent to the workers")
    outcomes = [o for (o,) in conn.execute(
        "SELECT outcome FROM aggjobs.audit_log WHERE action = 'backfill' ORDER BY id")]
    assert outcomes[0] == "queued" and outcomes[1].startswith("failed: the broker refused it")


@pytest.mark.parametrize("body,status,words", [
    ({"rollups": ["nope"], "from": "2026-01-01", "to": "2026-01-02"}, 400, "unknown rollup"),
    ({"rollups": ["x'); DELETE FROM aggjobs.watermarks; --"], "from": "2026-01-01",
      "to": "2026-01-02"}, 400, "unknown rollup"),
    ({"from": "2026-01-02", "to": "2026-01-01"}, 400, "must be before"),
    ({"from": "2026-01-01", "to": "2199-01-01"}, 400, "in the future"),
    ({"from": "garbage", "to": "2026-01-01"}, 422, "cannot parse timestamp"),
    ({"to": "2026-01-01"}, 422, None),
])
def test_backfill_validates_like_the_cli(client, keys, conn, body, status, words):
    marks = conn.execute("SELECT count(*) FROM aggjobs.watermarks").fetchone()[0]
    got = client.post("/api/backfills", json=body, headers=auth(keys["operator"]))
    assert got.status_code == status, got.text
    if words:
        assert words in got.json()["detail"] and "\n" not in got.json()["detail"]
    assert conn.execute("SELECT count(*) FROM aggjobs.backfills").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM aggjobs.watermarks").fetchone()[0] == marks


def test_dashboard_lists_jobs_and_their_status(client, history, keys):
    got = client.get("/", params={"token": keys["viewer"]})
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    page = got.text
    healthy = client.get("/api/jobs", headers=auth(keys["viewer"])).json()["healthy"]
    assert f'<span id="verdict">{"healthy" if healthy else "unhealthy"}</span>' in page
    for job in JOBS:
        assert job in page
    assert "abandoned" in page and "CheckViolation" in page


def finished_run(conn: psycopg.Connection, job: str, status: str, seconds: float, rows: int,
                 finished_ago: timedelta = timedelta(0)) -> None:
    conn.execute(
        "INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, started_at,"
        " finished_at, host, pid, steps) VALUES (%s, 'manual', 't', now(), %s,"
        " now() - %s - make_interval(secs => %s), now() - %s, 'h', 1,"
        " jsonb_build_array(jsonb_build_object('name', 's', 'rows', %s::int)))",
        (job, status, finished_ago, seconds, finished_ago, rows))


def test_counters_count_each_run_finished_after_the_first_scrape_once(
        client, history, keys, conn: psycopg.Connection):
    """Real counters: monotonic within the API process, whatever the cleanup deletes."""
    first = scrape(client, keys)  # the baseline: the history before it is not counted
    for job in JOBS:
        for status in ("succeeded", "failed", "skipped", "abandoned"):
            assert first[("aggjobs_job_runs_total", (("job_name", job), ("status", status)))] == 0
        assert first[("aggjobs_job_rows_written_total", (("job_name", job),))] == 0
    assert not [k for k in first if k[0].startswith("aggjobs_job_run_duration_seconds")]

    finished_run(conn, "hourly_rollup", "succeeded", 0.5, 10)
    finished_run(conn, "hourly_rollup", "succeeded", 20.0, 5)
    finished_run(conn, "daily_rollup", "failed", 400.0, 0)
    # finished before the last scrape, committed after it (a long transaction): counted
    finished_run(conn, "hourly_rollup", "failed", 2.0, 1, finished_ago=timedelta(minutes=5))
    for m in (scrape(client, keys), scrape(client, keys)):  # the second counts nothing again
        runs = "aggjobs_job_runs_total"
        assert m[(runs, (("job_name", "hourly_rollup"), ("status", "succeeded")))] == 2
        assert m[(runs, (("job_name", "hourly_rollup"), ("status", "failed")))] == 1
        assert m[(runs, (("job_name", "daily_rollup"), ("status", "failed")))] == 1
        assert m[("aggjobs_job_rows_written_total", (("job_name", "hourly_rollup"),))] == 16
        ok = (("job_name", "hourly_rollup"), ("status", "succeeded"))
        bucket = "aggjobs_job_run_duration_seconds_bucket"
        assert m[("aggjobs_job_run_duration_seconds_count", ok)] == 2
        assert m[("aggjobs_job_run_duration_seconds_sum", ok)] == pytest.approx(20.5, abs=0.01)
        assert m[(bucket, (("job_name", "hourly_rollup"), ("le", "1.0"), ("status", "succeeded")))] \
            == 1
        assert m[(bucket, (("job_name", "hourly_rollup"), ("le", "30.0"), ("status", "succeeded")))] \
            == 2
        daily = (("job_name", "daily_rollup"), ("le", "300.0"), ("status", "failed"))
        assert m[(bucket, daily)] == 0

    conn.execute("DELETE FROM aggjobs.job_runs")  # as the cleanup job does, over time
    m = scrape(client, keys)
    assert m[("aggjobs_job_runs_retained", (("job_name", "hourly_rollup"), ("status", "succeeded")))] \
        == 0
    assert m[("aggjobs_job_runs_total", (("job_name", "hourly_rollup"), ("status", "succeeded")))] \
        == 2


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job}/runs", "/api/rollups", "/api/jobs/{job}/run",
            "/api/backfills", "/metrics", "/healthz"} <= set(spec["paths"])


# -- metrics ---------------------------------------------------------------------------


def scrape(client, keys) -> dict:
    got = client.get("/metrics", headers=auth(keys["viewer"]))
    assert got.status_code == 200, got.text
    samples = {}
    for family in text_string_to_metric_families(got.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_equal_what_is_in_job_runs(client, history, keys, conn: psycopg.Connection):
    m = scrape(client, keys)
    assert m[("aggjobs_up", ())] == 1

    counts = {(j, s): n for j, s, n in conn.execute(
        "SELECT job, status, count(*) FROM aggjobs.job_runs GROUP BY 1, 2")}
    for job in JOBS:
        for status in ("running", "succeeded", "failed", "skipped", "abandoned"):
            key = ("aggjobs_job_runs_retained", (("job_name", job), ("status", status)))
            assert m[key] == counts.get((job, status), 0), key

    success = dict(conn.execute("SELECT job, max(finished_at) FROM aggjobs.job_runs"
                                " WHERE status = 'succeeded' GROUP BY job"))
    assert set(success) == {"hourly_rollup", "refresh_materialized_views"}
    for job, at in success.items():
        assert m[("aggjobs_job_last_success_timestamp_seconds", (("job_name", job),))] \
            == pytest.approx(at.timestamp())
    assert ("aggjobs_job_last_success_timestamp_seconds", (("job_name", "weekly_rollup"),)) not in m

    assert m[("aggjobs_job_consecutive_failures", (("job_name", "hourly_rollup"),))] == 1
    assert m[("aggjobs_job_consecutive_failures", (("job_name", "cleanup_old_data"),))] == 1
    assert m[("aggjobs_job_consecutive_failures", (("job_name", "weekly_rollup"),))] == 0

    written = dict(conn.execute(
        "SELECT job, sum((s ->> 'rows')::bigint) FROM aggjobs.job_runs,"
        " jsonb_array_elements(steps) AS s GROUP BY job"))
    assert written["hourly_rollup"] > 0
    for job in JOBS:
        assert m[("aggjobs_job_rows_written_retained", (("job_name", job),))] == written.get(job, 0)

    for row in rollup_status(conn, now=datetime.now(UTC)):
        labels = (("grain", row["grain"]), ("rollup", row["rollup"]))
        assert m[("aggjobs_rollup_pending_groups", labels)] == row["pending_groups"]
        if row["lag_seconds"] is None:
            assert ("aggjobs_rollup_lag_seconds", labels) not in m
        else:
            assert m[("aggjobs_rollup_lag_seconds", labels)] == row["lag_seconds"]
