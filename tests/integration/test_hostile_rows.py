"""Hostile raw rows (issue 21, findings 1, 6 and 7): times outside the supported range,
sums past the float range, NaN. None of them breaks refresh, verify, status or a job; each
has a documented result (docs/rollups.md) that refresh and verify agree on; deleting the
rows leaves nothing behind."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain, Rollup, get_rollup
from aggjobs.catalog.families import AGENT_RUNS
from aggjobs.catalog.model import Sum
from aggjobs.db import definitions
from aggjobs.engine.refresh import refresh
from aggjobs.engine.verify import verify_grain
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.monitor import overview
from aggjobs.settings import Settings
from aggjobs.sql import rollup as rollup_sql
from tests import platform as p
from tests.reference import assert_all_match

T0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday, in the past
H = timedelta(hours=1)
AS_OF = T0 + timedelta(days=7)  # the week of the rows complete
AGGJOBS = str(Path(sys.executable).with_name("aggjobs"))
BAD_ID = 990000003
OUTSIDE = ["-infinity", "infinity", "0044-03-15 12:00:00+00 BC", "10000-01-01 00:00:00+00",
           "1969-12-31 23:59:59+00", "2200-01-01 00:00:00+00"]
INSERT_AT = {
    "agent_runs": "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status,"
                  " started_at, runtime_seconds, credits_consumed)"
                  " VALUES (%s, 1, 1, 1, 'completed', %s, 5, 1)",
    "user_events": "INSERT INTO user_events (id, workspace_id, user_id, event_type, occurred_at)"
                   " VALUES (%s, 1, 1, 'login', %s)",
    "credit_transactions": "INSERT INTO credit_transactions (id, workspace_id, user_id, kind,"
                           " amount, created_at) VALUES (%s, 1, 1, 'usage', 2, %s)",
}


def aggjobs(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url, "COLUMNS": "200"}
    return subprocess.run([AGGJOBS, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def load(conn: psycopg.Connection) -> None:
    for h in (1, 2, 30):
        for ws in (1, 2):
            at = T0 + h * H + timedelta(minutes=10 * ws)
            p.run(conn, ws=ws, at=at, runtime=1.0 + h)
            p.event(conn, ws=ws, user=ws, at=at)
            p.credit(conn, ws=ws, kind="usage", amount="1.5", at=at)


def verify_all(conn: psycopg.Connection, rollups=BUILTIN_ROLLUPS) -> list:
    found = []
    for rollup in rollups:
        for grain in rollup.grains:
            report = verify_grain(conn, rollup, grain, T0, AS_OF)
            found += report.mismatches
    return found


def state_outside(conn: psycopg.Connection) -> int:
    """Rows of the engine's state outside the supported times."""
    return conn.execute(
        "SELECT (SELECT count(*) FROM aggjobs.pending_groups"
        "        WHERE bucket < '1970-01-01+00' OR bucket >= '2200-01-01+00')"
        " + (SELECT count(*) FROM aggjobs.invalidation_log"
        "    WHERE bucket < '1970-01-01+00' OR bucket >= '2200-01-01+00')"
        " + (SELECT count(*) FROM aggjobs.quarantine)").fetchone()[0]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A day per transaction: the week of near-empty hours materializes in a few."""
    return settings.model_copy(update={"hours_per_transaction": 24})


@pytest.fixture
def loaded(conn: psycopg.Connection, settings: Settings) -> psycopg.Connection:
    load(conn)
    p.refresh_all(conn, settings, AS_OF)
    return conn


# ------------------------------------------------------------------ finding 1: supported times

@pytest.mark.parametrize("table", sorted(INSERT_AT))
def test_rows_outside_the_supported_times_are_in_no_bucket_and_leave_nothing_behind(
        loaded, settings, table) -> None:
    conn = loaded
    for i, when in enumerate(OUTSIDE):
        conn.execute(INSERT_AT[table], (BAD_ID + i, when))
    p.refresh_all(conn, settings, AS_OF)  # no traceback
    assert_all_match(conn)  # the rows are in no bucket
    assert verify_all(conn) == []

    state = overview(conn, settings, now=AS_OF).as_dict()
    assert not state["healthy"]
    [row] = state["unsupported_rows"]
    assert (row["source"], row["rows"]) == (table, len(OUTSIDE))
    [problem] = [x for x in state["problems"] if f"public.{table}" in x]
    assert f"{len(OUTSIDE)} row(s)" in problem and "fix" in problem and row["query"] in problem
    found = conn.execute(f"SELECT id FROM ({row['query']}) AS q ORDER BY id").fetchall()
    assert found == [(BAD_ID + i,) for i in range(len(OUTSIDE))]  # the query finds them
    json.dumps(state, default=str)  # what status --json and /api/jobs return

    conn.execute(f"DELETE FROM {table} WHERE id >= %s", (BAD_ID,))
    p.refresh_all(conn, settings, AS_OF)
    assert state_outside(conn) == 0
    assert conn.execute("SELECT count(*) FROM aggjobs.pending_groups").fetchone()[0] == 0
    assert overview(conn, settings, now=AS_OF).problems == []
    assert_all_match(conn)


def test_the_issue_repro_through_the_cli_and_the_hourly_job(loaded, settings, db_url) -> None:
    conn = loaded
    conn.execute(INSERT_AT["agent_runs"], (BAD_ID, "-infinity"))
    conn.execute(INSERT_AT["agent_runs"], (BAD_ID + 1, "0001-01-01 00:00:00+00 BC"))
    conn.execute(INSERT_AT["agent_runs"], (BAD_ID + 2, "10000-01-01 00:00:00+00"))
    for args in (["refresh"], ["refresh", "--json"], ["verify", "--from", T0.isoformat(),
                                                      "--to", AS_OF.isoformat()]):
        done = aggjobs(db_url, *args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
    done = aggjobs(db_url, "status", "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [row] = json.loads(done.stdout)["unsupported_rows"]
    assert (row["table"], row["rows"]) == ("public.agent_runs", 3)
    result = run_job(RunRequest(job="hourly_rollup", as_of=AS_OF + 2 * H), settings)
    assert result.status == "succeeded", result
    conn.execute("DELETE FROM agent_runs WHERE id >= %s", (BAD_ID,))
    assert aggjobs(db_url, "refresh").returncode == 0
    assert state_outside(conn) == 0
    assert json.loads(aggjobs(db_url, "status", "--json").stdout)["unsupported_rows"] == []


def test_state_left_outside_by_an_older_version_is_dropped_by_the_next_refresh(
        loaded, settings) -> None:
    """pending_groups at -infinity (what the old fan-out queued) and a logged BC change:
    status still answers, and the next refresh drops them with no hand-written delete."""
    conn = loaded
    conn.execute("INSERT INTO aggjobs.pending_groups (rollup, grain, bucket, workspace_id)"
                 " VALUES ('execution_metrics', 'hour', '-infinity', 1),"
                 " ('user_activity', 'hour', '0044-03-15 12:00+00 BC', 2)")
    conn.execute("INSERT INTO aggjobs.invalidation_log (source, workspace_id, bucket)"
                 " VALUES ('credit_transactions', 1, '0044-03-15 12:00+00 BC')")
    assert overview(conn, settings, now=AS_OF).problems == []
    p.refresh_all(conn, settings, AS_OF)
    assert state_outside(conn) == 0
    assert_all_match(conn)


# ------------------------------------------------------------------ finding 6: float overflow

def stored(conn: psycopg.Connection, table: str, column: str, ws: int, bucket) -> tuple:
    return conn.execute(f"SELECT avg_runtime, total_executions FROM analytics.{table}"
                        f" WHERE workspace_id = %s AND {column} = %s", (ws, bucket)).fetchone()


def test_a_sum_past_the_float_range_is_infinity_and_nothing_is_blocked(
        loaded, settings, db_url) -> None:
    conn = loaded
    bad = T0 + 2 * H
    for i in range(3):  # the issue's repro: three 1e308 runtimes in one (workspace, hour)
        p.run(conn, ws=1, at=bad + timedelta(minutes=20 + i), runtime=1e308)
    p.run(conn, ws=1, at=T0 + 40 * H, runtime=1e308)  # and one in a later hour, same week
    p.run(conn, ws=2, at=T0 + 40 * H, runtime=3.0)
    done = aggjobs(db_url, "refresh", "--as-of", AS_OF.isoformat())
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert conn.execute("SELECT count(*) FROM aggjobs.quarantine").fetchone()[0] == 0
    assert stored(conn, "execution_metrics_hourly", "hour", 1, bad) == (math.inf, 4)
    assert stored(conn, "execution_metrics_hourly", "hour", 1, T0 + 40 * H) == (1e308, 1)
    assert stored(conn, "execution_metrics_daily", "day", 1, T0.date()) == (math.inf, 5)
    assert stored(conn, "execution_metrics_weekly", "week", 1, T0.date()) == (math.inf, 7)
    assert stored(conn, "execution_metrics_hourly", "hour", 2, bad)[1] == 1  # others exact
    assert_all_match(conn)
    assert verify_all(conn) == []
    done = aggjobs(db_url, "verify", "execution_metrics", "--from", T0.isoformat(),
                   "--to", AS_OF.isoformat())
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr

    conn.execute("DELETE FROM agent_runs WHERE runtime_seconds = 1e308")
    p.refresh_all(conn, settings, AS_OF)
    assert stored(conn, "execution_metrics_hourly", "hour", 1, bad) == (3.0, 1)
    assert_all_match(conn)


def test_big_values_that_cancel_and_infinities_have_the_documented_sums(
        conn, settings) -> None:
    cases = {1: [1e308, 1e308, -1e308, 3.0], 2: [math.inf, -math.inf], 3: [math.nan, 1.0],
             4: [1e-310, 1e300], 5: [-1e308, -1e308], 6: [1e160, 2e160]}
    for ws, values in cases.items():
        for i, v in enumerate(values):
            p.run(conn, ws=ws, at=T0 + timedelta(minutes=i), runtime=v)
    p.refresh_all(conn, settings, AS_OF)
    avg = dict(conn.execute("SELECT workspace_id, avg_runtime"
                            " FROM analytics.execution_metrics_hourly").fetchall())
    assert avg[1] == pytest.approx((1e308 + 3.0) / 4)
    assert math.isnan(avg[2]) and math.isnan(avg[3])
    assert avg[4] == 1e300 / 2 and avg[5] == -math.inf
    assert avg[6] == pytest.approx(1.5e160)
    assert verify_all(conn, [get_rollup("execution_metrics")]) == []
    assert_all_match(conn)


def test_a_data_exception_quarantines_its_bucket_at_once_and_a_change_there_clears_it(
        loaded, settings) -> None:
    """A stand-in for data the aggregates cannot compute (SQLSTATE 22003): quarantined on
    the first run, the other buckets and grains go on; verify lists it, not a mismatch;
    once the data is fixed, the change recomputes the bucket whole and clears it."""
    conn, rollup, bad = loaded, get_rollup("execution_metrics"), T0 + 50 * H
    conn.execute(f"""
        CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.hour = '{bad.isoformat()}' THEN
                RAISE EXCEPTION 'value out of range: overflow' USING ERRCODE = '22003';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON analytics.execution_metrics_hourly
        FOR EACH ROW EXECUTE FUNCTION public.refuse()""")
    for ws in (1, 2):
        p.run(conn, ws=ws, at=bad + timedelta(minutes=5), runtime=2.0)  # a new, late bucket
        p.run(conn, ws=ws, at=bad + 5 * H, runtime=2.0)
    report = refresh(conn, rollup, as_of=AS_OF + 2 * 24 * H, settings=settings)
    assert report.grains[0].quarantined == [bad]  # at once, not after 3 runs
    assert [g.watermark_after for g in report.grains] == [
        AS_OF + 48 * H, AS_OF + 48 * H, Grain.WEEK.floor(AS_OF + 48 * H)]
    assert stored(conn, "execution_metrics_hourly", "hour", 1, bad + 5 * H) == (2.0, 1)
    reports = [verify_grain(conn, rollup, Grain.HOUR, T0, AS_OF + 48 * H)]
    assert reports[0].mismatches == [] and [b for b, _ in reports[0].quarantined] == [bad]
    assert "value out of range" in reports[0].quarantined[0][1]

    conn.execute("DROP TRIGGER refuse ON analytics.execution_metrics_hourly")
    conn.execute("DELETE FROM agent_runs WHERE workspace_id = 2 AND started_at >= %s"
                 " AND started_at < %s", (bad, bad + H))  # the offending row goes
    refresh(conn, rollup, as_of=AS_OF + 2 * 24 * H, settings=settings)
    assert conn.execute("SELECT count(*) FROM aggjobs.quarantine").fetchone()[0] == 0
    assert stored(conn, "execution_metrics_hourly", "hour", 1, bad) == (2.0, 1)  # whole
    assert_all_match(conn, rollup)


def test_a_rollup_whose_own_sum_overflows_is_quarantined_at_once_and_verify_goes_on(
        loaded, settings) -> None:
    """A rollup the built-ins' definitions do not cover: a plain float Sum, which still
    raises on overflow. The engine quarantines the bucket on the first run and materializes
    the others; verify says the bucket cannot be computed and compares the others, then,
    once refresh has quarantined it, lists it instead."""
    totals = Rollup(name="runtime_totals", source=AGENT_RUNS, grains=(Grain.HOUR,),
                    measures=(Sum(name="runtime_total", column="runtime_seconds"),))
    conn, bad = loaded, T0 + 3 * H
    conn.execute(rollup_sql.create_table(totals, Grain.HOUR))
    conn.execute("INSERT INTO aggjobs.watermarks (rollup, grain) VALUES (%s, 'hour')",
                 (totals.name,))
    definitions.record(conn, totals, 1)  # as `aggjobs migrate` would, had it been declared
    for i in range(2):
        p.run(conn, ws=1, at=bad + timedelta(minutes=i), runtime=1e308)
    report = refresh(conn, totals, as_of=AS_OF, settings=settings)
    assert report.grains[0].quarantined == [bad]  # at once
    assert report.grains[0].watermark_after == AS_OF
    stored_hours = conn.execute("SELECT DISTINCT hour FROM analytics.runtime_totals_hourly"
                                " ORDER BY 1").fetchall()
    assert [h for (h,) in stored_hours] == [T0 + H, T0 + 2 * H, T0 + 30 * H]
    found = verify_grain(conn, totals, Grain.HOUR, T0, AS_OF)
    assert found.mismatches == [] and [b for b, _ in found.quarantined] == [bad]

    conn.execute("DELETE FROM aggjobs.quarantine")  # as if refresh had not met it yet
    found = verify_grain(conn, totals, Grain.HOUR, T0, AS_OF)
    [mismatch] = found.mismatches
    assert (mismatch.bucket, mismatch.workspace_id, mismatch.measure) == (
        bad, None, "(cannot be computed)")
    assert "out of range" in mismatch.expected and found.groups == 6


# ------------------------------------------------------------------ finding 7: NaN

def test_nan_is_a_value_and_verify_agrees_with_refresh(loaded, settings, db_url) -> None:
    conn = loaded
    p.run(conn, ws=1, at=T0 + H + timedelta(minutes=40), runtime=math.nan, credits="NaN")
    p.run(conn, ws=2, at=T0 + 30 * H, runtime=math.inf)
    p.credit(conn, ws=2, kind="refund", amount="NaN", at=T0 + 2 * H)
    p.refresh_all(conn, settings, AS_OF)
    hour = conn.execute("SELECT avg_runtime, p95_runtime, total_credits"
                        " FROM analytics.execution_metrics_hourly"
                        " WHERE workspace_id = 1 AND hour = %s", (T0 + H,)).fetchone()
    assert all(math.isnan(v) for v in hour)
    assert verify_all(conn) == []
    assert_all_match(conn)
    done = aggjobs(db_url, "verify", "--from", T0.isoformat(), "--to", AS_OF.isoformat(),
                   "--repair")
    assert done.returncode == 0 and "mismatches remain" not in done.stdout, done.stdout

    # the jobs' other steps (views, health, reports) over NaN and Infinity
    for job, as_of in (("hourly_rollup", AS_OF + 2 * H), ("daily_rollup", T0 + 26 * H),
                       ("daily_rollup", T0 + 50 * H), ("weekly_rollup", AS_OF + 2 * H)):
        result = run_job(RunRequest(job=job, as_of=as_of), settings)
        assert result.status == "succeeded", (job, result)
    for day in (T0.date(), (T0 + 30 * H).date()):
        for fmt in ("md", "html", "json", "csv"):
            done = aggjobs(db_url, "report", "--day", day.isoformat(), "--format", fmt)
            assert done.returncode == 0 and "Traceback" not in done.stderr, (fmt, done.stderr)
