"""Health scores: the documented formula on hand-made inputs, and the stored scores against
inputs recomputed from the raw rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from aggjobs import health
from aggjobs.engine.recompute import planner_settings
from aggjobs.health import inputs as health_inputs
from aggjobs.health import params, score_and_store, statement
from aggjobs.health.formula import BURST_MIN_RUNS, PARTS, Inputs, score
from aggjobs.jobs.runner import RunRequest, run_job
from tests import platform as p

DAY = date(2026, 11, 20)  # a Friday
T = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
H = timedelta(hours=1)


def inputs(**kw) -> Inputs:
    base = dict(workspace_id=1, prior_days=7, ok=970, failed=30, runs=1000, p95=12.0,
                prior_p95=11.5, prior_runs=7000, credits=Decimal("500"),
                prior_credits=Decimal("3500"), worst_hour=None, worst_hour_rate=0.08,
                worst_hour_runs=60)
    return Inputs(**{**base, **kw})


def points(h) -> dict:
    return {n: c["points"] for n, c in h.components.items() if n != "facts"}


def test_worked_examples_of_the_docs() -> None:
    steady = score(inputs())
    assert (steady.score, steady.status) == (Decimal("98.57"), "healthy")
    assert points(steady) == {"success_rate": 38.57, "latency": 20.0, "activity": 15.0,
                              "failure_bursts": 15.0, "credit_burn": 10.0}
    incident = score(inputs(ok=800, failed=200, p95=30.0, prior_p95=12.0,
                            worst_hour_rate=0.65, credits=Decimal("1200")))
    assert (incident.score, incident.status) == (Decimal("37.04"), "critical")
    assert points(incident) == {"success_rate": 14.29, "latency": 0.0, "activity": 15.0,
                                "failure_bursts": 3.75, "credit_burn": 4.0}
    first = score(inputs(prior_days=0, ok=45, failed=5, runs=50, p95=8.0, prior_p95=None,
                         prior_runs=0, credits=Decimal("20"), prior_credits=Decimal("0"),
                         worst_hour_rate=0.25))
    assert (first.score, first.status) == (Decimal("76.95"), "at_risk")
    assert points(first) == {"success_rate": 51.95, "latency": None, "activity": None,
                             "failure_bursts": 25.0, "credit_burn": None}
    quiet = score(inputs(ok=6, failed=0, runs=6))
    assert (quiet.score, quiet.status) == (None, "insufficient_data")
    assert quiet.components["reason"] == "6 finished runs on the day; a score needs 10"


@pytest.mark.parametrize("case", [
    dict(),
    dict(ok=0, failed=500, worst_hour_rate=1.0),  # all failed
    dict(p95=None, prior_p95=None),  # no runtimes at all
    dict(worst_hour_rate=None),  # no hour with enough runs
    dict(prior_days=3, prior_runs=10, prior_credits=Decimal("0")),  # created mid-week
    dict(prior_runs=0, prior_credits=Decimal(0), prior_p95=None),  # history without runs
])
def test_components_always_add_up_to_the_score_within_0_100(case) -> None:
    h = score(inputs(**case))
    total = sum(Decimal(str(v)) for v in points(h).values() if v is not None)
    assert h.score == total and Decimal(0) <= h.score <= Decimal(100)
    assert any(points(h)[part.name] is not None for part in PARTS)
    # Left-out parts are scaled away: the same day run perfectly still reaches 100.
    burst = None if case.get("worst_hour_rate", 0.08) is None else 0.0
    perfect = score(inputs(**{**case, "ok": 1000, "failed": 0, "worst_hour_rate": burst}))
    assert perfect.score == Decimal(100)


def test_all_failed_is_critical() -> None:
    h = score(inputs(ok=0, failed=500, worst_hour_rate=1.0))
    assert (h.score, h.status) == (Decimal("45"), "critical")
    assert points(h)["success_rate"] == 0.0
    assert points(h)["failure_bursts"] == 0.0


# -- against the raw rows ----------------------------------------------------------------------
def day_runs(conn, ws: int, day: date, n: int, *, failed: int = 0, runtime: float = 10.0,
             credits: str = "1") -> None:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    for i in range(n):
        at = start + timedelta(minutes=(i * 1439) // max(n, 1))
        status = "failed" if i < failed else "completed"
        p.run(conn, ws=ws, at=at, status=status, runtime=runtime, credits=credits)
        p.credit(conn, ws=ws, kind="usage", amount=credits, at=at)


def raw_inputs(conn: psycopg.Connection, ws: int) -> dict:
    """The formula's inputs recomputed from agent_runs and credit_transactions."""
    lo, hi = DAY - timedelta(days=7), DAY
    with conn.cursor(row_factory=dict_row) as cur:
        first = cur.execute("SELECT min(started_at AT TIME ZONE 'UTC')::date AS d"
                            " FROM agent_runs WHERE workspace_id = %s", (ws,)).fetchone()["d"]
        today = cur.execute(
            """SELECT count(*) FILTER (WHERE status = 'completed') AS ok,
                      count(*) FILTER (WHERE status = 'failed') AS failed, count(*) AS runs,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds) AS p95
               FROM agent_runs WHERE workspace_id = %s
                 AND (started_at AT TIME ZONE 'UTC')::date = %s""", (ws, DAY)).fetchone()
        prior = cur.execute(
            """SELECT count(*) AS runs,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds) AS p95
               FROM agent_runs WHERE workspace_id = %s
                 AND (started_at AT TIME ZONE 'UTC')::date >= %s
                 AND (started_at AT TIME ZONE 'UTC')::date < %s""", (ws, lo, hi)).fetchone()
        credits = cur.execute(
            """SELECT coalesce(sum(amount) FILTER (WHERE (created_at AT TIME ZONE 'UTC')::date
                                                   = %(d)s), 0) AS today,
                      coalesce(sum(amount) FILTER (WHERE (created_at AT TIME ZONE 'UTC')::date
                                                   < %(d)s), 0) AS prior
               FROM credit_transactions WHERE workspace_id = %(ws)s AND kind = 'usage'
                 AND (created_at AT TIME ZONE 'UTC')::date >= %(lo)s""",
            {"ws": ws, "d": DAY, "lo": lo}).fetchone()
        worst = cur.execute(
            """SELECT max(f::float8 / n) AS rate FROM (
                   SELECT count(*) FILTER (WHERE status = 'failed') AS f,
                          count(*) FILTER (WHERE status IN ('completed', 'failed')) AS n
                   FROM agent_runs WHERE workspace_id = %s
                     AND (started_at AT TIME ZONE 'UTC')::date = %s
                   GROUP BY date_trunc('hour', started_at, 'UTC')) AS h WHERE n >= 5""",
            (ws, DAY)).fetchone()
    return dict(prior_days=max(0, (DAY - max(first, lo)).days), ok=today["ok"],
                failed=today["failed"], runs=today["runs"], p95=today["p95"],
                prior_p95=prior["p95"], prior_runs=prior["runs"], credits=credits["today"],
                prior_credits=credits["prior"], worst_hour_rate=worst["rate"])


