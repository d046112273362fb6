"""A platform's own rollup, declared in a module outside the package (AGGJOBS_ROLLUPS), taken
through the real `aggjobs` commands as subprocesses and the real HTTP server: planned,
created, refreshed, equal to a recomputation from the raw rows, verified, backfilled, listed
by status, the API and /metrics, readable by aggjobs_reader and refreshed by aggjobs_worker;
bad declarations refused in one line changing nothing; concurrent migrates; the plan's JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import errors as pg_errors

from aggjobs.api import tokens
from aggjobs.catalog import BUILTIN_ROLLUPS
from aggjobs.db.migrate import migrations
from tests.acceptance.test_cli import AGGJOBS, checksum, cli, empty_db_url, one_line_error
from tests.api.serve import serving
from tests.conftest import copy_of
from tests.security.conftest import login_role

__all__ = ["empty_db_url", "login_role"]  # fixtures used here, defined elsewhere

MODULE = "platform_rollups"
HEADER = "from aggjobs.catalog import *  # noqa: F403\n"
AGENT_COSTS = """
AGENT_COSTS = Rollup(
    name="agent_costs", source=AGENT_RUNS, dimensions=("workspace_id", "agent_id"),
    grains=(Grain.HOUR, Grain.DAY),
    measures=(Count(name="runs"), Sum(name="credits", column="credits_consumed"),
              Quantile(name="p90_runtime", column="runtime_seconds", q=0.9)))
