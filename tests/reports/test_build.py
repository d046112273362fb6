"""The daily reports against the rollup tables and an independent recomputation from the raw
rows, on the hand-made data of conftest.py; edge cases; storage; the daily job's step."""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from aggjobs import reports
from aggjobs.errors import DatabaseUnavailable
from aggjobs.jobs.model import Step, StepContext, StepResult
from aggjobs.jobs.steps import reports_step
from aggjobs.reports.build import (
    HOURLY_FIELDS,
    METRICS,
    HourlyRead,
    hourly_series,
    worst_hours,
)
from aggjobs.settings import Settings
from tests import platform as p
from tests.reports.conftest import (
    AS_OF,
    DAY,
    FIRST,
    MISSING_USAGE,
    ORPHAN_USAGE,
    PREV,
    T0,
    WEEK,
    add_run,
)

# -- independent recomputation from the raw rows ------------------------------------------------
RAW_TOTALS = """
WITH r AS (SELECT * FROM agent_runs
           WHERE (started_at AT TIME ZONE 'UTC')::date = %(day)s AND {scope}),
     e AS (SELECT * FROM user_events
           WHERE (occurred_at AT TIME ZONE 'UTC')::date = %(day)s AND {scope}),
     c AS (SELECT * FROM credit_transactions
           WHERE (created_at AT TIME ZONE 'UTC')::date = %(day)s AND {scope})
SELECT (SELECT count(*) FROM r) AS runs,
       (SELECT count(*) FILTER (WHERE status = 'completed') FROM r) AS successful_runs,
       (SELECT count(*) FILTER (WHERE status = 'failed') FROM r) AS failed_runs,
       (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds) FROM r)
           AS p95_runtime,
       (SELECT coalesce(sum(credits_consumed), 0) FROM r) AS run_credits,
       (SELECT coalesce(sum(amount) FILTER (WHERE kind = 'usage'), 0) FROM c) AS credits_used,
       (SELECT coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0) FROM c)
           AS credits_refunded,
       (SELECT coalesce(sum(amount) FILTER (WHERE kind = 'grant'), 0) FROM c) AS credits_granted,
       (SELECT count(DISTINCT user_id) FROM e) AS active_users,
       (SELECT count(*) FROM e) AS events,
       (SELECT count(*) FROM r) + (SELECT count(*) FROM e) + (SELECT count(*) FROM c) > 0
           AS has_data
"""


def raw_totals(conn: psycopg.Connection, day, ws: int | None) -> dict | None:
    scope = "true" if ws is None else f"workspace_id = {int(ws)}"
    cur = conn.execute(RAW_TOTALS.format(scope=scope), {"day": day})
    row = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
    if not row["has_data"]:
        return None
    row["net_credits"] = row["credits_used"] - row["credits_refunded"]
    row["success_rate"] = (row["successful_runs"] / row["runs"]) if row["runs"] else None
    return row


def rollup_day(conn: psycopg.Connection, day, ws: int | None) -> dict:
    """The daily rollup rows summed for the scope (p95: the stored one for a workspace)."""
    scope = "true" if ws is None else f"workspace_id = {int(ws)}"
    e = conn.execute(f"""SELECT coalesce(sum(total_executions), 0), coalesce(sum(failed_executions), 0),
        coalesce(sum(total_credits), 0), max(p95_runtime), count(*)
        FROM analytics.execution_metrics_daily WHERE day = %s AND {scope}""", (day,)).fetchone()
    c = conn.execute(f"""SELECT coalesce(sum(credits_used), 0), coalesce(sum(net_credits), 0)
        FROM analytics.credit_consumption_daily WHERE day = %s AND {scope}""", (day,)).fetchone()
    a = conn.execute(f"""SELECT coalesce(sum(total_events), 0), coalesce(sum(active_users), 0)
        FROM analytics.user_activity_daily WHERE day = %s AND {scope}""", (day,)).fetchone()
    return {"runs": e[0], "failed_runs": e[1], "run_credits": e[2],
            "p95_runtime": e[3] if e[4] == 1 else None, "credits_used": c[0],
            "net_credits": c[1], "events": a[0], "active_users": a[1]}


def same(a, b, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-9)


