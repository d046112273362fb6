"""The dashboard at `/`, `/api/backfills`, `/reports/{day}`: server-rendered HTML against real
run history (TestClient), then the real thing: `aggjobs serve` in a subprocess opened in
headless Chromium, with a screenshot saved in the test's tmp dir."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggjobs import reports
from aggjobs.api.dashboard import progress
from aggjobs.jobs.registry import JOBS
from tests.api.serve import free_port
from tests.browser import chromium, headless
from tests.reports.conftest import DAY, loaded  # noqa: F401  (a fixture)

from .conftest import EVIL, auth


def sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)-section">(.*?)</section>', page, re.DOTALL))


def test_dashboard_shows_jobs_charts_freshness_failures_backfills_problems(client, board, keys):
    got = client.get("/", params={"token": keys["viewer"]})
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    page = got.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from elsewhere
    assert '<span id="verdict">unhealthy</span>' in page
    part = sections(page)
    assert set(part) == {"problems", "jobs", "charts", "freshness", "failures", "backfills",
                         "rebuilds", "liveness"}
    assert "None: every rollup is live under its declared definition" in part["rebuilds"]

    jobs = dict(re.findall(r'<tr class="job [\w]+" data-job="(\w+)">(.*?)</tr>', part["jobs"]))
    assert list(jobs) == list(JOBS)
    assert 'class="badge failed">failed<' in jobs["hourly_rollup"]
    assert 'class="badge abandoned">abandoned<' in jobs["cleanup_old_data"]
    assert 'class="badge succeeded">succeeded<' in jobs["refresh_materialized_views"]
    assert "never run" in jobs["weekly_rollup"]
    assert "CheckViolation" in jobs["hourly_rollup"]

    charts = dict(re.findall(r'<svg class="chart" id="chart-(\w+)"(.*?)</svg>',
                             part["charts"], re.DOTALL))
    assert list(charts) == list(JOBS)
    statuses = re.findall(r'<rect class="run (\w+)"', charts["hourly_rollup"])
    assert statuses == ["succeeded", "failed", "skipped"]  # oldest left
    assert charts["hourly_rollup"].count('class="fail-mark"') == 1
    assert "no runs yet" in charts["weekly_rollup"]

    fresh = {table: cls for cls, table in re.findall(
        r'<tr class="fresh-row (\w+)" data-table="([\w.]+)"', part["freshness"])}
    assert fresh["analytics.user_activity_hourly"] == "stale"
    assert fresh["analytics.execution_metrics_hourly"] == "unknown"  # never rolled up
    assert "user_activity_hourly" in part["problems"] and "10.0 h behind" in part["problems"]
    computed = dict(re.findall(r'<tr class="fresh-row \w+" data-table="([\w.]+)">.*?'
                               r'<td>([\w ,]+)</td></tr>', part["freshness"]))
    assert computed["analytics.execution_metrics_daily"] in ("C functions", "portable SQL")
    assert computed["analytics.user_activity_hourly"] in ("C functions", "portable SQL")
    assert computed["analytics.credit_consumption_hourly"] == "SQL, no quantile or distinct count"

    assert 'data-run=' in part["failures"] and "daily_rollup" in part["failures"]
    assert "refresh:user_activity:day" in part["failures"]
    assert "poison" in part["failures"]  # the failed hourly step's error
    assert "abandoned" in part["failures"]

    # every backfill, running first: progress, outcome and error (history, not only running)
    shown = re.findall(r'<tr class="backfill (\w+)" data-id="\d+"( data-live)?>(.*?)</tr>',
                       part["backfills"])
    assert [(status, live) for status, live, _ in shown] == [
        ("running", " data-live"), ("failed", ""), ("succeeded", "")]
    running, failed, succeeded = (cells for _, _, cells in shown)
    assert "bf_running" in running and 'value="0.4000"' in running and "40%" in running
    assert "bf_failed" in failed and "20%" in failed and "boom" in failed
    assert "bf_succeeded" in succeeded and "100%" in succeeded
    assert "<button" not in page and 'id="backfill-form"' not in page  # a viewer's page

    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert f'<a id="report-link" data-auth href="/reports/{yesterday}">' in page


def test_database_texts_are_escaped(client, board, keys):
    page = client.get("/", headers=auth(keys["viewer"])).text
    assert "<script>alert" not in page
    assert html.escape(f"RuntimeError: {EVIL}") in page
    assert html.escape(f"step says {EVIL}") in page
    assert page.count("<script>") == 1  # the page's own


def test_dashboard_needs_a_viewer_token(client, board, keys):
    assert client.get("/").status_code == 401
    assert client.get("/", params={"token": keys["wrong"]}).status_code == 401
    assert client.get("/", params={"token": keys["revoked"]}).status_code == 401
    for role in ("viewer", "operator", "admin"):
        assert client.get("/", params={"token": keys[role]}).status_code == 200
        assert client.get("/", headers=auth(keys[role])).status_code == 200


def test_backfills_route_gives_progress(client, board, keys, conn):
    assert client.get("/api/backfills").status_code == 401
    got = client.get("/api/backfills", headers=auth(keys["viewer"]))
    assert got.status_code == 200
    rows = got.json()
    assert rows[0]["rollup"] == "bf_running"  # running first
    by = {r["rollup"]: r for r in rows}
    assert by["bf_running"]["progress"] == 0.4
    assert by["bf_succeeded"]["progress"] == 1.0
    assert by["bf_failed"]["progress"] == 0.2 and by["bf_failed"]["error"] == "boom"
    only = client.get("/api/backfills", params={"status": "running"},
                      headers=auth(keys["viewer"])).json()
    assert [r["rollup"] for r in only] == ["bf_running"]
    assert client.get("/api/backfills", params={"status": "nope"},
                      headers=auth(keys["viewer"])).status_code == 422


def test_progress_is_clamped():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    row = {"status": "running", "range_start": start, "range_end": start + timedelta(hours=4)}
    assert progress({**row, "done_until": start}) == 0.0
    assert progress({**row, "done_until": start + timedelta(hours=1)}) == 0.25
    assert progress({**row, "done_until": start + timedelta(hours=9)}) == 1.0


def test_report_page_serves_the_stored_report(client, loaded, conn, keys):  # noqa: F811
    assert client.get(f"/reports/{DAY}", headers=auth(keys["viewer"])).status_code == 404
    assert client.get("/api/reports/latest", headers=auth(keys["viewer"])).status_code == 404
    reports.store(conn, DAY)
    assert client.get(f"/reports/{DAY}").status_code == 401
    got = client.get(f"/reports/{DAY}", params={"token": keys["viewer"]})
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    assert f"Daily report {DAY}" in got.text and '<svg class="chart"' in got.text
    latest = client.get("/api/reports/latest", headers=auth(keys["viewer"])).json()
    assert latest == {"day": DAY.isoformat(), "url": f"/reports/{DAY}"}
    assert client.get("/reports/2020-01-01", headers=auth(keys["viewer"])).status_code == 404
    assert client.get("/reports/yesterday", headers=auth(keys["viewer"])).status_code == 422
    page = client.get("/", headers=auth(keys["viewer"])).text
    assert f'href="/reports/{DAY}"' in page


# -- the real server in a real browser -----------------------------------------------------------
def wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer in {seconds} s"
            time.sleep(0.2)


def test_dashboard_in_headless_chromium(board, keys, db_url, tmp_path):
    browser = chromium()
    port = free_port()
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "aggjobs", "serve", "--port", str(port)], env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", server, log)
        url = f"http://127.0.0.1:{port}/?token={keys['viewer']}"
        dom = headless(browser, tmp_path / "profile", "--virtual-time-budget=5000",
                       "--dump-dom", url).stdout
        shot = tmp_path / "dashboard.png"
        headless(browser, tmp_path / "profile", "--virtual-time-budget=5000",
                 "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", url)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=20)
    assert 'data-ready="1"' in dom  # the page's script ran
    assert '<span id="verdict">unhealthy</span>' in dom
    for job in JOBS:
        assert f'data-job="{job}"' in dom and f'id="chart-{job}"' in dom
    assert re.search(r'<rect class="run failed" data-status="failed"', dom)
    assert re.search(r'<rect class="run succeeded"', dom)
    assert "<script>alert" not in dom and "RuntimeError: &lt;script&gt;" in dom
    assert "bf_running" in dom and "40%" in dom
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    # the script carried the token into the report link
    assert f'href="/reports/{yesterday}?token={keys["viewer"]}"' in dom
    assert shot.exists() and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- `aggjobs up` prints the dashboard's address --------------------------------------------------
def broker() -> str:
    import redis

    url = os.environ.get("AGGJOBS_TEST_BROKER_URL") or "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            pytest.fail(f"no Redis broker at {url}: {exc}")
        pytest.skip(f"no Redis broker at {url}: {exc}")
    return url


def test_up_prints_a_working_dashboard_address(db_url, conn, tmp_path):
    port = free_port()
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url, "AGGJOBS_BROKER_URL": broker(),
           "AGGJOBS_QUEUE": f"aggjobs-test-up-{os.getpid()}-{port}"}
    log = tmp_path / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "aggjobs", "up", "--demo-days", "1", "--port", str(port)],
            env=env, stdout=subprocess.PIPE, stderr=out, text=True, start_new_session=True)
    try:
        line, deadline = "", time.monotonic() + 180
        while not line.startswith("dashboard: "):
            assert time.monotonic() < deadline and up.poll() is None, log.read_text()
            line = up.stdout.readline()
        address = line.split(" ", 1)[1].strip()
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=agj_[\w-]+", address)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as got:
            assert got.status == 200
        with urllib.request.urlopen(address, timeout=30) as got:
            page = got.read().decode()
        assert got.status == 200 and '<span id="verdict">' in page
        name, role = conn.execute("SELECT name, role FROM aggjobs.api_tokens").fetchone()
        assert name.startswith("up-") and role == "admin"
    finally:
        os.killpg(up.pid, 15)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, 9)
            up.wait()
        up.stdout.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_rebuild_in_progress_shows_its_version_progress_and_failed_check() -> None:
    from aggjobs.api.dashboard import rebuild_rows

    html = rebuild_rows({"rebuilds": [
        {"rollup": "execution_metrics", "version": 2, "live_version": 1, "progress": 0.634,
         "check_error": None},
        {"rollup": "agent_costs", "version": 5, "live_version": 4, "progress": 1.0,
         "check_error": "1 mismatch(es) <first>"}]})
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", html)
    assert rows == [
        ("execution_metrics", "v2 (v1 live until the swap)", '<span class="pct">63%</span>', ""),
        ("agent_costs", "v5 (v4 live until the swap)", '<span class="pct">100%</span>',
         "1 mismatch(es) &lt;first&gt;")]
