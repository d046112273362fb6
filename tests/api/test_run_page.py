"""A run's page and JSON (`/runs/{id}`, `GET /api/runs/{id}`), the links to it from every
table and chart of the dashboard, the charts' axes, the actions drawn by role, and the
retry of a failed run (`POST /api/runs/{id}/retry`): TestClient over a real database with
the real runner's history (tests/api/conftest.py)."""

from __future__ import annotations

import html
import re

import psycopg
import pytest

from aggjobs.jobs.registry import JOBS

from .conftest import EVIL, auth
from .test_dashboard import sections


def run_id(conn: psycopg.Connection, job: str, status: str) -> int:
    return conn.execute("SELECT max(id) FROM aggjobs.job_runs WHERE job = %s AND status = %s",
                        (job, status)).fetchone()[0]


def test_a_run_as_json(client, board, keys, conn):
    failed = run_id(conn, "daily_rollup", "failed")
    got = client.get(f"/api/runs/{failed}", headers=auth(keys["viewer"]))
    assert got.status_code == 200, got.text
    run = got.json()
    assert (run["id"], run["job"], run["status"], run["trigger"], run["who"]) == (
        failed, "daily_rollup", "failed", "schedule", "beat")
    assert (run["host"], run["pid"]) == ("h", 1) and isinstance(run["seconds"], float)
    assert 59 <= run["seconds"] <= 61 and run["error"] == f"RuntimeError: {EVIL}"
    assert [s["name"] for s in run["steps"]] == ["refresh:user_activity:day"]
    assert client.get("/api/runs/999999", headers=auth(keys["viewer"])).status_code == 404
    assert client.get(f"/api/runs/{failed}").status_code == 401
    assert client.get("/api/runs/0", headers=auth(keys["viewer"])).status_code == 422


def test_a_run_page_shows_steps_worker_trigger_and_escapes(client, board, keys, conn):
    hourly = run_id(conn, "hourly_rollup", "failed")
    got = client.get(f"/runs/{hourly}", params={"token": keys["viewer"]})
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    page = got.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from elsewhere
    assert set(sections(page)) == {"run", "steps", "audit"}
    facts = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", page))
    assert 'class="badge failed"' in facts["status"] and facts["trigger"] == "manual"
    assert re.fullmatch(r".+ \(pid \d+\)", facts["worker"])
    assert "UTC" in facts["as of"] and "UTC" in facts["started"]
    steps = re.findall(r'<tr class="step (\w+)" data-step="([\w.:]+)">', page)
    assert ("failed", "execution_metrics.hour") in steps
    assert all(status in ("succeeded", "failed", "skipped") for status, _ in steps)
    assert "poison" in page  # the failed step's error
    assert page.count('<rect class="step') == len(steps)  # the timeline: a bar per step
    assert "<button" not in page  # a viewer's page has no action
    evil = client.get(f"/runs/{run_id(conn, 'daily_rollup', 'failed')}",
                      headers=auth(keys["viewer"])).text
    assert "<script>alert" not in evil and html.escape(f"step says {EVIL}") in evil
    assert evil.count("<script>") == 1
    assert client.get("/runs/999999", headers=auth(keys["viewer"])).status_code == 404
    assert client.get(f"/runs/{hourly}").status_code == 401


def test_every_run_on_the_dashboard_links_to_its_page(client, board, keys, conn):
    part = sections(client.get("/", headers=auth(keys["viewer"])).text)
    jobs = dict(re.findall(r'<tr class="job [\w]+" data-job="(\w+)">(.*?)</tr>', part["jobs"]))
    for job in JOBS:
        last = conn.execute("SELECT id FROM aggjobs.job_runs WHERE job = %s AND status <>"
                            " 'skipped' ORDER BY started_at DESC, id DESC LIMIT 1",
                            (job,)).fetchone()
        if last:
            assert f'href="/runs/{last[0]}"' in jobs[job], job
    failures = re.findall(r'<li class="failure \w+" data-run="(\d+)">(.*?)</li>',
                          part["failures"], re.DOTALL)
    assert failures and all(f'href="/runs/{rid}"' in body for rid, body in failures)
    bars = re.findall(r'<a data-auth href="/runs/(\d+)"><rect class="run \w+" data-status="\w+"'
                      r' data-run="(\d+)"', part["charts"])
    assert bars and all(a == b for a, b in bars)