def assert_totals(conn: psycopg.Connection, report: dict, ws: int | None) -> None:
    fields = (("value", DAY), ("previous_day", PREV), ("same_day_last_week", WEEK))
    for field, day in fields:
        want = raw_totals(conn, day, ws)
        for key, _, _ in METRICS:
            got = report["totals"][key][field]
            exp = None if want is None else want[key]
            # Merged p95 comes from the sketch: the contract allows 1% (docs/contract.md#exactness; exact per workspace
            # for hourly; a workspace's daily p95 is its stored sketch value).
            rel = 0.01 if key == "p95_runtime" else 1e-9
            assert same(got, exp, rel), f"ws {ws} {key} {field}: {got} != {exp}"
        t = report["totals"]["runs"]
        if want is not None and field != "value":
            diff_field = "day_over_day" if field == "previous_day" else "week_over_week"
            assert t[diff_field] == t["value"] - t[field]
            if t[field]:
                assert same(t[f"{diff_field}_pct"],
                            round((t["value"] - t[field]) / t[field] * 100, 2))


# -- figures ------------------------------------------------------------------------------------
def test_every_total_matches_the_raw_rows_and_the_rollups(loaded: Settings,
                                                          conn: psycopg.Connection) -> None:
    built = reports.build(conn, DAY)
    # Active: any run or event that day; 6 has credit transactions only.
    active = {r[0] for r in conn.execute(
        "SELECT workspace_id FROM agent_runs WHERE (started_at AT TIME ZONE 'UTC')::date = %(d)s"
        " UNION SELECT workspace_id FROM user_events"
        " WHERE (occurred_at AT TIME ZONE 'UTC')::date = %(d)s", {"d": DAY})}
    assert active == {1, 2, 3, 4, 5}
    assert set(built) == {None} | active
    assert built[None]["active_workspaces"] == 5
    for ws, report in built.items():
        assert report["day"] == DAY.isoformat() and report["workspace_id"] == ws
        assert report["schema_version"] == reports.SCHEMA_VERSION
        assert report["kind"] == ("platform" if ws is None else "workspace")
        assert_totals(conn, report, ws)
        roll = rollup_day(conn, DAY, ws)
        for key in ("runs", "failed_runs", "run_credits", "credits_used", "net_credits",
                    "events"):
            assert same(report["totals"][key]["value"], roll[key]), (ws, key)
        if ws is not None:  # per workspace: exactly the stored daily values
            assert same(report["totals"]["p95_runtime"]["value"], roll["p95_runtime"])
            assert report["totals"]["active_users"]["value"] == roll["active_users"]


def test_platform_p95_and_active_users_are_merged_not_summed(loaded: Settings,
                                                            conn: psycopg.Connection) -> None:
    platform = reports.build(conn, DAY)[None]["totals"]
    users = conn.execute("SELECT count(DISTINCT user_id) FROM user_events"
                         " WHERE (occurred_at AT TIME ZONE 'UTC')::date = %s", (DAY,)).fetchone()
    assert platform["active_users"]["value"] == users[0]
    exact = conn.execute(
        "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds) FROM agent_runs"
        " WHERE (started_at AT TIME ZONE 'UTC')::date = %s", (DAY,)).fetchone()[0]
    assert same(platform["p95_runtime"]["value"], exact, rel=0.01)
    stored_max = conn.execute("SELECT max(p95_runtime) FROM analytics.execution_metrics_daily"
                              " WHERE day = %s", (DAY,)).fetchone()[0]
    assert platform["p95_runtime"]["value"] <= stored_max * 1.01  # not a sum of p95s


