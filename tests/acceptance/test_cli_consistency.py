"""What a user sees of `aggjobs`, alike everywhere (issue 17): help texts naming the rollups
and jobs in force, one table style, compact JSON parameters, the actor `cli:<user>@<host>`
even without $USER, `--version` and shell completion. Real subprocesses."""

from __future__ import annotations

import os
import pwd
import socket
from importlib.metadata import version

import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS
from aggjobs.catalog.jobs import JOB_SPECS
from tests.acceptance.test_cli import UNREACHABLE, cli
from tests.acceptance.test_user_rollups import GOOD, declare

FRAME = set("│┃║┏┓┗┛╭╮╰╯┌┐└┘")  # vertical borders: the one style has none


@pytest.mark.parametrize("command", ["backfill", "verify", "refresh", "rows"])
def test_help_lists_every_rollup_in_force(command, tmp_path) -> None:
    env = declare(tmp_path, GOOD)  # a platform's own rollup, agent_costs
    shown = cli(command, "--help", url=UNREACHABLE, extra_env=env)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for name in [r.name for r in BUILTIN_ROLLUPS] + ["agent_costs"]:
        assert name in text, (name, text)


@pytest.mark.parametrize("args", [["run", "--help"], ["runs", "--help"],
                                  ["worker", "--help"]], ids=lambda a: a[0])
def test_help_lists_every_job(args) -> None:
    text = " ".join(cli(*args, url=UNREACHABLE).stdout.split())
    for job in JOB_SPECS:
        assert job in text, (job, text)


def test_version_comes_from_the_package_metadata() -> None:
    shown = cli("--version", url=UNREACHABLE)
    assert shown.returncode == 0 and shown.stdout == f"aggjobs {version('aggjobs')}\n"


def test_shell_completion_is_offered_and_completes_commands() -> None:
    script = cli("--show-completion", "bash", url=UNREACHABLE)
    assert script.returncode == 0 and "_AGGJOBS_COMPLETE=complete_bash" in script.stdout
    # what the script asks the command for when one presses Tab after `aggjobs token r`,
    # even with a setting that every command would refuse
    words = cli(url=UNREACHABLE, extra_env={
        "_AGGJOBS_COMPLETE": "complete_bash", "COMP_WORDS": "aggjobs token r",
        "COMP_CWORD": "2", "AGGJOBS_WORK_MEM": "lots"})
    assert words.returncode == 0 and words.stdout.split() == ["rotate", "revoke"], words


def without_user() -> dict[str, str]:
    """The environment of cron or a container: neither USER nor LOGNAME."""
    return {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME", "LNAME",
                                                             "USERNAME")}


def test_the_actor_is_cli_user_at_host_everywhere_even_without_user(db_url, conn,
                                                                    monkeypatch) -> None:
    for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    expected = f"cli:{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}"
    ran = cli("run", "refresh_materialized_views", url=db_url)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    made = cli("token", "create", "--name", "ci", "--role", "viewer", url=db_url)
    assert made.returncode == 0, made.stderr
    actors = conn.execute("SELECT DISTINCT actor FROM aggjobs.audit_log").fetchall()
    assert actors == [(expected,)]
    assert conn.execute("SELECT who FROM aggjobs.job_runs").fetchall() == [(expected,)]


def test_one_table_style_and_compact_json_parameters(db_url, conn) -> None:
    conn.execute("SELECT aggjobs.create_token('ci', 'viewer', repeat('a', 64), 'tests', 30,"
                 " 'tests')")
    assert cli("run", "refresh_materialized_views", url=db_url).returncode == 0
    for args in (["status"], ["runs"], ["audit"], ["token", "list"],
                 ["run", "refresh_materialized_views"]):
        shown = cli(*args, url=db_url)
        assert shown.returncode in (0, 1), shown.stderr  # status: 1 when unhealthy
        assert "─" in shown.stdout, (args, shown.stdout)  # the rule under the header
        assert not FRAME & set(shown.stdout), (args, shown.stdout)
    audit = cli("audit", url=db_url).stdout
    created = next(line for line in audit.splitlines() if "token.create" in line)
    assert '{"role":"viewer","db_user":' in created and '+00:00"}' in created, audit
    assert '": "' not in audit and "null" not in audit
