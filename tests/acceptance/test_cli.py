"""The installed `aggjobs` command, run as a user runs it: a subprocess with an environment.

Contract (cli/main.py): bad input exits 2 with a one-line reason on stderr and changes
nothing; `verify` exits 1 on a mismatch, listing the bucket.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain
from aggjobs.engine.recompute import native_installed
from aggjobs.settings import Settings
from tests import platform as p
from tests.conftest import create_database, drop_database
from tests.reference import assert_matches

# `python -m aggjobs.cli` has no __main__; the console script is what users run.
AGGJOBS = Path(sys.executable).parent / "aggjobs"
SUBCOMMANDS = ("migrate", "demo", "refresh", "backfill", "verify", "status")
T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, in the past
DAYS = 3
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/none"


def cli(*args: str, url: str | None, timeout: float = 120,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
    env["COLUMNS"] = "200"  # rich wraps tables to the terminal width; keep cells whole
    if url is not None:
        env["AGGJOBS_DATABASE_URL"] = url
    env.update(extra_env or {})
    return subprocess.run([str(AGGJOBS), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return lines[0]


def seed(conn: psycopg.Connection) -> None:
    p.seed_sources(conn, T0, rows=DAYS * 24 * 6, every=timedelta(minutes=10))


def checksum(conn: psycopg.Connection) -> dict[str, tuple]:
    """count(*) and an md5 of every row of every aggjobs.*, analytics.* and source table."""
    tables = conn.execute(
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables"
        " WHERE table_schema IN ('aggjobs', 'analytics', 'public') AND table_type = 'BASE TABLE'"
        " ORDER BY 1"
    ).fetchall()
    out = {}
    for (name,) in tables:
        out[name] = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
            f" FROM {name} AS t"
        ).fetchone()
    return out


@pytest.fixture
def busy(conn: psycopg.Connection, settings: Settings) -> psycopg.Connection:
    """A database with work for any command that would act: half materialized, with a late
    row logged and not yet fanned out."""
    seed(conn)
    p.refresh_all(conn, settings, T0 + timedelta(days=1))
    p.run(conn, ws=2, at=T0 + timedelta(hours=3, minutes=5))
    assert conn.execute("SELECT count(*) FROM aggjobs.invalidation_log").fetchone()[0] == 1
    return conn


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    name = f"aggjobs_empty_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    yield url
    drop_database(server_url, name)


def test_help_of_every_subcommand_exits_0() -> None:
    procs = {
        cmd: subprocess.Popen([str(AGGJOBS), *([cmd] if cmd else []), "--help"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, COLUMNS="200"))
        for cmd in ("", *SUBCOMMANDS)
    }
    for cmd, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (cmd, err)
        assert f"Usage: aggjobs {cmd}".strip() in out, out
        if cmd:
            assert "--help" in out
        else:
            for sub in SUBCOMMANDS:
                assert sub in out


GRAINS = sum(len(r.grains) for r in BUILTIN_ROLLUPS)  # one verify line, status row, problem each

BAD_INPUT = {
    "unknown rollup": (["refresh", "nope"], "unknown rollup 'nope'"),
    "inverted range": (["verify", "--from", "2026-01-02", "--to", "2026-01-01"],
                       "must be before"),
    "future range": (["backfill", "--from", "2026-01-01", "--to", "2199-01-01"],
                     "in the future"),
    "future as-of": (["refresh", "--as-of", "2199-01-01"], "in the future"),
    "malformed timestamp": (["refresh", "--as-of", "yesterday-ish"], "cannot parse timestamp"),
    "malformed range": (["backfill", "user_activity", "--from", "2026-13-45", "--to",
                         "2026-11-01"], "cannot parse timestamp"),
    "injection as rollup": (["refresh", "x'; DROP TABLE agent_runs; --"], "unknown rollup"),
    "grain the rollup lacks": (["refresh", "agent_executions", "--grain", "week"],
                               "rollup agent_executions has no week grain (its grains: hour, day)"),
    # issue 21: inputs that used to end in a traceback (exit 1), or to run unbounded
    "offset overflowing year 1": (["refresh", "--as-of", "0001-01-01T00:00+01:00"],
                                  "outside the supported times"),
    "offset overflowing year 9999": (["backfill", "--from", "9999-12-31T23:59-23:59", "--to",
                                      "2026-11-01"], "outside the supported times"),
    "range before 1970": (["verify", "--from", "1969-12-31", "--to", "2026-11-01"],
                          "outside the supported times"),
    "verify over the span cap": (["verify", "--from", "1970-01-01", "--to", "2026-11-01"],
                                 "over the backfill cap of 31 days (AGGJOBS_MAX_BACKFILL_DAYS)"),
    "max-buckets overflowing": (["refresh", "--max-buckets", "99999999999999999999999"],
                                "Invalid value for '--max-buckets'"),
    "verify limit below 1": (["verify", "--from", "2026-11-02", "--to", "2026-11-03",
                              "--limit", "-1"], "Invalid value for '--limit'"),
    "infinite expiry": (["token", "create", "--name", "x", "--role", "viewer",
                         "--expires-days", "inf"], "Invalid value for '--expires-days'"),
    "NaN expiry": (["token", "create", "--name", "x", "--role", "viewer",
                    "--expires-days", "nan"], "Invalid value for '--expires-days'"),
    "workspace beyond bigint": (["report", "--day", "2026-11-02", "--workspace",
                                 "9223372036854775808"], "Invalid value for '--workspace'"),
    "report day 0001": (["report", "--day", "0001-01-01"], "outside the supported times"),
    "report day 2300": (["report", "--day", "2300-01-01"], "outside the supported times"),
    "missing option": (["verify"], "Missing option '--from'"),
    "unknown option": (["refresh", "--fro", "x"], "No such option: --fro"),
    "database URL not a URL": (["status"], "AGGJOBS_DATABASE_URL is not a PostgreSQL URL",
                               {"AGGJOBS_DATABASE_URL": "not a url"}),
    "database URL of MySQL": (["status"], "AGGJOBS_DATABASE_URL: mysql:// is not PostgreSQL",
                              {"AGGJOBS_DATABASE_URL": "mysql://root@127.0.0.1:3306/db"}),
    # unset means the embedded server; empty must not start one (here: in a temp dir)
    "database URL empty": (["status"], ("AGGJOBS_DATABASE_URL is empty: unset it to use the "
                                        "embedded PostgreSQL, or set a postgresql:// URL"),
                           {"AGGJOBS_DATABASE_URL": ""}),
    "setting not a number": (["status"], "AGGJOBS_MAX_BACKFILL_DAYS",
                             {"AGGJOBS_MAX_BACKFILL_DAYS": "lots"}),
}


@pytest.mark.parametrize("case", BAD_INPUT.values(), ids=list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_changes_nothing(busy, db_url, tmp_path,
                                                             case) -> None:
    args, reason, *env = case
    before = checksum(busy)
    result = cli(*args, url=db_url, extra_env={"AGGJOBS_DATA_DIR": str(tmp_path / "data"),
                                               **(env[0] if env else {})})
    assert result.returncode == 2, result
    line = one_line_error(result)
    assert line.startswith("error: ") and reason in line, line
    assert result.stdout == ""
    assert checksum(busy) == before
    assert not (tmp_path / "data").exists()  # no embedded server was started


def test_injection_as_a_rollup_name_is_refused_and_agent_runs_survives(busy, db_url) -> None:
    runs = busy.execute("SELECT count(*) FROM agent_runs").fetchone()[0]
    result = cli("refresh", "x'; DROP TABLE agent_runs; --", url=db_url)
    assert result.returncode == 2
    assert "x'; DROP TABLE agent_runs; --" in one_line_error(result)
    assert busy.execute("SELECT to_regclass('public.agent_runs')").fetchone()[0] is not None
    assert busy.execute("SELECT count(*) FROM agent_runs").fetchone()[0] == runs


@pytest.mark.parametrize("args", [["refresh", "--grain", "minute"], ["verify"],
                                  ["refresh", "--max-buckets", "0"]],
                         ids=["bad choice", "missing option", "out of range"])
def test_usage_errors_exit_2_without_a_traceback(busy, db_url, args) -> None:
    before = checksum(busy)
    result = cli(*args, url=db_url)
    assert checksum(busy) == before
    assert "Traceback" not in result.stderr, result.stderr[-300:]
    assert result.returncode == 2


@pytest.mark.parametrize("args", [["status"], ["refresh", "--as-of", "2026-11-01"],
                                  ["migrate"]], ids=lambda a: a[0])
def test_unreachable_database_fails_fast_with_one_line(args) -> None:
    started = time.monotonic()
    result = cli(*args, url=UNREACHABLE, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result
    line = one_line_error(result)
    assert line.startswith("error: cannot connect to the database"), line
    assert elapsed < 8, f"took {elapsed:.1f} s"


def test_migrate_twice_is_idempotent(empty_db_url: str) -> None:
    result = cli("status", url=empty_db_url)  # an empty database needs migrating first
    assert result.returncode == 2 and "aggjobs migrate" in one_line_error(result)

    first = cli("migrate", url=empty_db_url)
    assert first.returncode == 0, first.stderr
    assert "migrations applied: 0001_initial" in first.stdout
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        schema_before = schema_objects(conn)
        data_before = checksum(conn)
    assert {f"analytics.{r.table(g)}" for r in BUILTIN_ROLLUPS for g in r.grains} <= set(data_before)

    second = cli("migrate", url=empty_db_url)
    assert second.returncode == 0, second.stderr
    assert "none (up to date)" in second.stdout
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert schema_objects(conn) == schema_before
        after = checksum(conn)
    # Only timestamps of rows that sync re-touches may move; none should.
    assert after == data_before
    # healthy, but for the liveness check: no worker nor scheduler ever ran on it
    assert cli("status", url=empty_db_url,
               extra_env={"AGGJOBS_LIVENESS_SECONDS": "0"}).returncode == 0


def schema_objects(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        """
        SELECT 'rel', n.nspname, c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('aggjobs', 'analytics', 'public')
        UNION ALL
        SELECT 'trigger', tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t WHERE NOT tgisinternal
        UNION ALL
        SELECT 'function', n.nspname, p.proname, md5(pg_get_functiondef(p.oid)) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'aggjobs' AND p.prokind <> 'a'
        UNION ALL  -- pg_get_functiondef refuses an aggregate: its functions name it
        SELECT 'aggregate', n.nspname, p.proname, concat_ws(' ', a.aggtransfn, a.aggfinalfn,
               a.aggcombinefn, a.aggtranstype::regtype) FROM pg_aggregate a
        JOIN pg_proc p ON p.oid = a.aggfnoid JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'aggjobs'
        ORDER BY 1, 2, 3
        """
    ).fetchall()


def test_refresh_verify_repair_and_status(conn, db_url) -> None:
    seed(conn)
    end = T0 + timedelta(days=DAYS)
    result = cli("refresh", "--as-of", end.isoformat(), "--json", url=db_url)
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert [r["rollup"] for r in reports] == [r.name for r in BUILTIN_ROLLUPS]
    for report in reports:
        hour = report["grains"][0]
        assert (hour["grain"], hour["new_buckets"], hour["rows_written"]) == (
            "hour", DAYS * 24, 3 * DAYS * 24)
        assert datetime.fromisoformat(hour["watermark_after"]) == end

    window = ("--from", T0.isoformat(), "--to", end.isoformat())
    ok = cli("verify", *window, url=db_url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": ok") == GRAINS, ok.stdout

    hour_at, day_at = T0 + timedelta(hours=5), (T0 + timedelta(days=1)).date()
    assert conn.execute("UPDATE analytics.execution_metrics_hourly"
                        " SET total_executions = total_executions + 1"
                        " WHERE hour = %s AND workspace_id = 2", (hour_at,)).rowcount == 1
    assert conn.execute("UPDATE analytics.credit_consumption_daily"
                        " SET credits_used = credits_used + 1"
                        " WHERE day = %s AND workspace_id = 1", (day_at,)).rowcount == 1
    # Buckets are printed as the CLI's session renders them (the server's TimeZone).
    hour_text = str(conn.execute("SELECT %s::timestamptz", (hour_at,)).fetchone()[0])

    bad = cli("verify", *window, url=db_url)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stdout.count(": 1 mismatch\n") == 2, bad.stdout
    assert bad.stdout.count(": ok") == GRAINS - 2
    rows = [line for line in bad.stdout.splitlines()
            if "total_executions" in line or "credits_used" in line]
    assert any(hour_text in r and "total_executions" in r and " 2 " in r for r in rows), rows
    assert any(str(day_at) in r and "credits_used" in r and " 1 " in r for r in rows), rows

    only = cli("verify", "user_activity", *window, url=db_url)
    assert only.returncode == 0 and only.stdout.count(": ok") == 3

    # it ends with the command that repairs what it found: run as printed
    hint = bad.stdout.rstrip().splitlines()[-1].strip()
    assert hint == shlex.join(["aggjobs", "verify", "execution_metrics", "credit_consumption",
                               *window, "--repair"]), bad.stdout
    repaired = cli(*shlex.split(hint)[1:], url=db_url)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert repaired.stdout.count("repaired 1 group; 0 mismatches remain") == 2, repaired.stdout
    # Each repair is audited: who, which rollup and grain, how many groups, from where.
    audited = conn.execute(
        "SELECT actor, target, params->>'grain', params->>'groups', outcome, source"
        " FROM aggjobs.audit_log WHERE action = 'repair' ORDER BY id").fetchall()
    assert len(audited) == 2, audited
    for actor, target, grain, groups, outcome, source in audited:
        assert actor.startswith("cli") and source.startswith("cli:")
        assert target in {r.name for r in BUILTIN_ROLLUPS} and grain and groups == "1"
        assert outcome == "succeeded"

    again = cli("verify", *window, url=db_url)
    assert again.returncode == 0 and again.stdout.count(": ok") == GRAINS, again.stdout
    marks = p.watermarks(conn)
    for rollup in BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            assert_matches(conn, rollup.name, grain, marks[(rollup.name, grain.value)])

    status = cli("status", "--json", url=db_url)
    # The data is days old: every grain's tables are behind their freshness target; and no
    # worker nor scheduler ever ran against this database.
    assert status.returncode == 1, status.stderr
    state = json.loads(status.stdout)
    assert not state["healthy"] and len(state["problems"]) == GRAINS + 2
    assert sum("behind (target" in problem for problem in state["problems"]) == GRAINS
    assert {"no_worker", "no_scheduler"} <= set(state["incidents"])
    rows = state["rollups"]
    assert len(rows) == GRAINS
    assert {(r["rollup"], r["grain"]) for r in rows} == {
        (r.name, g.value) for r in BUILTIN_ROLLUPS for g in r.grains}
    by_key = {(r["rollup"], r["grain"]): r for r in rows}
    # which path computes: the rollups with a quantile or a distinct set, the C functions'
    c_path = "native" if native_installed(conn) else "portable"
    in_c = {"execution_metrics", "user_activity"}
    assert {(r["rollup"], r["path"]) for r in rows} == {
        (r.name, c_path if r.name in in_c else "sql") for r in BUILTIN_ROLLUPS}
    printed = cli("status", url=db_url).stdout
    assert ("execution_metrics, user_activity: quantiles and distinct sets by the "
            + ("C functions" if c_path == "native" else "portable SQL")) in printed, printed
    for rollup in BUILTIN_ROLLUPS:
        row = by_key[(rollup.name, "hour")]
        assert row["table"] == f"analytics.{rollup.table(Grain.HOUR)}"
        assert datetime.fromisoformat(row["watermark"]) == end
        assert row["pending_groups"] == 0
        if Grain.WEEK in rollup.grains:
            assert datetime.fromisoformat(by_key[(rollup.name, "week")]["watermark"]) == T0
