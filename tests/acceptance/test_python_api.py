"""The Python API (aggjobs.refresh, verify, backfill, status, run_job, report) against a real
database, its results checked against the `aggjobs` command's output for the same call: the
stateful calls on two identical databases (one for Python, one for the command), the others
on one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import aggjobs
from aggjobs import reports
from aggjobs.cli import render
from aggjobs.errors import AggjobsError, InvalidRange, UnknownRollup
from aggjobs.settings import Settings
from tests import platform as p
from tests.acceptance.test_cli import cli
from tests.conftest import copy_of, create_database, drop_database

T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, in the past
DAYS = 3
AS_OF = T0 + timedelta(days=DAYS, minutes=5)
VOLATILE = {"checked_at", "seconds", "age_seconds", "down_seconds", "lag_seconds",
            "started_at", "refreshed_at", "finished_at", "generated_at", "ms"}


def seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        p.seed_sources(conn, T0, rows=DAYS * 24 * 6, every=timedelta(minutes=10))


@pytest.fixture
def twin_url(server_url: str, template_db: str) -> Iterator[str]:
    """A second copy of the template: the command's database when Python changes the
    first."""
    yield from copy_of(server_url, template_db, "aggjobs_twin")


def stable(value: object) -> object:
    """JSON `value` without what depends on the instant it was computed."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def as_json(value: object) -> object:
    return json.loads(render.to_json(value))


def cli_json(*args: str, url: str, extra_env: dict[str, str] | None = None) -> object:
    done = cli(*args, url=url, extra_env=extra_env)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_refresh_gives_the_reports_the_command_prints(db_url, twin_url) -> None:
    seed(db_url)
    seed(twin_url)
    got = aggjobs.refresh(as_of=AS_OF, database=db_url, settings=Settings(database_url=db_url))
    printed = cli_json("refresh", "--as-of", AS_OF.isoformat(), "--json", url=twin_url)
    assert stable([render.refresh_json(r) for r in got]) == stable(printed)
    assert sum(r.rows_written for r in got) > 0


def test_refresh_on_a_connection_and_bad_input(conn, db_url) -> None:
    seed(db_url)
    settings = Settings(database_url=db_url)
    got = aggjobs.refresh(["user_activity"], grain="hour", as_of=AS_OF, database=conn,
                          settings=settings)
    assert [r.rollup for r in got] == ["user_activity"] and not conn.closed
    assert [g.grain.value for g in got[0].grains] == ["hour"]
    with pytest.raises(UnknownRollup):
        aggjobs.refresh(["nope"], database=conn, settings=settings)
    with pytest.raises(InvalidRange, match="in the future"):
        aggjobs.refresh(as_of=datetime.now(UTC) + timedelta(days=1), database=conn,
                        settings=settings)


def test_status_is_what_status_json_prints(db_url) -> None:
    seed(db_url)
    settings = Settings(database_url=db_url)
    aggjobs.refresh(as_of=AS_OF, database=db_url, settings=settings)
    got = aggjobs.status(database=db_url, settings=settings)
    printed = cli_json("status", "--json", url=db_url, extra_env={
        "AGGJOBS_LIVENESS_SECONDS": str(settings.liveness_seconds)})
    assert stable(as_json(got.as_dict())) == stable(printed)
    assert got.healthy is printed["healthy"] is False  # no worker ever ran here


def test_run_job_gives_the_result_run_json_prints(db_url, twin_url, conn) -> None:
    seed(db_url)
    seed(twin_url)
    got = aggjobs.run_job("hourly_rollup", as_of=AS_OF, database=db_url,
                          settings=Settings(database_url=db_url))
    printed = cli_json("run", "hourly_rollup", "--as-of", AS_OF.isoformat(), "--json",
                       url=twin_url)
    mine = stable(as_json(render.run_json(got)))
    assert isinstance(mine, dict) and isinstance(printed, dict)
    for step, theirs in zip(mine.pop("steps"), printed.pop("steps"), strict=True):
        assert step == stable(theirs)
    assert mine == stable(printed)
    assert got.status == "succeeded"
    actor = conn.execute("SELECT actor FROM aggjobs.audit_log WHERE action = 'run'").fetchone()
    assert actor is not None and actor[0].startswith("python:")


