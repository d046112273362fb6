"""Every invalid AGGJOBS_* value ends every entry point the same way: exit 2 and one line on
stderr naming the variable and the form it expects, from `aggjobs` and from the worker.

Each setting has an invalid example below; a setting added without one fails
`test_every_setting_has_an_invalid_example`, so that new settings are covered too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aggjobs.settings import Settings
from tests.acceptance.test_cli import UNREACHABLE, cli, one_line_error

# setting -> an invalid value (a string: what the variable would hold)
INVALID = {
    "database_url": "mysql://root@127.0.0.1:3306/db",
    "read_database_url": "not a url",
    "data_dir": " ",
    "rollups": "1st.module",
    "rebuild_seconds_per_run": "-1",
    "rebuild_check": "half",
    "retired_grace_days": "a week",
    "statement_timeout_ms": "5s",
    "lock_timeout_ms": "-5",
    "work_mem": "lots",
    "hours_per_transaction": "0",
    "backfill_sessions": "17",
    "max_buckets_per_refresh": "1.5",
    "dirty_groups_per_transaction": "many",
    "coalesce_fraction": "1.5",
    "scan_groups": "0",
    "quarantine_after": "never",
    "trigger_lock_timeout_ms": "0",
    "broker_url": "127.0.0.1:6379",
    "queue": "two words",
    "heavy_queue": "a/b",
    "schedule": '{"hourly_rollup": "61 * * * *"}',
    "idle_in_transaction_timeout_ms": "1m",
    "job_time_limit_s": '{"daily_rollup": 0}',
    "job_statement_timeout_ms": '{"hourly": 1000}',
    "heavy_jobs_concurrency": "0",
    "native": "maybe",
    "step_concurrency": "0",
    "retry_attempts": "0",
    "retry_base_s": "-1",
    "lock_wait_s": "forever",
    "alert_failures": "0",
    "alert_webhook_url": "hooks.internal/aggjobs",
    "freshness_target_s": '{"minute": 60}',
    "retention_days": "{raw: 30}",
    "cleanup_batch_rows": "0",
    "max_rows_days": "-1",
    "max_backfill_days": "lots",
    "api_rate_limit": "fast",
    "trusted_proxies": "proxy.local",
    "liveness_seconds": "-5",
}

# what the line says for a few, beyond the variable's name
SAYS = {
    "work_mem": "AGGJOBS_WORK_MEM='lots': expected a PostgreSQL memory size such as 64MB",
    "schedule": "hourly_rollup: invalid end of range: 61 > 59",
    "job_statement_timeout_ms": "unknown job 'hourly'; jobs are: hourly_rollup",
    "retention_days": "(not JSON): expected a JSON object of class (raw,",
    "backfill_sessions": "expected a whole number >= 1 and <= 16",
    "lock_wait_s": "expected a number of seconds >= 0",
    "native": "expected true or false",
    "liveness_seconds": "AGGJOBS_LIVENESS_SECONDS='-5'",
}


def variable(name: str) -> str:
    return f"AGGJOBS_{name.upper()}"


def test_every_setting_has_an_invalid_example() -> None:
    missing = sorted(set(Settings.model_fields) - set(INVALID))
    assert not missing, f"add an invalid example to INVALID for: {', '.join(missing)}"
    assert not set(INVALID) - set(Settings.model_fields), "INVALID names a setting gone"


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_invalid_setting_exits_2_with_one_line_naming_it(name: str, tmp_path) -> None:
    result = cli("status", url=UNREACHABLE, timeout=60, extra_env={
        "AGGJOBS_DATA_DIR": str(tmp_path / "data"), variable(name): INVALID[name]})
    assert result.returncode == 2, result
    line = one_line_error(result)
    assert line.startswith(f"error: {variable(name)}"), line
    assert SAYS.get(name, "") in line, line
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()  # no embedded server was started


def test_a_url_setting_never_repeats_its_value(tmp_path) -> None:
    secret = "postgresql://u:hunter2@[::1"  # unparseable, with a password in it
    result = cli("status", url=secret, timeout=60,
                 extra_env={"AGGJOBS_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 2
    assert "hunter2" not in result.stderr, result.stderr


def test_two_invalid_settings_are_both_named_on_one_line(tmp_path) -> None:
    result = cli("status", url=UNREACHABLE, timeout=60,
                 extra_env={"AGGJOBS_WORK_MEM": "lots", "AGGJOBS_RETRY_ATTEMPTS": "0"})
    line = one_line_error(result)
    assert "AGGJOBS_WORK_MEM" in line and "AGGJOBS_RETRY_ATTEMPTS" in line, line


@pytest.mark.parametrize("command", [
    ["aggjobs", "worker"], ["aggjobs", "beat"],
    [sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", "worker"],
    [sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", "beat"],
], ids=["aggjobs worker", "aggjobs beat", "celery worker", "celery beat"])
def test_the_worker_and_beat_refuse_an_invalid_schedule_in_one_line(command, tmp_path) -> None:
    if command[0] == "aggjobs":
        result = cli(*command[1:], url=UNREACHABLE, timeout=60, extra_env={
            "AGGJOBS_SCHEDULE": INVALID["schedule"]})
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
        env |= {"AGGJOBS_DATABASE_URL": UNREACHABLE, "AGGJOBS_SCHEDULE": INVALID["schedule"],
                "AGGJOBS_DATA_DIR": str(tmp_path / "data")}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
    assert result.returncode == 2, result
    line = one_line_error(result)
    assert line.startswith("error: AGGJOBS_SCHEDULE=") and SAYS["schedule"] in line, line