def test_charts_have_a_time_axis_a_value_axis_and_values_on_hover(client, board, keys):
    part = sections(client.get("/", headers=auth(keys["viewer"])).text)
    chart = re.search(r'<svg class="chart" id="chart-hourly_rollup"(.*?)</svg>',
                      part["charts"], re.DOTALL).group(1)
    ticks = re.findall(r'<text class="tick time"[^>]*>([^<]+)</text>', chart)
    assert ticks and all(re.fullmatch(r"(\d\d-\d\d )?\d\d:\d\d", t) for t in ticks)
    assert "run start (UTC)" in chart
    values = re.findall(r'<text class="tick" x="[\d.]+" y="[\d.]+" text-anchor="end">([^<]+)<',
                        chart)
    assert values[0] == "0" and all(v.endswith((" s", " min", " h", " d")) for v in values[1:3])
    hovers = re.findall(r"<rect class=\"run \w+\"[^>]*><title>([^<]+)</title>", chart)
    assert len(hovers) == 3
    assert all(re.match(r"run \d+ \w+ \(\w+\) at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, ", h)
               for h in hovers)


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_actions_are_drawn_for_operators_and_admins_only(client, board, keys, conn, role):
    page = client.get("/", headers=auth(keys[role])).text
    buttons = re.findall(r'<button type="button" class="action[\w ]*" data-url="([^"]+)"', page)
    if role == "viewer":
        assert buttons == [] and 'id="backfill-form"' not in page
        return
    run_now = {u for u in buttons if u.endswith("/run")}
    wanted = {f"/api/jobs/{job}/run" for job in JOBS
              if job != "cleanup_old_data" or role == "admin"}
    assert run_now == wanted
    failed = run_id(conn, "daily_rollup", "failed")
    assert f"/api/runs/{failed}/retry" in buttons
    if role == "operator":  # retention: an admin's only, the retry of its run too
        abandoned = run_id(conn, "cleanup_old_data", "abandoned")
        assert f"/api/runs/{abandoned}/retry" not in buttons
    running = conn.execute("SELECT id FROM aggjobs.backfills WHERE status = 'running'"
                           ).fetchone()[0]
    assert [u for u in buttons if u.endswith("/cancel")] == [
        f"/api/backfills/{running}/cancel"]
    boxes = re.findall(r'<input type="checkbox" name="rollup" value="(\w+)">', page)
    assert boxes == ["execution_metrics", "user_activity", "credit_consumption",
                     "agent_executions"]
    assert all('data-confirm="' in b for b in re.findall(r"<button[^>]*>", page)
               if "data-url" in b)


def test_retry_runs_the_job_again_for_the_failed_runs_reference_time(client, board, keys, conn):
    failed = run_id(conn, "hourly_rollup", "failed")
    got = client.post(f"/api/runs/{failed}/retry", headers=auth(keys["operator"]))
    assert got.status_code == 200, got.text
    again = got.json()
    assert again["retry_of"] == failed and again["job"] == "hourly_rollup"
    assert again["status"] == "failed"  # the poisoned table is still there
    old_as_of, new_as_of, trigger, who = conn.execute(
        "SELECT o.as_of, n.as_of, n.trigger, n.who FROM aggjobs.job_runs AS o,"
        " aggjobs.job_runs AS n WHERE o.id = %s AND n.id = %s", (failed, again["id"])).fetchone()
    assert new_as_of == old_as_of and (trigger, who) == ("manual", "api:t-operator")
    (params, outcome, actor), = conn.execute(
        "SELECT params, outcome, actor FROM aggjobs.audit_log WHERE action = 'retry'")
    assert params == {"retry_of": failed, "run": again["id"], "as_of": old_as_of.isoformat()}
    assert (outcome, actor) == ("failed", "api:t-operator")
    page = client.get(f"/runs/{failed}", headers=auth(keys["viewer"])).text
    assert f'href="/runs/{again["id"]}">→ run {again["id"]}</a>' in page
    newer = client.get(f"/runs/{again['id']}", headers=auth(keys["viewer"])).text
    assert f'href="/runs/{failed}">→ run {failed}</a>' in newer

    succeeded = run_id(conn, "refresh_materialized_views", "succeeded")
    refused = client.post(f"/api/runs/{succeeded}/retry", headers=auth(keys["operator"]))
    assert refused.status_code == 409 and "only a failed or abandoned run" in refused.text
    assert client.post("/api/runs/999999/retry",
                       headers=auth(keys["operator"])).status_code == 404
    assert client.post(f"/api/runs/{failed}/retry",
                       headers=auth(keys["viewer"])).status_code == 403
    cleanup = run_id(conn, "cleanup_old_data", "abandoned")
    assert client.post(f"/api/runs/{cleanup}/retry",
                       headers=auth(keys["operator"])).status_code == 403