def test_hourly_series_and_failure_hot_spots(loaded: Settings, conn: psycopg.Connection) -> None:
    built = reports.build(conn, DAY)
    raw_hours = conn.execute(
        "SELECT workspace_id, date_trunc('hour', started_at AT TIME ZONE 'UTC'), count(*),"
        " count(*) FILTER (WHERE status = 'failed'),"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_seconds),"
        " coalesce(sum(credits_consumed), 0)"
        " FROM agent_runs WHERE (started_at AT TIME ZONE 'UTC')::date = %s GROUP BY 1, 2",
        (DAY,)).fetchall()
    usage = {(ws, h): amt for ws, h, amt in conn.execute(
        "SELECT workspace_id, date_trunc('hour', created_at AT TIME ZONE 'UTC'), sum(amount)"
        " FROM credit_transactions WHERE kind = 'usage'"
        " AND (created_at AT TIME ZONE 'UTC')::date = %s GROUP BY 1, 2", (DAY,)).fetchall()}
    for ws in (None, 1, 2, 3, 4, 5):
        hourly = reports.hour_rows(built[ws]["hourly"])
        assert len(hourly) == 24 and all(len(c) == 24 for c in built[ws]["hourly"].values())
        for h in hourly:
            start = datetime.fromisoformat(h["hour"]).replace(tzinfo=None)
            rows = [r for r in raw_hours if r[1] == start and (ws is None or r[0] == ws)]
            assert h["runs"] == sum(r[2] for r in rows)
            assert h["failed_runs"] == sum(r[3] for r in rows)
            assert same(h["run_credits"], sum((r[5] for r in rows), Decimal(0)))
            want_usage = sum((v for (w, hh), v in usage.items()
                              if hh == start and (ws is None or w == ws)), Decimal(0))
            assert same(h["credits_used"], want_usage)
            if ws is not None and rows:  # hourly p95 per workspace: exact
                assert same(h["p95_runtime"], rows[0][4])
        # Worst hours: most failures first, only hours with failures.
        worst = built[ws]["failure_hot_spots"]["worst_hours"]
        by_failed = sorted((h["failed_runs"] for h in hourly if h["failed_runs"]), reverse=True)
        assert [w["failed_runs"] for w in worst] == by_failed[:5]
    # Hourly rollup cross-check for the platform: the series sums to the day.
    p_hourly = built[None]["hourly"]
    assert sum(p_hourly["runs"]) == built[None]["totals"]["runs"]["value"]
    assert sum(p_hourly["failed_runs"]) == built[None]["totals"]["failed_runs"]["value"]
    # Worst agents (read from analytics.agent_executions_daily): against the raw runs.
    want = conn.execute(
        "SELECT workspace_id, agent_id, count(*), count(*) FILTER (WHERE status = 'failed')"
        " FROM agent_runs WHERE (started_at AT TIME ZONE 'UTC')::date = %s GROUP BY 1, 2"
        " HAVING count(*) FILTER (WHERE status = 'failed') > 0", (DAY,)).fetchall()
    got = built[None]["failure_hot_spots"]["worst_agents"]["items"]
    assert {(a["workspace_id"], a["agent_id"], a["runs"], a["failed_runs"]) for a in got} \
        == set(want)
    assert [a["failed_runs"] for a in got] == sorted((w[3] for w in want), reverse=True)
    ws4 = built[4]["failure_hot_spots"]["worst_agents"]["items"]
    assert {a["agent_id"] for a in ws4} == {400, 401, 402}
    assert built[None]["failure_hot_spots"]["worst_workspaces"][0]["workspace_id"] == 2


def test_worst_agents_say_so_while_their_rollup_lags(loaded: Settings,
                                                     conn: psycopg.Connection) -> None:
    # A deployment that has just added agent_executions: its days are still catching up.
    # The report is built from the other rollups; the agents section names the lag.
    conn.execute("UPDATE aggjobs.watermarks SET watermark = %s"
                 " WHERE rollup = 'agent_executions' AND grain = 'day'",
                 (datetime.combine(DAY, datetime.min.time(), tzinfo=UTC),))
    built = reports.build(conn, DAY)
    for report in built.values():
        agents = report["failure_hot_spots"]["worst_agents"]
        assert agents["items"] is None
        assert f"agent_executions has not materialized {DAY}" in agents["note"]
        assert f"--as-of {DAY + timedelta(days=1)}T01:00Z" in agents["note"]
    assert built[None]["totals"]["failed_runs"]["value"] > 0
    assert f"agent_executions has not materialized {DAY}" in reports.render(built[None], "md")


def runs_per_ws(conn: psycopg.Connection, day) -> dict[int, int]:
    return dict(conn.execute(
        "SELECT workspace_id, count(*) FROM agent_runs"
        " WHERE (started_at AT TIME ZONE 'UTC')::date = %s GROUP BY 1", (day,)).fetchall())