@pytest.fixture
def workspaces(conn: psycopg.Connection):
    """1: steady for 8 days. 2: an incident today (failures, slow, a burst). 3: created
    three days ago. 4: quiet today. 5: first day today, all failed."""
    for back in range(1, 8):
        d = DAY - timedelta(days=back)
        day_runs(conn, 1, d, 48, failed=1, runtime=10.0)
        day_runs(conn, 2, d, 48, failed=1, runtime=10.0)
        day_runs(conn, 4, d, 30)
        if back <= 3:
            day_runs(conn, 3, d, 20, runtime=5.0)
    day_runs(conn, 1, DAY, 48, failed=1, runtime=10.5)
    day_runs(conn, 2, DAY, 48, failed=20, runtime=25.0, credits="3")
    for i in range(6):  # a burst: one bad hour
        p.run(conn, ws=2, at=T + 13 * H + timedelta(minutes=i), status="failed", runtime=25.0)
    day_runs(conn, 3, DAY, 30, failed=3, runtime=5.0)
    day_runs(conn, 4, DAY, 4)
    day_runs(conn, 5, DAY, 24, failed=24)
    return conn


def test_stored_scores_equal_the_formula_on_raw_inputs(workspaces, settings) -> None:
    conn = workspaces
    result = run_job(RunRequest(job="daily_rollup", as_of=T + timedelta(days=1, hours=1)),
                     settings.model_copy(update={"max_buckets_per_refresh": 24 * 30}))
    steps = {s.name: s for s in result.steps}
    assert steps["health_scores"].status == "succeeded", steps["health_scores"]
    assert steps["health_scores"].rows == 5
    for read in ("execution_metrics.day", "credit_consumption.day"):  # started after them
        ended = steps[read].started_at + timedelta(seconds=steps[read].seconds)
        assert steps["health_scores"].started_at >= ended - timedelta(seconds=0.05)
    with conn.cursor(row_factory=dict_row) as cur:
        stored = {r["workspace_id"]: r for r in cur.execute(
            "SELECT * FROM analytics.workspace_health_daily WHERE day = %s", (DAY,))}
    assert set(stored) == {1, 2, 3, 4, 5}
    for ws, row in stored.items():
        raw = raw_inputs(conn, ws)
        expected = score(inputs(workspace_id=ws, worst_hour=None, worst_hour_runs=None, **raw))
        assert row["status"] == expected.status, (ws, row["components"], raw)
        if expected.score is None:
            assert row["score"] is None
            continue
        # p95 comes from sketches (within 0.75%): the latency part may move a little.
        assert float(row["score"]) == pytest.approx(float(expected.score), abs=0.5), ws
        total = sum(Decimal(str(c["points"])) for n, c in row["components"].items()
                    if n != "facts" and c["points"] is not None)
        assert total == row["score"]
    assert stored[1]["status"] == "healthy"
    assert stored[2]["status"] in ("at_risk", "critical")
    assert stored[2]["components"]["failure_bursts"]["hour"].startswith("2026-11-20T13")
    assert stored[3]["components"]["facts"]["prior_days"] == 3
    assert stored[4]["status"] == "insufficient_data"
    assert stored[5]["components"]["latency"]["points"] is None  # first day: no baseline
    assert stored[5]["status"] == "critical"