"""
GOOD = AGENT_COSTS + "ROLLUPS = [AGENT_COSTS]\n"
BUILTIN = [r.name for r in BUILTIN_ROLLUPS]
T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, in the past


def declare(where: Path, body: str, name: str = MODULE) -> dict[str, str]:
    """Write the module `name` in `where` (outside the package); the environment naming it."""
    (where / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    return {"AGGJOBS_ROLLUPS": name, "PYTHONPATH": path}


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def plan_lines(stdout: str) -> dict[str, str]:
    """rollup -> its line of `aggjobs migrate [--plan]`."""
    names = {*BUILTIN, "agent_costs", "agent_small", "agent_new", "agent_gone"}
    return {line.split(":")[0]: line for line in stdout.splitlines()
            if line.split(":")[0] in names}


def definitions(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT rollup, version, state, fingerprint FROM"
                        " aggjobs.rollup_definitions ORDER BY 1, 2").fetchall()


def relations(conn: psycopg.Connection) -> list[tuple]:
    """Every relation and trigger aggjobs makes: what a refused migrate must not touch."""
    return conn.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class AS c JOIN pg_namespace AS n"
        " ON n.oid = c.relnamespace WHERE n.nspname IN ('analytics', 'aggjobs', 'public',"
        " 'aggjobs_build', 'aggjobs_retired') UNION ALL SELECT 'trigger', tgname, 't'"
        " FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2").fetchall()


def snapshot(conn: psycopg.Connection) -> tuple:
    return definitions(conn), relations(conn), checksum(conn)


# The raw rows' answer, written independently of aggjobs.sql.rollup: per workspace, agent
# and UTC hour (day), the count, the credits and percentile_cont(0.9) of the runtimes.
RAW = """
SELECT workspace_id, agent_id, {bucket} AS bucket, count(*), sum(credits_consumed),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY runtime_seconds)
FROM public.agent_runs WHERE started_at < %(end)s GROUP BY 1, 2, 3
"""
HOUR_OF = "date_trunc('hour', started_at, 'UTC')"
DAY_OF = "(started_at AT TIME ZONE 'UTC')::date"
STORED = """
SELECT workspace_id, agent_id, {bucket}, runs, credits, p90_runtime
FROM analytics.agent_costs_{table} WHERE {bucket} < %(end)s
"""


def keyed(rows: list[tuple]) -> dict[tuple, tuple]:
    return {tuple(r[:3]): tuple(r[3:]) for r in rows}


def raw_hourly(conn: psycopg.Connection, end: datetime) -> dict[tuple, tuple]:
    return keyed(conn.execute(RAW.format(bucket=HOUR_OF), {"end": end}).fetchall())


def stored_hourly(conn: psycopg.Connection, end: datetime) -> dict[tuple, tuple]:
    return keyed(conn.execute(STORED.format(bucket="hour", table="hourly"),
                              {"end": end}).fetchall())


def assert_daily_close(conn: psycopg.Connection, end_day: datetime) -> int:
    """count and credits exact, the p90 (merged from sketches) within 1%; returns the rows."""
    raw = keyed(conn.execute(RAW.format(bucket=DAY_OF), {"end": end_day}).fetchall())
    stored = keyed(conn.execute(STORED.format(bucket="day", table="daily"),
                                {"end": end_day.date()}).fetchall())
    assert stored.keys() == raw.keys()
    for key, (runs, credits, p90) in raw.items():
        got_runs, got_credits, got_p90 = stored[key]
        assert (got_runs, got_credits) == (runs, credits), key
        assert (got_p90 is None) == (p90 is None), key
        if p90 is not None:
            assert math.isclose(got_p90, p90, rel_tol=0.01), (key, got_p90, p90)
    return len(raw)


def watermarks(conn: psycopg.Connection, rollup: str) -> dict[str, datetime]:
    return dict(conn.execute("SELECT grain, watermark FROM aggjobs.watermarks WHERE rollup = %s",
                             (rollup,)).fetchall())


def scrape(base: str, secret: str) -> dict[tuple, float]:
    got = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {secret}"},
                    timeout=10)
    assert got.status_code == 200, got.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(got.text) for s in family.samples}


# -- 1. the whole life of a user rollup, through the CLI and the API --------------------------
def test_user_rollup_planned_created_refreshed_verified_backfilled_and_served(
        conn, db_url, tmp_path) -> None:
    env = declare(tmp_path, GOOD)
    ok(cli("demo", "--days", "2", "--workspaces", "5", "--runs-per-hour", "50", url=db_url))
    # runs of no agent (the dimension NULL), some without a runtime: a group of their own
    now = datetime.now(UTC)
    conn.execute(
        "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,"
        " runtime_seconds, credits_consumed) SELECT 9000000 + g, 1 + g %% 2, 1, NULL,"
        " 'completed', %s - g * interval '17 minutes', CASE WHEN g %% 3 = 0 THEN NULL ELSE"
        " g * 1.5 END, g * 0.25 FROM generate_series(1, 40) AS g", (now - timedelta(hours=3),))
    assert conn.execute("SELECT count(DISTINCT agent_id) FROM agent_runs").fetchone()[0] > 5
    ok(cli("refresh", url=db_url))  # the built-in rollups, before the user's is declared
    before = snapshot(conn)

    # --plan: agent_costs is new, the built-ins unchanged, and nothing changes
    planned = ok(cli("migrate", "--plan", url=db_url, extra_env=env))
    lines = plan_lines(planned.stdout)
    assert lines["agent_costs"] == ("agent_costs: new (v1): its tables are created and filled"
                                    " by the next refresh"), planned.stdout
    assert all(lines[name] == f"{name}: unchanged (v1)" for name in BUILTIN), planned.stdout
    assert "migrations to apply: none (up to date)" in planned.stdout
    assert planned.stdout.rstrip().endswith("nothing changed (--plan)")
    assert snapshot(conn) == before
    assert conn.execute("SELECT to_regclass('analytics.agent_costs_hourly')").fetchone()[0] \
        is None
    # refresh refuses a declaration migrate has not seen
    refused = cli("refresh", "agent_costs", url=db_url, extra_env=env)
    assert refused.returncode == 2
    assert "agent_costs (declared, but not created yet)" in one_line_error(refused)

    migrated = ok(cli("migrate", url=db_url, extra_env=env))
    assert plan_lines(migrated.stdout)["agent_costs"].startswith("agent_costs: new (v1)")
    live = [d for d in definitions(conn) if d[0] == "agent_costs"]
    assert [d[1:3] for d in live] == [(1, "live")]
    assert {d[:3] for d in definitions(conn)} - {d[:3] for d in before[0]} == {
        ("agent_costs", 1, "live")}
    for table in ("agent_costs_hourly", "agent_costs_daily"):
        assert conn.execute(f"SELECT count(*) FROM analytics.{table}").fetchone()[0] == 0
    assert conn.execute("SELECT to_regclass('analytics.agent_costs_weekly')").fetchone()[0] \
        is None
    again = ok(cli("migrate", "--plan", url=db_url, extra_env=env))
    assert plan_lines(again.stdout)["agent_costs"] == "agent_costs: unchanged (v1)"

    ok(cli("refresh", url=db_url, extra_env=env))
    marks = watermarks(conn, "agent_costs")
    hour_end, day_end = marks["hour"], marks["day"]
    assert now.replace(minute=0, second=0, microsecond=0) <= hour_end <= datetime.now(UTC)
    assert day_end == hour_end.replace(hour=0)
    raw = raw_hourly(conn, hour_end)
    assert len(raw) > 500 and any(k[1] is None for k in raw)
    assert any(v[2] is None for v in raw.values())  # a group of running rows: no runtime
    stored = stored_hourly(conn, hour_end)
    assert stored == raw  # count, sum and percentile_cont(0.9) exactly
    assert conn.execute("SELECT count(*) FROM analytics.agent_costs_hourly WHERE hour >= %s",
                        (hour_end,)).fetchone()[0] == 0
    assert assert_daily_close(conn, day_end) > 20

    first = conn.execute("SELECT min(hour) FROM analytics.agent_costs_hourly").fetchone()[0]
    window = ("--from", first.isoformat(), "--to", hour_end.isoformat())
    verified = ok(cli("verify", "agent_costs", *window, url=db_url, extra_env=env))
    assert verified.stdout.count(": ok") == 2, verified.stdout
    assert f"agent_costs hour: {len(raw):,} groups" in verified.stdout

    # a stored value gone wrong: verify finds it (exit 1), backfill recomputes it
    key = sorted(raw, key=str)[len(raw) // 2]
    assert conn.execute(
        "UPDATE analytics.agent_costs_hourly SET runs = runs + 7, credits = credits + 1"
        " WHERE workspace_id = %s AND agent_id IS NOT DISTINCT FROM %s AND hour = %s",
        key).rowcount == 1
    bad = cli("verify", "agent_costs", *window, url=db_url, extra_env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    where = f"{key[0]} agent_id {key[1]}"  # the mismatch table's workspace column
    rows = [line for line in bad.stdout.splitlines() if where in line]
    assert "hour: " in bad.stdout and ": 2 mismatches" in bad.stdout, bad.stdout
    assert [line.split(where)[1].split()[0] for line in rows] == ["runs", "credits"], (
        key, bad.stdout)
    assert bad.stdout.count(": ok") == 1  # the day was merged before the value went wrong
    back = ok(cli("backfill", "agent_costs", *window, url=db_url, extra_env=env))
    assert back.stdout.startswith("agent_costs: backfill #"), back.stdout
    assert stored_hourly(conn, hour_end) == raw
    assert assert_daily_close(conn, day_end) > 20
    ok(cli("verify", "agent_costs", *window, url=db_url, extra_env=env))
    audited = conn.execute("SELECT target, outcome FROM aggjobs.audit_log"
                           " WHERE action = 'backfill' ORDER BY id").fetchall()
    assert audited == [("agent_costs", "started"), ("agent_costs", "succeeded")]

    status = cli("status", "--json", url=db_url, extra_env=env)
    state = json.loads(status.stdout)
    assert status.returncode == (0 if state["healthy"] else 1), status.stderr
    assert not [p for p in state["problems"] if "agent_costs" in p], state["problems"]
    rows = {(r["rollup"], r["grain"]): r for r in state["rollups"]}
    assert {g for r, g in rows if r == "agent_costs"} == {"hour", "day"}
    assert rows[("agent_costs", "hour")]["table"] == "analytics.agent_costs_hourly"
    assert datetime.fromisoformat(rows[("agent_costs", "hour")]["watermark"]) == hour_end
    assert datetime.fromisoformat(rows[("agent_costs", "day")]["watermark"]) == day_end
    assert len(rows) == sum(len(r.grains) for r in BUILTIN_ROLLUPS) + 2

    # the API, served by a real process with the same declaration
    secret, _ = tokens.create(conn, "probe", "viewer", actor="tests")
    served_env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
    with serving({**served_env, **env, "AGGJOBS_DATABASE_URL": db_url}) as served:
        listed = httpx.get(f"{served.base}/api/rollups", timeout=10,
                           headers={"Authorization": f"Bearer {secret}"})
        assert listed.status_code == 200, listed.text
        api_rows = {(r["rollup"], r["grain"]): r for r in listed.json()}
        assert {g for r, g in api_rows if r == "agent_costs"} == {"hour", "day"}
        assert datetime.fromisoformat(api_rows[("agent_costs", "hour")]["watermark"]) \
            == hour_end
        assert api_rows[("agent_costs", "day")]["table"] == "analytics.agent_costs_daily"
        metrics = scrape(served.base, secret)
    for grain in ("hour", "day"):
        labels = (("grain", grain), ("rollup", "agent_costs"))
        assert metrics[("aggjobs_rollup_pending_groups", labels)] == 0
        assert ("aggjobs_rollup_lag_seconds", labels) in metrics
        # ... as for a built-in rollup
        assert ("aggjobs_rollup_lag_seconds", (("grain", grain),
                                               ("rollup", "agent_executions"))) in metrics


# -- 1b. the database roles --------------------------------------------------------------------
# A further dimension that may be NULL, with the measures merged through auxiliary joins at
# the day grain (the sets of DistinctCount, Avg's reference, the portable Quantile's sketch).
AGENT_USERS = """
AGENT_USERS = Rollup(
    name="agent_users", source=AGENT_RUNS, dimensions=("workspace_id", "agent_id"),
    grains=(Grain.HOUR, Grain.DAY),
    measures=(DistinctCount(name="users", column="user_id"),
              Avg(name="avg_runtime", column="runtime_seconds")))