def test_report_is_what_report_format_json_prints(db_url) -> None:
    seed(db_url)
    aggjobs.refresh(as_of=AS_OF, database=db_url, settings=Settings(database_url=db_url))
    day = T0.date() + timedelta(days=1)
    for workspace in (None, 2):
        got = aggjobs.report(day.isoformat(), workspace, database=db_url,
                             settings=Settings(database_url=db_url))
        args = ["--workspace", str(workspace)] if workspace else []
        done = cli("report", "--day", str(day), *args, "--format", "json", url=db_url)
        assert done.returncode == 0, done.stderr
        assert stable(json.loads(reports.render(got.report, "json"))) == stable(
            json.loads(done.stdout))
        assert got.origin in done.stderr


def test_verify_finds_and_repairs_what_the_command_lists(db_url, conn) -> None:
    seed(db_url)
    settings = Settings(database_url=db_url)
    aggjobs.refresh(as_of=AS_OF, database=db_url, settings=settings)
    start, end = T0, T0 + timedelta(days=1)
    assert aggjobs.verify(start=start, end=end, database=conn, settings=settings) == []
    conn.execute("UPDATE analytics.execution_metrics_hourly SET total_executions = 999"
                 " WHERE workspace_id = 2 AND hour = %s", [T0 + timedelta(hours=3)])
    found = aggjobs.verify(["execution_metrics"], start=start, end=end, database=conn,
                           settings=settings)
    assert [(m.rollup, m.grain.value, m.workspace_id, m.measure) for m in found] == [
        ("execution_metrics", "hour", 2, "total_executions")]
    printed = cli_json("verify", "execution_metrics", "--from", start.isoformat(), "--to",
                       end.isoformat(), "--json", url=db_url)
    assert [m for g in printed for m in g["mismatches"]] == [
        as_json(render.mismatch_json(m)) for m in found]
    table = cli("verify", "execution_metrics", "--from", start.isoformat(), "--to",
                end.isoformat(), url=db_url)
    assert table.returncode == 1 and "999" in table.stdout, table.stdout
    assert aggjobs.verify(["execution_metrics"], start=start, end=end, repair=True,
                          database=conn, settings=settings) == []
    assert cli("verify", "--from", start.isoformat(), "--to", end.isoformat(),
               url=db_url).returncode == 0


def test_backfill_gives_the_reports_the_command_prints(db_url, twin_url) -> None:
    seed(db_url)
    seed(twin_url)
    for url in (db_url, twin_url):
        aggjobs.refresh(as_of=AS_OF, database=url, settings=Settings(database_url=url))
    start, end = T0 + timedelta(hours=2), T0 + timedelta(hours=8)
    got = aggjobs.backfill(["credit_consumption", "user_activity"], start=start, end=end,
                           database=db_url, settings=Settings(database_url=db_url))
    printed = cli_json("backfill", "credit_consumption", "user_activity", "--from",
                       start.isoformat(), "--to", end.isoformat(), "--json", url=twin_url)
    # the same work on the twin database: all but the backfill's own row id
    assert [{**r, "backfill_id": None} for r in printed] == [  # type: ignore[union-attr]
        {**as_json(render.backfill_json(r)), "backfill_id": None} for r in got]
    assert all(asdict(r)["buckets"] > 0 for r in got)


def test_a_database_not_migrated_is_refused(server_url) -> None:
    name = f"aggjobs_empty_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    try:
        with pytest.raises(AggjobsError, match="migrate"):
            aggjobs.status(database=url, settings=Settings(database_url=url))
    finally:
        drop_database(server_url, name)