def test_scores_wait_for_the_day_to_be_materialized(workspaces, settings) -> None:
    result = run_job(RunRequest(job="daily_rollup", as_of=T + timedelta(days=1, hours=1)),
                     settings.model_copy(update={"max_buckets_per_refresh": 24}))
    health = {s.name: s for s in result.steps}["health_scores"]
    assert health.status == "skipped" and "materialized only up to" in health.detail["reason"]
    assert workspaces.execute(
        "SELECT count(*) FROM analytics.workspace_health_daily").fetchone()[0] == 0


def test_store_replaces_the_days_scores(conn, settings) -> None:
    day_runs(conn, 1, DAY, 20)
    p.refresh_all(conn, settings, T + timedelta(days=1))
    score_and_store(conn, DAY)
    conn.execute("DELETE FROM agent_runs")
    p.refresh_all(conn, settings, T + timedelta(days=1))
    score_and_store(conn, DAY)
    assert conn.execute("SELECT count(*) FROM analytics.workspace_health_daily"
                        ).fetchone()[0] == 0



def test_worst_hour_equals_the_raw_rows_earliest_of_equal_rates(conn, settings) -> None:
    """failure_bursts' hour, rate and runs against the raw rows: the highest failure rate
    among hours with BURST_MIN_RUNS finished runs, the earliest of equal rates, hours with
    fewer left out, running runs not counted."""
    hours = {3: (6, 3), 9: (8, 4), 15: (10, 2), 20: (4, 4), 22: (12, 0)}  # hour: (runs, failed)
    for hour, (n, failed) in hours.items():
        for i in range(n):
            p.run(conn, ws=7, at=T + hour * H + timedelta(minutes=i),
                  status="failed" if i < failed else "completed")
    p.run(conn, ws=7, at=T + 20 * H + timedelta(minutes=30), status="running")
    p.refresh_all(conn, settings, T + timedelta(days=1))
    got = next(r for r in health_inputs(conn, DAY) if r["workspace_id"] == 7)
    expected = conn.execute(
        """SELECT h, f::float8 / n, n FROM (
               SELECT date_trunc('hour', started_at, 'UTC') AS h,
                      count(*) FILTER (WHERE status = 'failed') AS f,
                      count(*) FILTER (WHERE status IN ('completed', 'failed')) AS n
               FROM agent_runs WHERE workspace_id = 7 GROUP BY 1) AS x
           WHERE n >= %s ORDER BY f::float8 / n DESC, h LIMIT 1""", (BURST_MIN_RUNS,)).fetchone()
    assert expected == (T + 3 * H, 0.5, 6)  # the data has the tie it means to test
    assert (got["worst_hour"], got["worst_hour_rate"], got["worst_hour_runs"]) == expected


def test_inputs_never_nest_loops_where_statistics_say_a_table_is_empty(conn, settings) -> None:
    """Statistics taken while execution_metrics_daily was empty, its pages kept (as after a
    reset, until autovacuum analyzes it again): the planner expects one row and nests loops
    over every workspace (at 50,000 workspaces, past 11 minutes). The inputs are planned
    without, and are the same."""
    for ws in range(1, 41):
        day_runs(conn, ws, DAY - timedelta(days=1), 6, failed=1)
        day_runs(conn, ws, DAY, 6, failed=ws % 3)
    p.refresh_all(conn, settings, T + timedelta(days=1))
    before = health_inputs(conn, DAY)
    conn.execute("CREATE TEMP TABLE kept AS SELECT * FROM analytics.execution_metrics_daily")
    conn.execute("DELETE FROM analytics.execution_metrics_daily")
    conn.execute("VACUUM (ANALYZE, TRUNCATE false) analytics.execution_metrics_daily")
    conn.execute("INSERT INTO analytics.execution_metrics_daily SELECT * FROM kept")

    def plan() -> str:
        rows = conn.execute(sql.SQL("EXPLAIN ") + statement(conn), params(DAY)).fetchall()
        return "\n".join(r[0] for r in rows)

    with conn.transaction():
        assert "Nested Loop" in plan()  # what the statistics lead the planner to
    with conn.transaction(), planner_settings(conn, health.PLAN):
        assert "Nested Loop" not in plan()
    assert health_inputs(conn, DAY) == before
    assert sum(score_and_store(conn, DAY).values()) == 40