def test_top_workspaces_and_movers(loaded: Settings, conn: psycopg.Connection) -> None:
    platform = reports.build(conn, DAY)[None]
    today = runs_per_ws(conn, DAY)
    top = platform["top_workspaces"]["by_runs"]
    assert [(t["workspace_id"], t["runs"]) for t in top] == sorted(
        today.items(), key=lambda kv: (-kv[1], kv[0]))
    assert math.isclose(sum(t["share_pct"] for t in top), 100, abs_tol=0.05)
    usage = dict(conn.execute(
        "SELECT workspace_id, sum(amount) FROM credit_transactions WHERE kind = 'usage'"
        " AND (created_at AT TIME ZONE 'UTC')::date = %s GROUP BY 1", (DAY,)).fetchall())
    by_credits = platform["top_workspaces"]["by_credits"]
    # Workspace 6 used credits but is not active (no run, no event): not listed.
    assert [t["workspace_id"] for t in by_credits] == sorted(
        (w for w in usage if w != 6), key=lambda w: (-usage[w], w))
    for t in by_credits:
        assert same(t["credits_used"], usage[t["workspace_id"]])
    for key, other in (("vs_previous_day", PREV), ("vs_same_day_last_week", WEEK)):
        then = runs_per_ws(conn, other)
        changes = {w: today.get(w, 0) - then.get(w, 0) for w in today.keys() | then.keys()}
        movers = platform["movers"][key]
        assert movers["compared_day"] == other.isoformat()
        up = sorted(((w, c) for w, c in changes.items() if c > 0), key=lambda x: (-x[1], x[0]))
        down = sorted(((w, c) for w, c in changes.items() if c < 0), key=lambda x: (x[1], x[0]))
        assert [(m["workspace_id"], m["change"]) for m in movers["up"]] == up[:5]
        assert [(m["workspace_id"], m["change"]) for m in movers["down"]] == down[:5]
        assert up and down  # both directions present in this data
    # Workspace 3 did not exist a week ago: up by all its runs, no relative change.
    new = next(m for m in platform["movers"]["vs_same_day_last_week"]["up"]
               if m["workspace_id"] == 3)
    assert new["compared_runs"] == 0 and new["change_pct"] is None


# -- edge cases ---------------------------------------------------------------------------------
def test_hourly_series_places_each_value_by_its_hour() -> None:
    """hourly_by_workspace's arrays come in no particular order (one order for all of them):
    each value lands on its own hour, hours without a row are zeros, and hour_rows gives the
    series back by hour."""
    rows = {"hour": [23, 0, 5], "runs": [4, 2, 0], "successful_runs": [3, 1, 0],
            "failed_runs": [1, 1, 0], "p95_runtime": [2.5, None, None],
            "run_credits": [1.25, 0.5, 0.0], "credits_used": [1.0, 0.0, 7.5]}
    series = hourly_series(DAY, rows)
    assert set(series) == set(HOURLY_FIELDS)
    assert all(len(column) == 24 for column in series.values())
    by_hour = reports.hour_rows(series)
    assert by_hour[23] == {"hour": f"{DAY.isoformat()}T23:00:00+00:00", "runs": 4,
                           "successful_runs": 3, "failed_runs": 1, "failure_rate": 0.25,
                           "p95_runtime": 2.5, "run_credits": 1.25, "credits_used": 1.0}
    assert by_hour[0]["runs"] == 2 and by_hour[0]["failure_rate"] == 0.5
    assert by_hour[5]["credits_used"] == 7.5 and by_hour[5]["failure_rate"] is None
    assert by_hour[7] == {"hour": f"{DAY.isoformat()}T07:00:00+00:00", "runs": 0,
                          "successful_runs": 0, "failed_runs": 0, "failure_rate": None,
                          "p95_runtime": None, "run_credits": 0.0, "credits_used": 0.0}
    assert [w["hour"][11:13] for w in worst_hours(series)] == ["00", "23"]


