"""`aggjobs report` as users run it (a subprocess), and the HTML report in headless Chromium."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from aggjobs import reports
from tests.acceptance.test_cli import cli, one_line_error
from tests.browser import chromium, headless
from tests.reports.conftest import AS_OF, DAY, FIRST, Loaded


def run_ok(*args: str, url: str) -> subprocess.CompletedProcess:
    result = cli("report", *args, url=url)
    assert result.returncode == 0, result.stderr
    return result


def test_formats_on_the_fly(shared: Loaded) -> None:
    with psycopg.connect(shared.url, autocommit=True) as conn:
        built = reports.build(conn, DAY)
    md = run_ok("--day", DAY.isoformat(), url=shared.url)
    assert "built from the rollups now (not stored)" in md.stderr
    assert md.stdout.startswith(f"# Daily report {DAY} — platform")
    for heading in ("## Totals", "## Top workspaces by runs", "## Biggest movers",
                    "## Worst hours", "## Worst agents", "## Health", "## Credit ledger"):
        assert heading in md.stdout
    runs = built[None]["totals"]["runs"]["value"]
    assert re.search(rf"\| Runs \| {runs:,} \|", md.stdout)

    js = json.loads(run_ok("--day", DAY.isoformat(), "--format", "json", url=shared.url).stdout)
    assert {**js, "generated_at": None} == {**built[None], "generated_at": None}

    ws = json.loads(run_ok("--day", DAY.isoformat(), "--workspace", "3", "--format", "json",
                           url=shared.url).stdout)
    assert ws["workspace_id"] == 3 and ws["kind"] == "workspace"

    text = run_ok("--day", DAY.isoformat(), "--format", "csv", url=shared.url).stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["section", "key", "field", "value"]
    assert all(len(r) == 4 for r in rows)
    cells = {(s, k, f): v for s, k, f, v in rows[1:]}
    assert cells[("totals", "runs", "value")] == str(runs)
    assert cells[("report", "day", "")] == DAY.isoformat()
    assert cells[("top_workspaces.by_runs", "1", "workspace_id")] == "2"
    assert cells[("ledger", "mismatch_count", "")] == "2"
    assert ("hourly", "24", "runs") in cells


def test_stored_report_is_read_back(loaded, db_url: str, conn: psycopg.Connection,
                                    tmp_path: Path) -> None:
    reports.store(conn, DAY)
    stored = conn.execute("SELECT report FROM analytics.daily_reports WHERE day = %s"
                          " AND workspace_id = 2", (DAY,)).fetchone()[0]
    out = tmp_path / "ws2.json"
    result = run_ok("--day", DAY.isoformat(), "--workspace", "2", "--format", "json",
                    "--output", str(out), url=db_url)
    assert "stored report from analytics.daily_reports" in result.stderr
    assert result.stdout == ""
    assert json.loads(out.read_text()) == stored  # generated_at included: the stored one


def test_bad_input_exits_2_with_one_line(shared: Loaded) -> None:
    today = datetime.now(UTC).date()
    cases = {
        ("--day", DAY.isoformat(), "--workspace", "999"): "unknown workspace 999",
        # 6 has only credit transactions that day: known, not active.
        ("--day", DAY.isoformat(), "--workspace", "6"): "had no runs or user events",
        ("--day", (FIRST - timedelta(days=30)).isoformat()): "no data for",
        ("--day", (AS_OF.date() + timedelta(days=2)).isoformat()): "not rolled up yet",
        ("--day", today.isoformat()): "not over yet",
        ("--day", (today + timedelta(days=3)).isoformat()): "not over yet",
        ("--day", "2026-13-01"): "is not a date",
    }
    for args, reason in cases.items():
        result = cli("report", *args, url=shared.url)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert reason in one_line_error(result), args
        assert result.stdout == ""
    usage = cli("report", "--day", DAY.isoformat(), "--format", "pdf", url=shared.url)
    assert usage.returncode == 2 and "pdf" in usage.stderr
    missing = cli("report", url=shared.url)
    assert missing.returncode == 2 and "--day" in missing.stderr


# -- the HTML report in headless Chromium -------------------------------------------------------
def test_html_report_in_headless_chromium(shared: Loaded, tmp_path: Path) -> None:
    browser = chromium()
    page = tmp_path / "report.html"
    run_ok("--day", DAY.isoformat(), "--format", "html", "--output", str(page), url=shared.url)
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch
    assert "<script" not in html
    with psycopg.connect(shared.url, autocommit=True) as conn:
        report = reports.build(conn, DAY)[None]

    dom = headless(browser, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    charts = re.findall(r'<svg class="chart" id="([\w-]+)".*?</svg>', dom, flags=re.DOTALL)
    assert charts == ["chart-runs", "chart-p95", "chart-credits"]
    bodies = dict(re.findall(r'<svg class="chart" id="([\w-]+)"(.*?)</svg>', dom, flags=re.DOTALL))
    titles = [re.search(r"<title[^>]*>(.*?)</title>", b).group(1) for b in bodies.values()]
    assert titles == ["Runs and failures per hour", "p95 runtime per hour (seconds)",
                      "Credits per hour"]

    def points(chart: str, series: str) -> dict[str, float]:
        return {h: float(v) for h, v in re.findall(
            rf'data-series="{re.escape(series)}" data-hour="([\d:]+)" data-value="([\d.e+-]+)"',
            bodies[chart])}

    hourly = reports.hour_rows(report["hourly"])
    failed = points("chart-runs", "failed")
    assert failed and sum(failed.values()) == report["totals"]["failed_runs"]["value"]
    succeeded = points("chart-runs", "succeeded")
    assert sum(succeeded.values()) == report["totals"]["successful_runs"]["value"]
    p95 = points("chart-p95", "p95 runtime")
    assert len(p95) == sum(1 for h in hourly if h["p95_runtime"] is not None) > 0
    for h in hourly:
        if h["p95_runtime"] is not None:
            assert p95[h["hour"][11:16]] == pytest.approx(h["p95_runtime"], rel=1e-4)
    used = points("chart-credits", "used (ledger)")
    assert sum(used.values()) == pytest.approx(report["totals"]["credits_used"]["value"])
    assert len(points("chart-credits", "consumed by runs")) == 24
    for heading in ("Totals", "Worst hours", "Credit ledger reconciliation (mismatches)"):
        assert f"<h2>{heading}</h2>" in dom

    shot = tmp_path / "report.png"
    headless(browser, tmp_path / "profile", "--hide-scrollbars", "--window-size=1000,2600",
             f"--screenshot={shot}", page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
