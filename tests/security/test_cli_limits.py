"""The command line's side: `aggjobs backfill` under the span cap (`--force` past it), and
the `cli:<user>@<host>` source of the audit rows it writes, as real processes."""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime, timedelta

from .test_audit_cli import aggjobs

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
CLI_SOURCE = f"cli:{getpass.getuser()}@{socket.gethostname()}"


def rows(conn, action: str) -> list[tuple]:
    return conn.execute("SELECT actor, params, outcome, source FROM aggjobs.audit_log"
                        " WHERE action = %s ORDER BY id", (action,)).fetchall()


def test_backfill_over_the_cap_exits_2_unless_forced(db_url, conn, monkeypatch):
    monkeypatch.setenv("AGGJOBS_MAX_BACKFILL_DAYS", "3")
    lo, hi = (TODAY - timedelta(days=6)).isoformat(), (TODAY - timedelta(days=1)).isoformat()
    out = aggjobs(db_url, "backfill", "user_activity", "--from", lo, "--to", hi)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert ("the range spans 5 days, over the backfill cap of 3 days "
            "(AGGJOBS_MAX_BACKFILL_DAYS)") in line and "--force" in line
    assert conn.execute("SELECT count(*) FROM aggjobs.backfills").fetchone()[0] == 0

    forced = aggjobs(db_url, "backfill", "user_activity", "--from", lo, "--to", hi, "--force")
    assert forced.returncode == 0, forced.stderr
    assert conn.execute("SELECT DISTINCT status FROM aggjobs.backfills").fetchall() == [
        ("succeeded",)]

    within = aggjobs(db_url, "backfill", "user_activity", "--from",
                     (TODAY - timedelta(days=3)).isoformat(), "--to", TODAY.isoformat(),
                     "--sessions", "2")
    assert within.returncode == 0, within.stderr
    too_many = aggjobs(db_url, "backfill", "user_activity", "--from", lo, "--to", hi,
                       "--sessions", "17")
    assert too_many.returncode == 2 and "--sessions" in too_many.stderr

    # refused: one row; each backfill that ran: a row when it started, one when it ended
    refused, forced_start, forced_row, plain_start, plain = rows(conn, "backfill")
    user = CLI_SOURCE  # actor and source alike: cli:<user>@<host>
    assert refused[0] == user and refused[2].startswith("refused: the range spans 5 days")
    assert refused[1]["forced"] is False and refused[1]["days"] == 5
    assert (forced_start[2], plain_start[2]) == ("started", "started")
    assert forced_row[1]["forced"] is True and forced_row[2] == "succeeded"
    assert plain[1]["forced"] is False and plain[2] == "succeeded"
    assert (forced_row[1]["sessions"], plain[1]["sessions"]) == (1, 2)
    assert {r[3] for r in (refused, forced_start, forced_row, plain_start, plain)} == {
        CLI_SOURCE}


def test_cli_audit_rows_say_where_the_command_ran(db_url, conn):
    assert aggjobs(db_url, "token", "create", "--name", "n", "--role", "viewer").returncode == 0
    assert aggjobs(db_url, "token", "revoke", "n").returncode == 0
    ran = aggjobs(db_url, "run", "refresh_materialized_views")
    assert ran.returncode == 0, ran.stderr
    got = conn.execute("SELECT action, source FROM aggjobs.audit_log ORDER BY id").fetchall()
    assert got == [("token.create", CLI_SOURCE), ("token.revoke", CLI_SOURCE),
                   ("run", CLI_SOURCE)]


def test_runs_started_elsewhere_say_which_process(conn, settings):
    """A run asked for neither over HTTP nor from the command line (a Celery worker's)."""
    from aggjobs.jobs.runner import RunRequest, run_job

    assert run_job(RunRequest(job="refresh_materialized_views", trigger="manual"),
                   settings).status == "succeeded"
    assert conn.execute("SELECT source FROM aggjobs.audit_log WHERE action = 'run'"
                        ).fetchall() == [(f"worker:{getpass.getuser()}@{socket.gethostname()}",)]