def test_edge_cases_no_runs_all_failed_mid_week(loaded: Settings,
                                                conn: psycopg.Connection) -> None:
    built = reports.build(conn, DAY)
    # 5: events only that day.
    t5 = built[5]["totals"]
    assert t5["runs"]["value"] == 0 and t5["success_rate"]["value"] is None
    assert t5["p95_runtime"]["value"] is None and t5["events"]["value"] > 0
    assert t5["runs"]["previous_day"] == 6 and t5["runs"]["day_over_day_pct"] == -100.0
    assert built[5]["failure_hot_spots"]["worst_hours"] == []
    assert built[5]["hourly"]["runs"] == [0] * 24
    # 4: every run failed.
    t4 = built[4]["totals"]
    assert t4["failed_runs"]["value"] == t4["runs"]["value"] == 3
    assert t4["success_rate"]["value"] == 0.0 and t4["successful_runs"]["value"] == 0
    assert sum(h["failed_runs"] for h in built[4]["failure_hot_spots"]["worst_hours"]) == 3
    # 3: created mid-week: a previous day, no week-over-week.
    r3 = built[3]
    assert r3["compared_with"]["previous_day_has_data"]
    assert not r3["compared_with"]["same_day_last_week_has_data"]
    for key, _, _ in METRICS:
        t = r3["totals"][key]
        assert t["same_day_last_week"] is None and t["week_over_week"] is None
        assert t["week_over_week_pct"] is None
    assert r3["totals"]["runs"]["previous_day"] == 3 + 7


def test_first_day_has_no_comparison(loaded: Settings, conn: psycopg.Connection) -> None:
    built = reports.build(conn, FIRST)
    platform = built[None]
    assert platform["has_data"]
    assert not platform["compared_with"]["previous_day_has_data"]
    for key, _, _ in METRICS:
        t = platform["totals"][key]
        assert t["previous_day"] is None and t["day_over_day"] is None
        assert t["day_over_day_pct"] is None and t["same_day_last_week"] is None
    assert platform["movers"] == {"vs_previous_day": None, "vs_same_day_last_week": None}
    assert_totals_first = raw_totals(conn, FIRST, None)
    assert platform["totals"]["runs"]["value"] == assert_totals_first["runs"]


def test_day_without_data(loaded: Settings, conn: psycopg.Connection) -> None:
    built = reports.build(conn, FIRST - timedelta(days=30))
    assert set(built) == {None}
    platform = built[None]
    assert not platform["has_data"] and platform["active_workspaces"] == 0
    assert platform["totals"]["runs"]["value"] == 0
    assert platform["totals"]["success_rate"]["value"] is None
    assert platform["top_workspaces"] == {"by_runs": [], "by_credits": []}
    assert platform["ledger"]["mismatches"] == []
    for fmt in reports.FORMATS:  # every renderer copes with an empty day
        assert reports.render(platform, fmt)


def test_ledger_flags_a_missing_usage_row(loaded: Settings, conn: psycopg.Connection) -> None:
    built = reports.build(conn, DAY)
    ledger = built[None]["ledger"]
    flagged = {m["workspace_id"]: m for m in ledger["mismatches"]}
    assert set(flagged) == {2, 6} and ledger["mismatch_count"] == 2
    assert math.isclose(flagged[2]["difference"], -float(MISSING_USAGE))
    assert math.isclose(flagged[6]["difference"], float(ORPHAN_USAGE))
    assert flagged[6]["run_credits"] == 0.0
    assert built[2]["ledger"]["mismatch"] and not built[1]["ledger"]["mismatch"]
    # Ledger totals equal the raw ledger and raw runs of the day.
    raw = raw_totals(conn, DAY, None)
    assert same(ledger["usage_credits"], raw["credits_used"])
    assert same(ledger["run_credits"], raw["run_credits"])
    assert ledger["workspaces_checked"] == 5  # 1-4 and 6 (5 has neither runs nor ledger)
    # Put the missing row in: after the next refresh the mismatch is gone.
    p.credit(conn, ws=2, kind="usage", amount=MISSING_USAGE,
             at=datetime.combine(DAY, datetime.min.time(), tzinfo=UTC) + timedelta(hours=5))
    p.refresh_all(conn, loaded, AS_OF)
    again = reports.build(conn, DAY)
    assert [m["workspace_id"] for m in again[None]["ledger"]["mismatches"]] == [6]
    assert not again[2]["ledger"]["mismatch"]


