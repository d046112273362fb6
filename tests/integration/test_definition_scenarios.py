"""Rollup definitions that evolve (docs/rollups.md, "Changing a rollup"), end to end against a
real PostgreSQL: a declaration changed in code is refused until `aggjobs migrate` has run,
then rebuilt beside the live version and swapped in, or changed in place when the tables
can take it; the jobs, the alerts, status and the CLI say what differs and what to do.

A change to a built-in rollup is simulated by replacing aggjobs.catalog.declared's
BUILTIN_ROLLUPS (what `rollups()` returns first), as a release changing families.py would.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from aggjobs.catalog import Grain, Quantile, Rollup, declared
from aggjobs.catalog import families as f
from aggjobs.db import definitions
from aggjobs.db.migrate import migrate
from aggjobs.db.view_caches import update_view_caches
from aggjobs.engine.refresh import refresh
from aggjobs.engine.verify import verify_grain
from aggjobs.errors import DefinitionsChanged
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.monitor import current_problems, overview
from aggjobs.settings import Settings
from aggjobs.sql import live
from aggjobs.sql.rollup import table_ident
from tests import platform as p
from tests.acceptance.test_cli import cli, one_line_error
from tests.integration.test_alerts import Receiver, receiver  # noqa: F401 (fixture)
from tests.integration.test_live_views import assert_same, rows_of
from tests.integration.test_monitor import NOW, fresh  # noqa: F401 (fixture)

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, in the past
H, D = timedelta(hours=1), timedelta(days=1)
AS_OF = T0 + 7 * D  # a week of data, [T0, AS_OF): every hour, day and the week complete
EM = f.EXECUTION_METRICS
P99 = Quantile(name="p99_runtime", column="runtime_seconds", q=0.99)
EM_P99 = dataclasses.replace(EM, measures=(*EM.measures, P99))
KEEP_ALL = {"raw": 0, "hourly": 0, "daily": 0, "weekly": 0, "job_runs": 0}
HOURLY = "analytics.execution_metrics_hourly"
# v1's columns besides the one added (compared before and after a change)
EM_COLUMNS = ("workspace_id, hour, total_executions, successful_executions, failed_executions,"
              " avg_runtime, p95_runtime, total_credits")


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def declare() -> Iterator[Callable[..., None]]:
    """declare(*rollups): the built-in rollups with those of the same names replaced (none:
    as released); put back after the test."""
    original = declared.BUILTIN_ROLLUPS

    def set_(*changed: Rollup) -> None:
        by_name = {r.name: r for r in changed}
        declared.BUILTIN_ROLLUPS = tuple(by_name.get(r.name, r) for r in original)
        declared.load.cache_clear()

    yield set_
    declared.BUILTIN_ROLLUPS = original
    declared.load.cache_clear()


@pytest.fixture
def week(conn: psycopg.Connection, settings: Settings) -> Settings:
    """A week of runs (30 an hour over three workspaces, every status, NULL runtimes among
    them), refreshed under the released declarations. The other sources stay empty: the
    rollups here are those over agent_runs."""
    p.seed_runs(conn, T0, rows=7 * 24 * 30, every=timedelta(minutes=2))
    p.refresh_all(conn, settings, AS_OF)
    return settings.model_copy(update={"hours_per_transaction": 24})


def column_names(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
        " AND table_name = %s ORDER BY ordinal_position", (schema, table))]


def tables_in(conn: psycopg.Connection, schema: str) -> list[str]:
    return sorted(r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)))


def definition_rows(conn: psycopg.Connection, rollup: str) -> list[tuple]:
    return conn.execute("SELECT version, state FROM aggjobs.rollup_definitions"
                        " WHERE rollup = %s ORDER BY version", (rollup,)).fetchall()


def state_rows(conn: psycopg.Connection, key: str) -> int:
    return conn.execute(
        "SELECT (SELECT count(*) FROM aggjobs.watermarks WHERE rollup = %(k)s)"
        " + (SELECT count(*) FROM aggjobs.pending_groups WHERE rollup = %(k)s)"
        " + (SELECT count(*) FROM aggjobs.quarantine WHERE rollup = %(k)s)", {"k": key}
    ).fetchone()[0]


def plan_line(done, rollup: str) -> str:
    return next(x for x in done.plan.rollups if x.rollup == rollup).line()


def p99_exact(conn: psycopg.Connection, lo: datetime = T0) -> dict:
    """Per (workspace, hour) from `lo`, percentile_cont(0.99) of the raw runtimes."""
    return {(ws, h): v for ws, h, v in conn.execute(
        "SELECT workspace_id, date_trunc('hour', started_at AT TIME ZONE 'UTC')"
        " AT TIME ZONE 'UTC', percentile_cont(0.99) WITHIN GROUP (ORDER BY runtime_seconds)"
        " FROM public.agent_runs WHERE started_at >= %s GROUP BY 1, 2", (lo,))}


def p99_of_raw(conn: psycopg.Connection, grain: Grain, lo: datetime = T0) -> dict:
    """Per (workspace, day or week) from `lo`, percentile_cont(0.99) of the raw runtimes."""
    bucket = {Grain.DAY: "(started_at AT TIME ZONE 'UTC')::date",
              Grain.WEEK: "date_trunc('week', started_at AT TIME ZONE 'UTC')::date"}[grain]
    return {(ws, b): v for ws, b, v in conn.execute(
        f"SELECT workspace_id, {bucket}, percentile_cont(0.99) WITHIN GROUP"
        " (ORDER BY runtime_seconds) FROM public.agent_runs WHERE started_at >= %s"
        " GROUP BY 1, 2", (lo,))}


def stored_p99(conn: psycopg.Connection, grain: Grain) -> dict:
    return {(ws, b): v for ws, b, v in conn.execute(
        f"SELECT workspace_id, {grain.column}, p99_runtime FROM analytics.{EM.table(grain)}")}


def assert_close(have: dict, want: dict, rel: float) -> None:
    assert have.keys() == want.keys() and want
    for key, w in want.items():
        h = have[key]
        assert (h is None and w is None) or math.isclose(h, w, rel_tol=rel), (key, h, w)


def assert_verifies(conn: psycopg.Connection, rollup: Rollup, lo: datetime = T0,
                    hi: datetime = AS_OF) -> None:
    for grain in rollup.grains:
        report = verify_grain(conn, rollup, grain, lo, hi)
        assert report.mismatches == [], (grain, report.mismatches[:3])


def assert_live_views_match(conn: psycopg.Connection, rollup: Rollup) -> None:
    """The rollup's live views: one per grain, with the table's columns, and (everything
    refreshed, no row after the data's end) its rows."""
    for grain in Grain:
        name = live.view_name(rollup, grain)
        if grain not in rollup.grains:
            assert conn.execute("SELECT to_regclass(%s)", (f"analytics.{name}",)
                                ).fetchone()[0] is None, name
            continue
        assert column_names(conn, "analytics", name) == column_names(
            conn, "analytics", rollup.table(grain))
        assert_same(rows_of(conn, rollup, grain, live.view_ident(rollup, grain)),
                    rows_of(conn, rollup, grain, table_ident(rollup, grain)), name)


def refresh_until_swapped(conn: psycopg.Connection, rollup: Rollup, settings: Settings,
                          as_of: datetime = AS_OF, budget_s: float | None = None) -> list:
    """Refreshes until the rebuild is swapped in; their rebuild reports."""
    seen = []
    for _ in range(50):
        report = refresh(conn, rollup, as_of=as_of, settings=settings, rebuild_budget_s=budget_s)
        assert report.rebuild is not None
        seen.append(report.rebuild)
        if report.rebuild.swapped:
            return seen
    raise AssertionError(f"never swapped: {seen[-1]}")


def cleanup(settings: Settings, as_of: datetime, **retention: int) -> dict:
    result = run_job(RunRequest(job="cleanup_old_data", as_of=as_of), settings.model_copy(
        update={"retention_days": {**KEEP_ALL, **retention}, "retry_attempts": 1}))
    assert result.status == "succeeded", result.error
    return {s.name: vars(s) for s in result.steps}


# -- 1. the scenario --------------------------------------------------------------------
def test_p99_added_to_execution_metrics_is_refused_then_rebuilt_and_swapped(
        conn, week, declare):
    settings = week
    before = conn.execute(f"SELECT {EM_COLUMNS} FROM {HOURLY} ORDER BY 1, 2").fetchall()
    declare(EM_P99)

    # Before migrate: refused, and status says so.
    with pytest.raises(DefinitionsChanged) as refused:
        refresh(conn, EM_P99, as_of=AS_OF, settings=settings)
    message = str(refused.value)
    assert "\n" not in message
    assert "execution_metrics (measures added: p99_runtime)" in message
    assert "run `aggjobs migrate`" in message
    state = overview(conn, settings, now=AS_OF).as_dict()
    assert not state["healthy"]
    assert "definition:execution_metrics" in state["incidents"]
    [problem] = [x for x in state["problems"] if x.startswith("rollup execution_metrics")]
    assert "measures added: p99_runtime" in problem and "run `aggjobs migrate`" in problem
    assert [x.key for x in current_problems(conn, settings, now=AS_OF)] == [
        "definition:execution_metrics"]
    refresh(conn, f.USER_ACTIVITY, as_of=AS_OF, settings=settings)  # the others go on

    # migrate: v2 is rebuilt beside v1.
    done = migrate(conn)
    line = plan_line(done, "execution_metrics")
    assert line.startswith("execution_metrics: changed (v1 -> v2): measures added: p99_runtime")
    assert "rebuilt" in line
    assert {x.action for x in done.plan.rollups if x.rollup != "execution_metrics"} == {
        "unchanged"}
    assert definition_rows(conn, "execution_metrics") == [(1, "live"), (2, "building")]
    assert tables_in(conn, "aggjobs_build") == [
        "execution_metrics_daily", "execution_metrics_hourly", "execution_metrics_weekly"]
    assert overview(conn, settings, now=AS_OF).healthy

    # Refreshes under a time budget (the hourly job's) advance it an hour a transaction and
    # never swap; the live table is v1's until the swap. A refresh without a budget (the
    # daily job's, `aggjobs refresh`) finishes it, checks it and swaps it in.
    progress = []
    for _ in range(4):
        report = refresh(conn, EM_P99, as_of=AS_OF, settings=settings, rebuild_budget_s=0)
        assert report.rebuild is not None and report.rebuild.version == 2
        assert report.rebuild.new_hours == 1 and not report.rebuild.swapped
        progress.append(report.rebuild.progress)
        assert "p99_runtime" not in column_names(conn, "analytics", "execution_metrics_hourly")
        assert_live_views_match(conn, EM)
        assert conn.execute(f"SELECT {EM_COLUMNS} FROM {HOURLY} ORDER BY 1, 2"
                            ).fetchall() == before
    report = refresh(conn, EM_P99, as_of=AS_OF, settings=settings, max_buckets=50)
    assert report.rebuild is not None and not report.rebuild.swapped
    assert report.rebuild.new_hours == 50
    progress.append(report.rebuild.progress)
    report = refresh(conn, EM_P99, as_of=AS_OF, settings=settings)
    assert report.rebuild is not None and report.rebuild.swapped, report.rebuild
    progress.append(report.rebuild.progress)
    assert progress == sorted(set(progress)) and progress[-1] == 1.0, progress

    # After the swap: v2 live, exact against the raw rows, v1 retired.
    assert definition_rows(conn, "execution_metrics") == [(1, "retired"), (2, "live")]
    assert "p99_runtime" in column_names(conn, "analytics", "execution_metrics_hourly")
    assert_live_views_match(conn, EM_P99)  # made by the swap, from v2's definition
    assert_verifies(conn, EM_P99)
    assert_close(stored_p99(conn, Grain.HOUR), p99_exact(conn), 1e-9)
    assert_close(stored_p99(conn, Grain.DAY), p99_of_raw(conn, Grain.DAY), 0.01)
    assert_close(stored_p99(conn, Grain.WEEK), p99_of_raw(conn, Grain.WEEK), 0.01)
    assert conn.execute(f"SELECT {EM_COLUMNS} FROM {HOURLY} ORDER BY 1, 2").fetchall() == before
    assert tables_in(conn, "aggjobs_build") == []
    assert tables_in(conn, "aggjobs_retired") == [
        "execution_metrics_daily__v1", "execution_metrics_hourly__v1",
        "execution_metrics_weekly__v1"]
    assert state_rows(conn, "execution_metrics@v2") == 0

    # The materialized views were made again over the new tables, and refresh.
    readers = {r[0] for r in conn.execute(
        "SELECT DISTINCT r.ev_class::regclass::text FROM pg_depend AS d JOIN pg_rewrite AS r"
        " ON r.oid = d.objid WHERE d.refobjid = ANY(%s::regclass[])",
        ([HOURLY, "analytics.execution_metrics_daily"],))}
    assert {"analytics.workspace_overview", "analytics.platform_daily_overview"} <= readers
    views = run_job(RunRequest(job="refresh_materialized_views", as_of=AS_OF), settings)
    assert views.status == "succeeded", views.error

    # The new version goes on like any: a later hour, exact.
    p.run(conn, ws=1, at=AS_OF + timedelta(minutes=10), runtime=3.0)
    p.run(conn, ws=1, at=AS_OF + timedelta(minutes=20), runtime=7.0)
    report = refresh(conn, EM_P99, as_of=AS_OF + H, settings=settings)
    assert report.rebuild is None
    assert stored_p99(conn, Grain.HOUR)[(1, AS_OF)] == pytest.approx(3.0 + 0.99 * 4.0)
    state = overview(conn, settings, now=AS_OF + H).as_dict()
    assert state["healthy"], state["problems"]


# -- 2. the jobs ------------------------------------------------------------------------------------
def test_the_hourly_job_fails_the_drifted_step_alone_and_alerts_once(
        conn, fresh, receiver, declare):  # noqa: F811
    settings = fresh.model_copy(update={"alert_webhook_url": receiver.url, "alert_failures": 3})

    def hourly():
        return run_job(RunRequest(job="hourly_rollup", as_of=NOW), settings)

    assert hourly().status == "succeeded"
    declare(EM_P99)
    for _ in range(2):
        result = hourly()
        assert result.status == "failed"
        steps = {s.name: s for s in result.steps}
        failed = [name for name, s in steps.items() if s.status != "succeeded"]
        assert failed == ["execution_metrics.hour"]
        assert "measures added: p99_runtime" in steps["execution_metrics.hour"].error
        assert "run `aggjobs migrate`" in steps["execution_metrics.hour"].error
    [(recorded,)] = conn.execute(
        "SELECT s ->> 'error' FROM aggjobs.job_runs AS r, jsonb_array_elements(r.steps) AS s"
        " WHERE r.id = %s AND s ->> 'name' = 'execution_metrics.hour'", (result.id,)
    ).fetchall()
    assert "measures added: p99_runtime" in recorded
    assert "run `aggjobs migrate`" in recorded
    assert receiver.events() == [("fired", "definition:execution_metrics")]
    assert "run `aggjobs migrate`" in receiver.received[0]["todo"]

    migrate(conn)
    result = hourly()
    assert result.status == "succeeded", result.error
    rebuild = {s.name: s for s in result.steps}["execution_metrics.hour"].detail["rebuild"]
    assert rebuild["version"] == 2
    assert receiver.events() == [("fired", "definition:execution_metrics"),
                                 ("resolved", "definition:execution_metrics")]


# -- 3. the CLI ---------------------------------------------------------------------------------------
USER_MODULE = """
from aggjobs.catalog import AGENT_RUNS, Count, Rollup, Sum
ROLLUPS = [Rollup(name="team_runs", source=AGENT_RUNS, description="runs per workspace",
                  measures=({measures}))]
"""


def test_the_cli_refuses_a_user_declaration_changed_after_migrate(db_url, tmp_path):
    module = tmp_path / "drift_rollups_t15.py"
    module.write_text(USER_MODULE.format(measures='Count(name="runs"),'))
    env = {"AGGJOBS_ROLLUPS": "drift_rollups_t15", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def run(*args: str):
        return cli(*args, url=db_url, extra_env=env)

    done = run("migrate")
    assert done.returncode == 0, done.stderr
    assert "team_runs: new (v1)" in done.stdout
    module.write_text(USER_MODULE.format(
        measures='Count(name="runs"), Sum(name="credits", column="credits_consumed")'))

    span = ("--from", "2026-03-02T00:00:00Z", "--to", "2026-03-03T00:00:00Z")
    for args in (("refresh",), ("verify", *span), ("backfill", *span)):
        result = run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        line = one_line_error(result)
        assert "team_runs (measures added: credits)" in line, line
        assert "run `aggjobs migrate`" in line, line
    status = run("status")
    assert status.returncode == 1, status.stderr
    assert "unhealthy: rollup team_runs: its declaration differs" in status.stdout
    assert "measures added: credits" in status.stdout and "aggjobs migrate" in status.stdout
    with psycopg.connect(db_url) as conn:
        assert definition_rows(conn, "team_runs") == [(1, "live")]
        assert column_names(conn, "analytics", "team_runs_hourly")[-2:] == [
            "runs", "updated_at"]

    done = run("migrate")
    assert done.returncode == 0, done.stderr
    assert "team_runs: changed (v1 -> v2): measures added: credits" in done.stdout
    assert run("refresh").returncode == 0


# -- 4. the cheap paths -------------------------------------------------------------------------------
def test_a_removed_measure_is_dropped_in_place(conn, week, declare):
    ae = f.AGENT_EXECUTIONS
    keep = "workspace_id, hour, agent_id, total_executions"
    before = conn.execute(f"SELECT {keep} FROM analytics.agent_executions_hourly ORDER BY 1, 2, 3"
                          ).fetchall()
    marks = p.watermarks(conn)
    smaller = dataclasses.replace(ae, measures=ae.measures[:1])
    declare(smaller)
    line = plan_line(migrate(conn), "agent_executions")
    assert line == ("agent_executions: changed (v1 -> v2): measures removed: failed_executions:"
                    " made in place")
    assert definition_rows(conn, "agent_executions") == [(1, "retired"), (2, "live")]
    assert tables_in(conn, "aggjobs_build") == [] and tables_in(conn, "aggjobs_retired") == []
    for table in ("agent_executions_hourly", "agent_executions_daily"):
        assert "failed_executions" not in column_names(conn, "analytics", table)
    assert conn.execute(f"SELECT {keep} FROM analytics.agent_executions_hourly"
                        " ORDER BY 1, 2, 3").fetchall() == before
    assert p.watermarks(conn) == marks
    report = refresh(conn, smaller, as_of=AS_OF, settings=week)
    assert report.rebuild is None and report.rows_written == 0
    assert_verifies(conn, smaller)
    assert_live_views_match(conn, smaller)


def test_an_added_grain_is_merged_by_the_next_refresh(conn, week, declare):
    weekly = dataclasses.replace(f.AGENT_EXECUTIONS, grains=(Grain.HOUR, Grain.DAY, Grain.WEEK))
    declare(weekly)
    line = plan_line(migrate(conn), "agent_executions")
    assert line == "agent_executions: changed (v1 -> v2): grains added: week: made in place"
    assert tables_in(conn, "aggjobs_build") == []
    assert conn.execute("SELECT count(*) FROM analytics.agent_executions_weekly").fetchone()[0] == 0
    report = refresh(conn, weekly, as_of=AS_OF, settings=week)
    assert report.rebuild is None
    by_grain = {g.grain: g for g in report.grains}
    assert by_grain[Grain.HOUR].new_buckets == 0 and by_grain[Grain.DAY].new_buckets == 0
    assert by_grain[Grain.WEEK].new_buckets == 1
    assert conn.execute("SELECT count(*) FROM analytics.agent_executions_weekly").fetchone()[0] == 3
    assert_verifies(conn, weekly)
    assert_live_views_match(conn, weekly)


def test_a_removed_grain_retires_its_table_pruned_by_migrate(conn, week, declare):
    no_week = dataclasses.replace(EM, grains=(Grain.HOUR, Grain.DAY))
    declare(no_week)
    line = plan_line(migrate(conn), "execution_metrics")
    assert line == "execution_metrics: changed (v1 -> v2): grains removed: week: made in place"
    assert tables_in(conn, "aggjobs_retired") == ["execution_metrics_weekly__v1"]
    assert conn.execute("SELECT to_regclass('analytics.execution_metrics_weekly')").fetchone()[0] \
        is None
    assert ("execution_metrics", "week") not in p.watermarks(conn)
    assert conn.execute("SELECT count(*) FROM aggjobs_retired.execution_metrics_weekly__v1"
                        ).fetchone()[0] == 3
    refresh(conn, no_week, as_of=AS_OF + D, settings=week)
    assert_verifies(conn, no_week)
    assert_live_views_match(conn, no_week)

    assert migrate(conn).dropped == []  # within the grace period: kept
    assert tables_in(conn, "aggjobs_retired") == ["execution_metrics_weekly__v1"]
    assert migrate(conn, prune=True).dropped == ["execution_metrics_weekly__v1"]
    assert tables_in(conn, "aggjobs_retired") == []
    assert conn.execute("SELECT count(*) FROM aggjobs.retired_tables").fetchone()[0] == 0


def test_the_cleanup_job_drops_retired_tables_after_the_grace_period(conn, week, declare):
    declare(dataclasses.replace(EM, grains=(Grain.HOUR, Grain.DAY)))
    migrate(conn)
    settings = week.model_copy(update={"retired_grace_days": 7})
    step = cleanup(settings, AS_OF)["cleanup.retired_tables"]
    assert step["detail"]["dropped"] == []
    assert tables_in(conn, "aggjobs_retired") == ["execution_metrics_weekly__v1"]
    conn.execute("UPDATE aggjobs.retired_tables SET retired_at = now() - interval '6 days'")
    assert cleanup(settings, AS_OF)["cleanup.retired_tables"]["detail"]["dropped"] == []
    conn.execute("UPDATE aggjobs.retired_tables SET retired_at = now() - interval '8 days'")
    step = cleanup(settings, AS_OF)["cleanup.retired_tables"]
    assert step["detail"]["dropped"] == ["execution_metrics_weekly__v1"]
    assert tables_in(conn, "aggjobs_retired") == []


def test_changing_back_before_the_swap_cancels_the_rebuild(conn, week, declare):
    declare(EM_P99)
    migrate(conn)
    report = refresh(conn, EM_P99, as_of=AS_OF, settings=week, rebuild_budget_s=0)
    assert report.rebuild is not None and 0 < report.rebuild.progress < 1
    assert state_rows(conn, "execution_metrics@v2") > 0
    assert len(tables_in(conn, "aggjobs_build")) == 3

    declare()  # as released again
    done = migrate(conn)
    assert plan_line(done, "execution_metrics") == (
        "execution_metrics: changed back to v1: the rebuild of v2 is cancelled")
    assert tables_in(conn, "aggjobs_build") == []
    assert definition_rows(conn, "execution_metrics") == [(1, "live"), (2, "cancelled")]
    assert state_rows(conn, "execution_metrics@v2") == 0
    assert tables_in(conn, "aggjobs_retired") == []
    report = refresh(conn, EM, as_of=AS_OF, settings=week)
    assert report.rebuild is None
    assert plan_line(migrate(conn), "execution_metrics") == "execution_metrics: unchanged (v1)"

    declare(EM_P99)  # and changed again: a new version, rebuilt from the start
    assert plan_line(migrate(conn), "execution_metrics").startswith(
        "execution_metrics: changed (v1 -> v3): measures added: p99_runtime")
    refresh_until_swapped(conn, EM_P99, week)
    assert definition_rows(conn, "execution_metrics") == [
        (1, "retired"), (2, "cancelled"), (3, "live")]
    assert_verifies(conn, EM_P99)


# -- 5. retention -------------------------------------------------------------------------------------
HORIZON = T0 + 3 * D  # raw rows kept 4 days before AS_OF


@pytest.fixture
def cut(conn, week) -> Settings:
    """The week, with the raw rows before HORIZON deleted by the cleanup job."""
    step = cleanup(week, AS_OF, raw=4)["cleanup.agent_runs"]
    assert step["rows"] > 0 and step["detail"]["limit"] == HORIZON.isoformat()
    assert conn.execute("SELECT min(started_at) FROM agent_runs").fetchone()[0] == HORIZON
    assert definitions.stored_definitions(conn)["execution_metrics"].version == 1
    assert conn.execute("SELECT horizon FROM aggjobs.watermarks WHERE rollup ="
                        " 'execution_metrics' AND grain = 'hour'").fetchone()[0] == HORIZON
    return week


def test_a_measure_added_after_retention_keeps_the_history_with_it_null(conn, cut, declare):
    before = conn.execute(f"SELECT {EM_COLUMNS} FROM {HOURLY} WHERE hour < %s ORDER BY 1, 2",
                          (HORIZON,)).fetchall()
    assert before
    declare(EM_P99)
    line = plan_line(migrate(conn), "execution_metrics")
    assert "buckets before 2026-03-05 00:00 UTC (raw rows deleted by retention) keep v1's" \
           " values, with p99_runtime NULL there" in line
    refresh_until_swapped(conn, EM_P99, cut)

    assert conn.execute(f"SELECT {EM_COLUMNS} FROM {HOURLY} WHERE hour < %s ORDER BY 1, 2",
                        (HORIZON,)).fetchall() == before
    hourly = stored_p99(conn, Grain.HOUR)
    assert {v for (_, h), v in hourly.items() if h < HORIZON} == {None}
    assert_close({k: v for k, v in hourly.items() if k[1] >= HORIZON},
                 p99_exact(conn, HORIZON), 1e-9)
    daily = stored_p99(conn, Grain.DAY)
    assert {v for (_, d), v in daily.items() if d < HORIZON.date()} == {None}
    assert_close({k: v for k, v in daily.items() if k[1] >= HORIZON.date()},
                 p99_of_raw(conn, Grain.DAY, HORIZON), 0.01)
    # the one week began before the horizon: kept as v1 had it
    assert set(stored_p99(conn, Grain.WEEK).values()) == {None}
    assert_verifies(conn, EM_P99, HORIZON)


def cached_p95(conn: psycopg.Connection) -> dict:
    return dict(conn.execute("SELECT day, p95_runtime FROM analytics.platform_daily_stats"))


def test_the_view_caches_follow_a_swap_even_where_history_was_kept(conn, cut, declare):
    """The caches behind the materialized views recompute a value when its input rows'
    stamp changes; the buckets kept from v1 before retention's cut keep theirs, so the swap
    must make them recompute: afterwards the caches equal a recomputation from nothing."""
    today = AS_OF.date()
    update_view_caches(conn, today)
    before = cached_p95(conn)
    assert before[T0.date()] is not None
    p95 = next(m for m in EM.measures if m.name == "p95_runtime")
    changed = dataclasses.replace(EM, measures=tuple(
        dataclasses.replace(m, q=0.9) if m is p95 else m for m in EM.measures))
    declare(changed)
    migrate(conn)
    refresh_until_swapped(conn, changed, cut)

    update_view_caches(conn, today)
    after = cached_p95(conn)
    conn.execute("TRUNCATE analytics.platform_daily_stats, analytics.workspace_window_stats")
    update_view_caches(conn, today)
    assert after == cached_p95(conn)
    # before the cut, v2 keeps no sketch of the changed measure: nothing to merge
    assert {v for d, v in after.items() if T0.date() <= d < HORIZON.date()} == {None}


def test_a_dimension_added_after_retention_needs_force_and_starts_at_the_horizon(
        conn, cut, declare):
    by_agent = dataclasses.replace(EM, dimensions=("workspace_id", "agent_id"))
    declare(by_agent)
    with pytest.raises(definitions.NeedsForce) as refused:
        migrate(conn)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("execution_metrics: ") and "--force accepts that" in message
    assert definition_rows(conn, "execution_metrics") == [(1, "live")]
    assert tables_in(conn, "aggjobs_build") == []

    line = plan_line(migrate(conn, force=True), "execution_metrics")
    assert "dimensions: workspace_id -> workspace_id, agent_id" in line
    assert "so v2 starts at 2026-03-05 00:00 UTC" in line
    refresh_until_swapped(conn, by_agent, cut)
    assert "agent_id" in column_names(conn, "analytics", "execution_metrics_hourly")
    assert conn.execute(f"SELECT min(hour) FROM {HOURLY}").fetchone()[0] == HORIZON
    assert conn.execute("SELECT min(day) FROM analytics.execution_metrics_daily"
                        ).fetchone()[0] == HORIZON.date()
    assert_verifies(conn, by_agent, HORIZON)



def test_a_rollup_removed_then_declared_again_goes_on_from_its_last_version(conn, week,
                                                                          declare):
    without = tuple(r for r in declared.BUILTIN_ROLLUPS if r.name != "agent_executions")
    declared.BUILTIN_ROLLUPS = without  # the fixture puts the original back
    declared.load.cache_clear()
    assert plan_line(migrate(conn), "agent_executions").startswith("agent_executions: removed")
    assert definition_rows(conn, "agent_executions") == [(1, "removed")]
    declare()  # released again
    line = plan_line(migrate(conn), "agent_executions")
    assert line.startswith("agent_executions: new (v2)"), line
    assert definition_rows(conn, "agent_executions") == [(1, "removed"), (2, "live")]
    refresh(conn, f.AGENT_EXECUTIONS, as_of=AS_OF, settings=week)
    assert_verifies(conn, f.AGENT_EXECUTIONS)
    assert_live_views_match(conn, f.AGENT_EXECUTIONS)
