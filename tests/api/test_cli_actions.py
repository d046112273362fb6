"""The dashboard's retry and cancel actions from a terminal: `aggjobs retry RUN` and
`aggjobs cancel-backfill ID`, real CLI processes over the API tests' run history (the same
operations code as the buttons, audited as `cli:<user>@<host>`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from .test_run_page import run_id

AGGJOBS = str(Path(sys.executable).with_name("aggjobs"))


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url, "COLUMNS": "200"}
    return subprocess.run([AGGJOBS, *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_retry_from_the_terminal(board, conn: psycopg.Connection, db_url: str) -> None:
    failed = run_id(conn, "hourly_rollup", "failed")
    got = cli(db_url, "retry", str(failed), "--json")
    assert got.returncode == 1, got.stderr  # the poisoned table is still there: failed again
    again = json.loads(got.stdout)
    assert again["job"] == "hourly_rollup" and again["status"] == "failed"
    old_as_of, new_as_of, who = conn.execute(
        "SELECT o.as_of, n.as_of, n.who FROM aggjobs.job_runs AS o, aggjobs.job_runs AS n"
        " WHERE o.id = %s AND n.id = %s", (failed, again["id"])).fetchone()
    assert new_as_of == old_as_of and who.startswith("cli:")
    (params, actor), = conn.execute(
        "SELECT params, actor FROM aggjobs.audit_log WHERE action = 'retry'")
    assert params["retry_of"] == failed and params["run"] == again["id"] and actor == who

    succeeded = run_id(conn, "refresh_materialized_views", "succeeded")
    refused = cli(db_url, "retry", str(succeeded))
    assert refused.returncode == 2 and "only a failed or abandoned run" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    unknown = cli(db_url, "retry", "999999")
    assert unknown.returncode == 2 and "no run 999999" in unknown.stderr


def test_cancel_a_backfill_from_the_terminal(board, conn: psycopg.Connection,
                                             db_url: str) -> None:
    running, ended = (conn.execute("SELECT id FROM aggjobs.backfills WHERE rollup = %s",
                                   (name,)).fetchone()[0]
                      for name in ("bf_running", "bf_succeeded"))
    got = cli(db_url, "cancel-backfill", str(running))
    assert got.returncode == 0, got.stderr
    # "running" with no session behind it (the fixture's row): nobody runs it, so it ends now
    assert f"backfill {running} of bf_running: cancelled" in got.stdout
    status, requested, by = conn.execute(
        "SELECT status, cancel_requested, cancelled_by FROM aggjobs.backfills WHERE id = %s",
        (running,)).fetchone()
    assert (status, requested) == ("cancelled", True) and by.startswith("cli:")
    (params, outcome, actor), = conn.execute(
        "SELECT params, outcome, actor FROM aggjobs.audit_log"
        " WHERE action = 'backfill.cancel'")
    assert params == {"backfill": running, "was": "running"} and outcome == "cancelled"
    assert actor == by
    refused = cli(db_url, "cancel-backfill", str(ended))
    assert refused.returncode == 2 and "succeeded" in refused.stderr
    assert cli(db_url, "cancel-backfill", "0").returncode == 2