def test_health_changes(loaded: Settings, conn: psycopg.Connection) -> None:
    assert reports.build(conn, DAY)[None]["health"] == {"scored": False, "counts": {},
                                                        "fell": []}
    scores = {  # workspace: (previous day, day), (status, score)
        1: (("healthy", 90), ("at_risk", 65)),  # fell
        2: (("at_risk", 70), ("critical", 30)),  # fell further
        3: (("healthy", 85), ("healthy", 88)),
        4: (("insufficient_data", None), ("critical", 20)),  # first score: not a fall
        5: (("critical", 40), ("at_risk", 60)),  # improved
    }
    for ws, ((s0, v0), (s1, v1)) in scores.items():
        conn.execute("INSERT INTO analytics.workspace_health_daily (workspace_id, day, score,"
                     " status) VALUES (%s, %s, %s, %s), (%s, %s, %s, %s)",
                     (ws, PREV, v0, s0, ws, DAY, v1, s1))
    built = reports.build(conn, DAY)
    health = built[None]["health"]
    assert health["scored"]
    assert health["counts"] == {"at_risk": 2, "critical": 2, "healthy": 1}
    assert [(h["workspace_id"], h["previous_status"], h["status"]) for h in health["fell"]] == [
        (2, "at_risk", "critical"), (1, "healthy", "at_risk")]
    assert built[1]["health"] == {"scored": True, "status": "at_risk", "score": 65.0,
                                  "previous_status": "healthy", "previous_score": 90.0,
                                  "fell": True}
    assert not built[4]["health"]["fell"] and not built[5]["health"]["fell"]


# -- storage and the job step -------------------------------------------------------------------
def stored_rows(conn: psycopg.Connection, day) -> dict:
    return {ws: (report, gen) for ws, report, gen in conn.execute(
        "SELECT workspace_id, report, generated_at FROM analytics.daily_reports WHERE day = %s",
        (day,)).fetchall()}


def test_store_replaces_the_days_rows(loaded: Settings, conn: psycopg.Connection) -> None:
    assert reports.store(conn, DAY) == 6
    first = stored_rows(conn, DAY)
    assert set(first) == {None, 1, 2, 3, 4, 5}
    built = reports.build(conn, DAY)
    for ws, (report, generated_at) in first.items():
        assert {**report, "generated_at": None} == {**built[ws], "generated_at": None}
        assert datetime.fromisoformat(report["generated_at"]) == generated_at
    assert reports.store(conn, PREV) == 6  # another day is left alone below
    # Workspace 5's only activity of the day disappears; 1 gets a late run.
    conn.execute("DELETE FROM user_events WHERE workspace_id = 5"
                 " AND (occurred_at AT TIME ZONE 'UTC')::date = %s", (DAY,))
    add_run(conn, ws=1, at=datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
            + timedelta(hours=3), agent=100, status="failed", runtime=3.0, credits="1.0000",
            user=1000)
    p.refresh_all(conn, loaded, AS_OF)
    assert reports.store(conn, DAY) == 5
    second = stored_rows(conn, DAY)
    assert set(second) == {None, 1, 2, 3, 4}
    assert second[None][0]["active_workspaces"] == 4
    assert second[1][0]["totals"]["runs"]["value"] == first[1][0]["totals"]["runs"]["value"] + 1
    assert second[None][1] > first[None][1]
    assert set(stored_rows(conn, PREV)) == {None, 1, 2, 3, 4, 5}
    assert conn.execute("SELECT count(*) FROM analytics.daily_reports").fetchone()[0] == 11


def beside(db_url: str) -> Callable[[], psycopg.Connection]:
    """A second session, as the job's runner opens one for the reports' longest query."""
    return lambda: psycopg.connect(db_url, autocommit=True, application_name="aggjobs:beside")


def no_session_beside(conn: psycopg.Connection) -> bool:
    """No second session left, within 5 s: a closed session's server process ends a moment
    after its client closed it (CI once saw one still there); one left open stays."""
    deadline = time.monotonic() + 5
    while conn.execute("SELECT count(*) FROM pg_stat_activity"
                       " WHERE application_name = 'aggjobs:beside'").fetchone()[0]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_store_with_a_second_session_stores_the_same_reports(
        loaded: Settings, conn: psycopg.Connection, db_url: str) -> None:
    reports.store(conn, DAY)
    alone = stored_rows(conn, DAY)
    assert reports.store(conn, DAY, beside(db_url)) == 6
    both = stored_rows(conn, DAY)
    assert {ws: {**r, "generated_at": None} for ws, (r, _) in both.items()} == {
        ws: {**r, "generated_at": None} for ws, (r, _) in alone.items()}
    assert no_session_beside(conn)  # closed once read


