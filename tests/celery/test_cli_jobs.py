"""`aggjobs run` and the Celery commands, as a user runs them (docs/contract.md#commands)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain
from aggjobs.jobs.registry import JOBS
from tests import platform as p
from tests.reference import assert_matches

AGGJOBS = Path(sys.executable).parent / "aggjobs"
T0 = datetime(2026, 11, 2, tzinfo=UTC)


def cli(*args: str, url: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
    env["COLUMNS"] = "200"
    if url is not None:
        env["AGGJOBS_DATABASE_URL"] = url
    return subprocess.run([str(AGGJOBS), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def runs(conn) -> int:
    return conn.execute("SELECT count(*) FROM aggjobs.job_runs").fetchone()[0]


def test_run_hourly_rollup(db_url, conn) -> None:
    p.seed_sources(conn, T0, rows=24 * 6, every=timedelta(minutes=10))
    as_of = T0 + timedelta(hours=24, minutes=5)
    result = cli("run", "hourly_rollup", "--as-of", as_of.isoformat(), url=db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    for rollup in BUILTIN_ROLLUPS:
        assert f"{rollup.name}.hour" in result.stdout, result.stdout
        assert_matches(conn, rollup.name, Grain.HOUR, T0 + timedelta(hours=24))
    assert "view.workspace_overview" in result.stdout
    row = conn.execute("SELECT status, trigger, as_of FROM aggjobs.job_runs").fetchall()
    assert row == [("succeeded", "manual", as_of)]


def test_run_default_as_of_is_now(db_url, conn) -> None:
    result = cli("run", "hourly_rollup", url=db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "execution_metrics.hour" in result.stdout
    age = conn.execute("SELECT now() - as_of FROM aggjobs.job_runs").fetchone()[0]
    assert timedelta(0) <= age < timedelta(minutes=2)


def test_run_json(db_url, conn) -> None:
    p.seed_sources(conn, T0, rows=6 * 6, every=timedelta(minutes=10))
    result = cli("run", "refresh_materialized_views", "--json", url=db_url)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["job"] == "refresh_materialized_views" and doc["status"] == "succeeded"
    assert [s["name"] for s in doc["steps"]] == ["view.caches", "view.workspace_overview",
                                                 "view.platform_daily_overview"]
    assert all(s["status"] == "succeeded" for s in doc["steps"])
    result = cli("run", "hourly_rollup", "--as-of", (T0 + timedelta(hours=7)).isoformat(),
                 "--json", url=db_url)
    doc = json.loads(result.stdout)
    step = next(s for s in doc["steps"] if s["name"] == "execution_metrics.hour")
    assert step["detail"]["hour"]["new_buckets"] == 7, step  # hours 00:00-06:00


def test_run_unknown_job(db_url, conn) -> None:
    result = cli("run", "nope", url=db_url)
    assert result.returncode == 2
    line = one_line(result)
    assert "nope" in line and all(name in line for name in JOBS), line
    assert runs(conn) == 0


@pytest.mark.parametrize("as_of", ["garbage", "2999-01-01T00:00:00Z"])
def test_run_bad_as_of(db_url, conn, as_of: str) -> None:
    result = cli("run", "hourly_rollup", "--as-of", as_of, url=db_url)
    assert result.returncode == 2, result.stdout + result.stderr
    one_line(result)
    assert runs(conn) == 0


def test_run_without_a_job_is_a_usage_error(db_url) -> None:
    result = cli("run", url=db_url)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "worker", "beat", "up"])
def test_job_commands_have_help(command: str) -> None:
    result = cli(command, "--help", url=None)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
