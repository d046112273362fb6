"""Prometheus and Grafana (docs/operations.md): a real `aggjobs serve`'s /metrics passes
`promtool check metrics`; contrib/prometheus/alerts.yml passes `promtool check rules` and its
`promtool test rules` file tests each alert firing and not firing; every query of
contrib/grafana/aggjobs.json and of the rules is valid PromQL naming metrics /metrics
exports. promtool is Debian's `prometheus` package (CI installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aggjobs.api import tokens
from tests.api.serve import serving

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "aggjobs.json"
METRIC = re.compile(r"\baggjobs_[a-z0-9_]+")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: apt-get install prometheus")
        pytest.skip("promtool is missing: apt-get install prometheus")
    return found


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


def with_state(conn: psycopg.Connection) -> None:
    """What the history fixture lacks: live and gone processes, a running backfill."""
    conn.execute(
        "INSERT INTO aggjobs.heartbeats (kind, name, host, pid, queues, version, stopped_at)"
        " VALUES ('worker', 'w1@h', 'h', 1, '{aggjobs}', '0.1.0', NULL),"
        " ('worker', 'w0@h', 'h', 2, '{aggjobs}', '0.1.0', now()),"
        " ('scheduler', 'beat.3@h', 'h', 3, '{}', '0.1.0', NULL)")
    conn.execute(
        "INSERT INTO aggjobs.backfills (rollup, grain, range_start, range_end, done_until)"
        " VALUES ('execution_metrics', 'hour', '2026-11-01', '2026-11-03', '2026-11-02')")


def finish_a_run(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, started_at,"
        " finished_at, host, pid, steps) VALUES ('hourly_rollup', 'manual', 't', now(),"
        " 'succeeded', now() - interval '3 seconds', now(), 'h', 1,"
        " '[{\"name\": \"s\", \"rows\": 4}]')")


@pytest.fixture
def scraped(history, conn: psycopg.Connection, db_url: str) -> str:
    """The text of /metrics from a real `aggjobs serve`, with every kind of data present:
    its second scrape, after a run finished between the two (so the counters and the
    histogram have samples)."""
    with_state(conn)
    secret, _ = tokens.create(conn, "prometheus", "viewer", actor="tests")
    headers = {"Authorization": f"Bearer {secret}"}
    with serving({**os.environ, "AGGJOBS_DATABASE_URL": db_url}) as served:
        first = httpx.get(f"{served.base}/metrics", headers=headers, timeout=30)
        assert first.status_code == 200, first.text
        finish_a_run(conn)
        second = httpx.get(f"{served.base}/metrics", headers=headers, timeout=30)
        assert second.status_code == 200, second.text
    return second.text


def exported(text: str) -> set[str]:
    """Every family and sample name of a scrape (a counter `x` exports `x_total`)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def test_metrics_of_a_real_server_pass_promtool(scraped: str, promtool: str) -> None:
    checked = run(promtool, "check", "metrics", stdin=scraped)
    assert checked.returncode == 0 and not checked.stdout.strip(), (
        checked.stdout + checked.stderr)
    samples = {s.name: s for f in text_string_to_metric_families(scraped) for s in f.samples}
    for name in ("aggjobs_job_runs_total", "aggjobs_job_run_duration_seconds_bucket",
                 "aggjobs_job_rows_written_total", "aggjobs_job_runs_retained",
                 "aggjobs_worker_up", "aggjobs_scheduler_up", "aggjobs_workers_up",
                 "aggjobs_worker_heartbeat_age_seconds", "aggjobs_backfill_progress",
                 "aggjobs_rollup_quarantined_buckets", "aggjobs_job_running_seconds"):
        assert name in samples, name
    assert 'aggjobs_worker_up{name="w1@h"} 1.0' in scraped
    c_path = {(s.labels["rollup"], s.value) for f in text_string_to_metric_families(scraped)
              if f.name == "aggjobs_rollup_c_functions" for s in f.samples}
    # the built-in ones with a quantile or a distinct count
    assert {r for r, _ in c_path} == {"execution_metrics", "user_activity"}
    assert {v for _, v in c_path} in ({0.0}, {1.0})  # one path for all its grains
    assert 'aggjobs_worker_up{name="w0@h"} 0.0' in scraped  # stopped
    assert "aggjobs_workers_up 1.0" in scraped and "aggjobs_schedulers_up 1.0" in scraped
    assert ('aggjobs_job_runs_total{job_name="hourly_rollup",status="succeeded"} 1.0'
            in scraped)
    assert 'aggjobs_backfill_progress{backfill="1",grain="hour",rollup="execution_metrics"}' \
           ' 0.5' in scraped
    # nothing read back from the history is typed a counter, nor named like one
    for family in text_string_to_metric_families(scraped):
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name


def test_alert_rules_pass_promtool_and_each_is_tested_firing_and_not(promtool: str) -> None:
    checked = run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"]}
    assert {"AggjobsJobFailing", "AggjobsJobOverBudget", "AggjobsRollupStale",
            "AggjobsNoWorker", "AggjobsNoScheduler", "AggjobsBucketQuarantined",
            "AggjobsBackfillStalled", "AggjobsRebuildStalled"} <= alerts
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for c in t["alert_rule_test"]]
    for alert in alerts:
        outcomes = {bool(c["exp_alerts"]) for c in cases if c["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert} is not tested both firing and not firing"


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] if p["type"] != "row"
            for t in p["targets"]]


def test_every_query_is_valid_promql_naming_exported_metrics(
        scraped: str, promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    titles = " ".join(t for t, _ in queries).lower()
    for topic in ("duration", "failures", "lag", "pending", "workers alive",
                  "schedulers alive", "backfill"):
        assert topic in titles, topic
    rules = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"]
             for r in g["rules"]]
    # Each query as a recording rule: promtool parses it as PromQL.
    as_rules = {"groups": [{"name": "queries", "rules": [
        {"record": f"aggjobs_check:q{i}", "expr": expr}
        for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(as_rules))
    parsed = run(promtool, "check", "rules", str(path))
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    names = exported(scraped)
    for title, expr in queries + [("alerts.yml", e) for e in rules]:
        used = set(METRIC.findall(expr))
        assert used, (title, expr)
        assert used <= names, (title, sorted(used - names))