def test_without_a_second_session_to_spare_the_step_reads_on_its_own(
        loaded: Settings, conn: psycopg.Connection, db_url: str) -> None:
    """The role's or the server's connection limit reached: the same reports, read on one
    session, and a warning."""
    reports.store(conn, DAY)
    alone = stored_rows(conn, DAY)

    def refused() -> psycopg.Connection:
        raise DatabaseUnavailable("cannot connect to the database: too many clients already")

    assert reports.store(conn, DAY, refused) == 6
    assert {ws: {**r, "generated_at": None} for ws, (r, _) in stored_rows(conn, DAY).items()
            } == {ws: {**r, "generated_at": None} for ws, (r, _) in alone.items()}


def test_the_second_session_reads_the_transactions_snapshot(
        loaded: Settings, conn: psycopg.Connection, db_url: str) -> None:
    """A change committed after the transaction took its snapshot is not in the hourly rows
    read beside it, though a plain session sees it."""
    lo = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    ws, hour, before = conn.execute(
        "SELECT workspace_id, hour, total_executions FROM analytics.execution_metrics_hourly"
        " WHERE hour >= %s AND hour < %s ORDER BY 1, 2 LIMIT 1", (lo, lo + timedelta(days=1))
    ).fetchone()
    change = ("UPDATE analytics.execution_metrics_hourly SET total_executions ="
              " total_executions + %s WHERE workspace_id = %s AND hour = %s")
    runs = "SELECT total_executions FROM analytics.execution_metrics_hourly" \
           " WHERE workspace_id = %s AND hour = %s"
    with psycopg.connect(db_url, autocommit=True) as other, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT count(*) FROM analytics.daily_reports")  # the snapshot
        other.execute(change, (1000, ws, hour))
        assert other.execute(runs, (ws, hour)).fetchone()[0] == before + 1000
        read = HourlyRead(conn, DAY, beside(db_url))
        with read.cursor() as cur:
            row = next(r for r in cur.fetchall() if r["workspace_id"] == ws)
        assert row["runs"][row["hour"].index(hour.hour)] == before
        other.execute(change, (-1000, ws, hour))
    assert no_session_beside(conn)


@pytest.mark.parametrize("second_session", [False, True], ids=["one session", "two"])
def test_store_is_one_transaction(loaded: Settings, conn: psycopg.Connection,
                                  monkeypatch: pytest.MonkeyPatch, db_url: str,
                                  second_session: bool) -> None:
    reports.store(conn, DAY)
    before = stored_rows(conn, DAY)
    b = importlib.import_module("aggjobs.reports.build")
    original = b.workspace_report

    def broken(days, rows, ws, hourly):  # fails mid-stream: rows 1 and 2 already sent
        if ws == 3:
            raise ZeroDivisionError("boom")
        return original(days, rows, ws, hourly)

    monkeypatch.setattr(b, "workspace_report", broken)
    with pytest.raises(ZeroDivisionError):
        reports.store(conn, DAY, beside(db_url) if second_session else None)
    assert stored_rows(conn, DAY) == before  # the delete and the rows sent were rolled back
    assert no_session_beside(conn)


def test_step_stores_the_last_complete_day_or_skips(loaded: Settings,
                                                    conn: psycopg.Connection) -> None:
    step = reports_step()
    assert isinstance(step, Step) and step.name == "daily_reports"
    as_of = datetime.combine(DAY + timedelta(days=1), datetime.min.time(), tzinfo=UTC) \
        + timedelta(hours=1)
    assert step.run(StepContext(conn, as_of, loaded)) == StepResult(
        rows=6, detail={"day": DAY.isoformat()})
    assert set(stored_rows(conn, DAY)) == {None, 1, 2, 3, 4, 5}
    # The day after the last rolled-up day: not complete in the daily rollups, skipped.
    late = AS_OF + timedelta(days=1, hours=1)
    out = step.run(StepContext(conn, late, loaded))
    assert out.status == "skipped" and out.detail["day"] == AS_OF.date().isoformat()
    reason = str(out.detail["reason"])
    assert "execution_metrics" in reason and "not complete" in reason
    assert not stored_rows(conn, AS_OF.date())


def test_step_skips_before_any_rollup(settings: Settings, conn: psycopg.Connection) -> None:
    p.run(conn, ws=1, at=T0)
    out = reports_step().run(StepContext(conn, T0 + timedelta(days=2), settings))
    assert out.status == "skipped" and "none" in str(out.detail["reason"])
    assert conn.execute("SELECT count(*) FROM analytics.daily_reports").fetchone()[0] == 0