"""


def test_worker_refreshes_a_user_rollup_and_the_reader_reads_it(
        conn, db_url, tmp_path, login_role: Callable[[str], str]) -> None:
    env = declare(tmp_path, AGENT_COSTS + AGENT_USERS + "ROLLUPS = [AGENT_COSTS, AGENT_USERS]\n")
    conn.execute(
        "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,"
        " runtime_seconds, credits_consumed) SELECT g, 1 + g %% 3, 1,"
        " CASE WHEN g %% 5 = 0 THEN NULL ELSE g %% 4 END, 'completed',"
        " %s + g * interval '7 minutes', (g * 37 %% 101) * 0.5, g %% 13 * 0.25"
        " FROM generate_series(1, 600) AS g", (T0,))
    ok(cli("migrate", url=db_url, extra_env=env))
    worker, reader = login_role("aggjobs_worker"), login_role("aggjobs_reader")

    as_of = (T0 + timedelta(days=3)).isoformat()
    refreshed = cli("refresh", "agent_costs", "--as-of", as_of, url=worker, extra_env=env)
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    end = watermarks(conn, "agent_costs")["hour"]
    assert end == T0 + timedelta(days=3)
    raw = raw_hourly(conn, end)
    assert len(raw) > 100 and stored_hourly(conn, end) == raw
    assert assert_daily_close(conn, watermarks(conn, "agent_costs")["day"]) > 5
    ok(cli("refresh", "agent_users", "--as-of", as_of, url=worker, extra_env=env))
    users = conn.execute(
        "SELECT workspace_id, agent_id, (started_at AT TIME ZONE 'UTC')::date,"
        " count(DISTINCT user_id), avg(runtime_seconds) FROM agent_runs GROUP BY 1, 2, 3"
        " ORDER BY 1, 2, 3").fetchall()
    assert any(r[1] is None for r in users)
    stored = conn.execute("SELECT workspace_id, agent_id, day, users, avg_runtime FROM"
                          " analytics.agent_users_daily ORDER BY 1, 2, 3").fetchall()
    assert [r[:4] for r in stored] == [r[:4] for r in users]
    assert all(math.isclose(a[4], b[4], rel_tol=1e-12) for a, b in zip(stored, users,
                                                                        strict=True))
    window = ("--from", T0.isoformat(), "--to", as_of)
    checked = ok(cli("verify", "agent_users", *window, url=db_url, extra_env=env))
    assert checked.stdout.count(": ok") == 2, checked.stdout

    with psycopg.connect(reader, autocommit=True) as r:
        assert stored_hourly(r, end) == raw
        daily = r.execute("SELECT count(*) FROM analytics.agent_costs_daily").fetchone()[0]
        assert daily > 5
        with pytest.raises(pg_errors.InsufficientPrivilege), r.transaction():
            r.execute("DELETE FROM analytics.agent_costs_hourly")
        with pytest.raises(pg_errors.InsufficientPrivilege), r.transaction():
            r.execute("SELECT count(*) FROM public.agent_runs")
    # the reader cannot migrate either: it exits 2 and the definitions stay as they were
    before = definitions(conn)
    more = AGENT_COSTS + textwrap.dedent("""
        ROLLUPS = [AGENT_COSTS, Rollup(name="agent_new", source=AGENT_RUNS,
                                       measures=(Count(name="runs"),))]
        """)
    refused = cli("migrate", url=reader, extra_env=declare(tmp_path, more, "platform_rollups_2"))
    assert refused.returncode == 2, refused.stderr
    assert one_line_error(refused).startswith(
        "error: the database role lacks a privilege: permission denied for "), refused.stderr
    assert definitions(conn) == before


# -- 2. bad declarations -------------------------------------------------------------------
ORDERS = 'Source(name="orders", table="orders", time_column="created_at")'


def bad(rollup: str) -> str:
    """The good rollup (new to the database) and a bad one: neither may be created."""
    return AGENT_COSTS + f"ROLLUPS = [AGENT_COSTS, {rollup}]\n"


BAD = {
    "clashing name": (
        bad('Rollup(name="execution_metrics", source=AGENT_RUNS, measures=(Count(name="n"),))'),
        "rollup 'execution_metrics': name: already used by a built-in rollup"),
    "clashing name twice declared": (
        bad('Rollup(name="agent_costs", source=AGENT_RUNS, measures=(Count(name="n"),))'),
        "rollup 'agent_costs': name: already used by another declared rollup"),
    "unknown source table": (
        bad(f'Rollup(name="orders_daily", source={ORDERS}, measures=(Count(name="n"),))'),
        "public.orders does not exist (source 'orders' of orders_daily)"),
    "second source on a table": (
        bad('Rollup(name="runs2", source=Source(name="runs2", table="agent_runs",'
            ' time_column="started_at"), measures=(Count(name="n"),))'),
        "rollup 'runs2': source: 'runs2' on public.agent_runs clashes with source"
        " 'agent_runs'"),
    "unknown column": (
        bad('Rollup(name="bad_col", source=AGENT_RUNS,'
            ' measures=(Sum(name="tokens", column="tokens_used"),))'),
        "public.agent_runs.tokens_used is missing (read by bad_col (measures.tokens.column))"),
    "unknown dimension": (
        bad('Rollup(name="bad_dim", source=AGENT_RUNS, dimensions=("workspace_id", "model"),'
            ' measures=(Count(name="n"),))'),
        "public.agent_runs.model is missing (read by bad_dim (dimensions))"),
    "sum over text": (
        bad('Rollup(name="bad_sum", source=AGENT_RUNS,'
            ' measures=(Sum(name="s", column="status"),))'),
        "public.agent_runs.status is text, must be a number type (read by bad_sum (measures.s.column))"),
    "distinct over text": (
        bad('Rollup(name="bad_distinct", source=AGENT_RUNS,'
            ' measures=(DistinctCount(name="d", column="status"),))'),
        "public.agent_runs.status is text, must be smallint, integer or bigint"
        " (read by bad_distinct (measures.d.column))"),
    "quantile over a timestamp": (
        bad('Rollup(name="bad_q", source=AGENT_RUNS,'
            ' measures=(Quantile(name="q", column="completed_at", q=0.5),))'),
        "public.agent_runs.completed_at is timestamp with time zone, must be a number type"
        " (read by bad_q (measures.q.column))"),
    "hour then week": (
        bad('Rollup(name="bad_g", source=AGENT_RUNS, grains=(Grain.HOUR, Grain.WEEK),'
            ' measures=(Count(name="n"),))'),
        "rollup 'bad_g': grains: (hour, week) is unsupported"),
    "grain as a string": (
        bad('Rollup(name="bad_g", source=AGENT_RUNS, grains=(Grain.HOUR, "month"),'
            ' measures=(Count(name="n"),))'),
        "rollup 'bad_g': grains: unsupported grain 'month'"),
    "quantile q out of range": (
        bad('Rollup(name="bad_q", source=AGENT_RUNS,'
            ' measures=(Quantile(name="q", column="runtime_seconds", q=90),))'),
        "rollup 'bad_q': measures.q.q: 90 must be a number strictly between 0 and 1"),
    "cannot be imported": (
        AGENT_COSTS + "import platform_billing_sdk\nROLLUPS = [AGENT_COSTS]\n",
        "cannot import the module: ModuleNotFoundError: No module named"
        " 'platform_billing_sdk'"),
    "raises on import": (
        AGENT_COSTS + "ROLLUPS = [AGENT_COSTS]\nraise RuntimeError('no config')\n",
        "cannot import the module: RuntimeError: no config"),
    "no ROLLUPS": (
        AGENT_COSTS + "ROLLUP = [AGENT_COSTS]\n",
        "the module must define ROLLUPS, a list or tuple of aggjobs.catalog.Rollup"),
    "ROLLUPS not rollups": (
        AGENT_COSTS + "ROLLUPS = [AGENT_COSTS, {'name': 'x'}]\n",
        "the module must define ROLLUPS, a list or tuple of aggjobs.catalog.Rollup"),
}


@pytest.fixture(scope="module")
def shared_url(server_url: str, template_db: str) -> Iterator[str]:
    """One database for the cases below (each must leave it as it found it): a raw row."""
    copies = copy_of(server_url, template_db, "aggjobs_m")
    url = next(copies)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,"
            " runtime_seconds, credits_consumed) VALUES (1, 1, 1, 1, 'completed', %s, 2, 1)",
            (T0,))
    yield url
    next(copies, None)


@pytest.mark.parametrize("case", BAD.values(), ids=list(BAD))
def test_bad_declaration_exits_2_in_one_line_and_changes_nothing(shared_url, tmp_path,
                                                                 case) -> None:
    body, reason = case
    with psycopg.connect(shared_url, autocommit=True) as conn:
        before = snapshot(conn)
        result = cli("migrate", url=shared_url, extra_env=declare(tmp_path, body))
        after = snapshot(conn)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert reason in line, line
    if "does not exist" not in reason and "is missing" not in reason and ", must be" not in reason:
        assert line.startswith(f"error: AGGJOBS_ROLLUPS={MODULE}: "), line
    assert result.stdout == ""
    assert after == before


# -- 3. two migrates at once -------------------------------------------------------------------
MIGRATE_LOCK = "hashtext('aggjobs.migrate')"


def waiting_migrates(conn: psycopg.Connection) -> int:
    """Migrates polling for the migrate lock (their last statement tried to take it)."""
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity AS a WHERE a.application_name ="
        " 'aggjobs:migrate' AND a.datname = current_database()"
        " AND a.query LIKE '%pg_try_advisory_xact_lock%'").fetchone()[0]


def start_migrate(url: str, env: dict[str, str]) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
    full.update(env, AGGJOBS_DATABASE_URL=url, COLUMNS="200")
    return subprocess.Popen([str(AGGJOBS), "migrate"], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_two_migrates_at_once_on_a_fresh_database_serialize(empty_db_url, tmp_path) -> None:
    """Both wait on the migrate lock (held here until both are queued), then one creates
    everything and the other finds it done: both exit 0, each migration and each rollup's
    version once."""
    env = declare(tmp_path, GOOD)
    with psycopg.connect(empty_db_url, autocommit=True) as holder:
        holder.execute(f"SELECT pg_advisory_lock({MIGRATE_LOCK})")
        first = start_migrate(empty_db_url, env)
        wait_for(lambda: waiting_migrates(holder) == 1, "the first migrate did not queue")
        second = start_migrate(empty_db_url, env)
        wait_for(lambda: waiting_migrates(holder) == 2, "the second migrate did not queue")
        assert first.poll() is None and second.poll() is None
        assert holder.execute("SELECT to_regnamespace('aggjobs')").fetchone()[0] is None
        holder.execute(f"SELECT pg_advisory_unlock({MIGRATE_LOCK})")
        outs = [p.communicate(timeout=120) for p in (first, second)]
        assert [p.returncode for p in (first, second)] == [0, 0], outs

        everything = "migrations applied: " + ", ".join(
            f"{m.version:04d}_{m.name}" for m in migrations())
        applied = sorted(out.splitlines()[0] for out, _ in outs)
        assert applied == sorted([everything, "migrations applied: none (up to date)"]), outs
        for out, _ in outs:
            lines = plan_lines(out)
            action = "new (v1)" if out.startswith(everything) else "unchanged (v1)"
            assert set(lines) == {*BUILTIN, "agent_costs"}, out
            assert all(line.startswith(f"{name}: {action}") for name, line in lines.items())

        assert holder.execute("SELECT version, count(*) FROM aggjobs.schema_migrations"
                              " GROUP BY 1 ORDER BY 1").fetchall() == [
            (m.version, 1) for m in migrations()]
        assert [d[:3] for d in definitions(holder)] == sorted(
            (name, 1, "live") for name in [*BUILTIN, "agent_costs"])
        assert holder.execute("SELECT count(*) FROM aggjobs.watermarks WHERE rollup ="
                              " 'agent_costs'").fetchone()[0] == 2
    # and the result is a database the commands use as any other
    ok(cli("migrate", "--plan", url=empty_db_url, extra_env=env))
    ok(cli("refresh", "--as-of", "2026-03-02", url=empty_db_url, extra_env=env))


def test_a_migrate_waiting_past_lock_wait_s_exits_2_and_changes_nothing(
        empty_db_url, tmp_path) -> None:
    """A migrate waits AGGJOBS_LOCK_WAIT_S (default 300 s) for one in progress, then gives
    up in one line naming the lock's holder, having done nothing."""
    env = {**declare(tmp_path, GOOD), "AGGJOBS_LOCK_WAIT_S": "1"}
    with psycopg.connect(empty_db_url, autocommit=True) as holder:
        holder.execute(f"SELECT pg_advisory_lock({MIGRATE_LOCK})")
        result = cli("migrate", url=empty_db_url, extra_env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert one_line_error(result) == (
            "error: another `aggjobs migrate` is running (waited 1 s, AGGJOBS_LOCK_WAIT_S); "
            "try again when it has finished")
        assert result.stdout == ""
        assert holder.execute("SELECT to_regnamespace('aggjobs'), to_regnamespace('analytics')"
                              ).fetchone() == (None, None)
        assert holder.execute("SELECT count(*) FROM pg_class WHERE relnamespace ="
                              " 'public'::regnamespace").fetchone()[0] == 0


# -- 4. the plan as JSON ------------------------------------------------------------------------
PLAN_KEYS = {"rollup", "action", "version", "next_version", "rebuild", "changes",
             "history_before", "history_rows", "needs_force", "notes"}
V1 = AGENT_COSTS + """
ROLLUPS = [
    AGENT_COSTS,
    Rollup(name="agent_small", source=AGENT_RUNS, grains=(Grain.HOUR, Grain.DAY),
           measures=(Count(name="runs"), Count(name="failed", where=Filter(column="status",
                                                                           value="failed")))),
    Rollup(name="agent_gone", source=AGENT_RUNS, grains=(Grain.HOUR,),
           measures=(Count(name="runs"),)),
]
"""
V2 = """
ROLLUPS = [
    Rollup(name="agent_costs", source=AGENT_RUNS, dimensions=("workspace_id", "agent_id"),
           grains=(Grain.HOUR, Grain.DAY),
           measures=(Count(name="runs"), Sum(name="credits", column="credits_consumed"),
                     Quantile(name="p90_runtime", column="runtime_seconds", q=0.9),
                     Avg(name="avg_runtime", column="runtime_seconds"))),
    Rollup(name="agent_small", source=AGENT_RUNS, grains=(Grain.HOUR, Grain.DAY),
           measures=(Count(name="runs"),)),
    Rollup(name="agent_new", source=AGENT_RUNS, grains=(Grain.HOUR,),
           measures=(Count(name="runs"),)),
]
"""


def plan_json(result: subprocess.CompletedProcess) -> dict:
    ok(result)
    data = json.loads(result.stdout)
    assert set(data) == {"planned", "migrations", "rollups", "retired_tables_dropped"}
    for entry in data["rollups"]:
        assert set(entry) == PLAN_KEYS, entry
        assert isinstance(entry["rebuild"], bool) and isinstance(entry["changes"], list)
        assert all(set(c) == {"kind", "text"} for c in entry["changes"])
        assert isinstance(entry["notes"], list) and isinstance(entry["history_rows"], int)
    return data


def test_plan_json_says_per_rollup_what_migrate_will_do(conn, db_url, tmp_path) -> None:
    ok(cli("migrate", url=db_url, extra_env=declare(tmp_path, V1, "rollups_v1")))
    ok(cli("refresh", "--as-of", T0.isoformat(), url=db_url,
           extra_env=declare(tmp_path, V1, "rollups_v1")))
    env = declare(tmp_path, V2, "rollups_v2")
    before = snapshot(conn)

    data = plan_json(cli("migrate", "--plan", "--json", url=db_url, extra_env=env))
    assert data["planned"] is True and data["migrations"] == []
    assert data["retired_tables_dropped"] == []
    by = {e["rollup"]: e for e in data["rollups"]}
    assert [e["rollup"] for e in data["rollups"]] == [
        *BUILTIN, "agent_costs", "agent_small", "agent_new", "agent_gone"]
    for name in BUILTIN:
        assert by[name] | {"rollup": None} == {
            "rollup": None, "action": "unchanged", "version": 1, "next_version": 1,
            "rebuild": False, "changes": [], "history_before": None, "history_rows": 0,
            "needs_force": None, "notes": []}
    costs = by["agent_costs"]
    assert (costs["action"], costs["version"], costs["next_version"], costs["rebuild"]) == (
        "changed", 1, 2, True)
    assert [c["kind"] for c in costs["changes"]] == ["measure added"], costs
    assert "avg_runtime" in costs["changes"][0]["text"]
    small = by["agent_small"]
    assert (small["action"], small["version"], small["next_version"], small["rebuild"]) == (
        "changed", 1, 2, False)
    assert [c["kind"] for c in small["changes"]] == ["measure removed"], small
    assert "failed" in small["changes"][0]["text"]
    assert {k: by["agent_new"][k] for k in ("action", "version", "next_version", "rebuild")} \
        == {"action": "new", "version": None, "next_version": 1, "rebuild": False}
    assert {k: by["agent_gone"][k] for k in ("action", "version", "next_version", "rebuild")} \
        == {"action": "removed", "version": 1, "next_version": None, "rebuild": False}
    assert snapshot(conn) == before  # --plan changed nothing

    # what migrate then does is what the plan said, and its --json says the same
    done = plan_json(cli("migrate", "--json", url=db_url, extra_env=env))
    assert done["planned"] is False
    assert [{k: e[k] for k in ("rollup", "action", "version", "next_version", "rebuild")}
            for e in done["rollups"]] == [
        {k: e[k] for k in ("rollup", "action", "version", "next_version", "rebuild")}
        for e in data["rollups"]]
    assert [d[:3] for d in definitions(conn) if d[0] not in BUILTIN] == [
        ("agent_costs", 1, "live"), ("agent_costs", 2, "building"),
        ("agent_gone", 1, "removed"), ("agent_new", 1, "live"), ("agent_small", 1, "retired"),
        ("agent_small", 2, "live")]
    cols = {c for (c,) in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'analytics'"
        " AND table_name = 'agent_small_hourly'")}
    assert "runs" in cols and "failed" not in cols  # removed in place
    assert conn.execute("SELECT to_regclass('analytics.agent_gone_hourly')").fetchone()[0] \
        is None
    assert conn.execute("SELECT to_regclass('aggjobs_build.agent_costs_hourly')").fetchone()[0] \
        is not None

    again = plan_json(cli("migrate", "--plan", "--json", url=db_url, extra_env=env))
    by = {e["rollup"]: e for e in again["rollups"]}
    assert {k: by["agent_costs"][k] for k in ("action", "version", "next_version")} == {
        "action": "rebuilding", "version": 1, "next_version": 2}
    assert {e["action"] for n, e in by.items() if n != "agent_costs"} == {"unchanged"}
    assert (by["agent_small"]["version"], by["agent_new"]["version"]) == (2, 1)
    assert "agent_gone" not in by


def test_plan_on_a_fresh_database_lists_every_migration_and_creates_nothing(
        empty_db_url, tmp_path) -> None:
    env = declare(tmp_path, GOOD)
    data = plan_json(cli("migrate", "--plan", "--json", url=empty_db_url, extra_env=env))
    assert data["migrations"] == [f"{m.version:04d}_{m.name}" for m in migrations()]
    assert data["migrations"][0] == "0001_initial" and len(data["migrations"]) >= 14
    assert [(e["rollup"], e["action"], e["version"], e["next_version"])
            for e in data["rollups"]] == [(n, "new", None, 1) for n in [*BUILTIN, "agent_costs"]]
    text = ok(cli("migrate", "--plan", url=empty_db_url, extra_env=env)).stdout
    assert text.splitlines()[0] == "migrations to apply: " + ", ".join(data["migrations"])
    assert text.rstrip().endswith("nothing changed (--plan)")
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'aggjobs%%'"
                         " OR nspname = 'analytics'").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_class WHERE relnamespace ="
                         " 'public'::regnamespace").fetchone()[0] == 0
