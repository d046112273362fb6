"""The job runner against a real PostgreSQL (docs/contract.md#every-run, #limits, #retention).

No overlap (a second run is `skipped`, naming the holder), one run per schedule slot, dead
runs marked `abandoned`, isolated steps (one step breaching its statement_timeout fails alone),
retries on a new connection after pg_terminate_backend, catch-up of missed hours, days never
built from incomplete hours, and retention that never deletes a raw row not yet rolled up.

Every assertion reads real rows (aggjobs.job_runs, the rollup tables, the raw tables) and
compares rollups with tests.reference's independent recomputation from the raw rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain, get_rollup
from aggjobs.engine.verify import verify_grain
from aggjobs.errors import UnknownJob
from aggjobs.jobs import registry
from aggjobs.jobs.model import Job, Step, StepResult
from aggjobs.jobs.runner import RunRequest, RunResult, run_job
from aggjobs.settings import Settings
from aggjobs.sql import query
from tests import platform as p
from tests.reference import COLUMNS, FURTHER, assert_matches, close, expected, stored

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, in the past
H = timedelta(hours=1)
D = timedelta(days=1)
APP = "aggjobs:hourly_rollup"  # application_name of the hourly job's sessions
HOURLY_TABLE = "analytics.execution_metrics_hourly"
SOURCES = {"agent_runs": "started_at", "user_events": "occurred_at",
           "credit_transactions": "created_at"}
ROLLUP_OF = {"agent_runs": "execution_metrics", "user_events": "user_activity",
             "credit_transactions": "credit_consumption"}


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Quick retries; lock waits long enough that only what a test arranges times out."""
    return settings.model_copy(update={
        "retry_attempts": 3, "retry_base_s": 0.05, "lock_wait_s": 10.0,
        "lock_timeout_ms": 30_000, "retention_days": {}})


def job(settings: Settings, name: str, as_of: datetime | None = None, **kw) -> RunResult:
    return run_job(RunRequest(job=name, as_of=as_of, **kw), settings)


def load(conn: psycopg.Connection, start: datetime, hours: int, per_hour: int = 3) -> None:
    """`per_hour` rows per source in each hour from `start`: every status and ledger kind,
    three workspaces, a few users."""
    for h in range(hours):
        for i in range(per_hour):
            n = h * per_hour + i
            at = start + h * H + timedelta(minutes=5 + 17 * i)
            ws = 1 + (h + i) % 3
            p.run(conn, ws=ws, at=at, status=("completed", "failed", "running", "cancelled")[n % 4],
                  runtime=1.0 + (n * 7) % 11, credits=f"{0.25 * (1 + i)}", user=1 + i)
            p.event(conn, ws=ws, user=1 + n % 5, at=at)
            p.credit(conn, ws=ws, kind=("usage", "refund", "grant", "adjustment")[n % 4],
                     amount=f"{1 + i * 0.5}", at=at)


def assert_hours_match(conn: psycopg.Connection, below: datetime) -> None:
    for r in BUILTIN_ROLLUPS:
        assert_matches(conn, r.name, Grain.HOUR, below)


def assert_hours_match_from(conn: psycopg.Connection, rollup: str, lo: datetime,
                            below: datetime) -> None:
    """Like assert_matches, for the hourly buckets in [lo, below) only (the raw rows before
    `lo` were deleted by retention)."""
    want = {k: v for k, v in expected(conn, rollup, Grain.HOUR, below).items() if k[1] >= lo}
    have = {k: v for k, v in stored(conn, rollup, Grain.HOUR, below).items() if k[1] >= lo}
    assert have.keys() == want.keys(), rollup
    for key, exp in want.items():
        for name, a, b in zip(COLUMNS[rollup], have[key], exp, strict=True):
            assert close(a, b, 1e-9), f"{rollup} {key} {name}: {a} != {b}"


def runs(conn: psycopg.Connection, job_name: str | None = None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM aggjobs.job_runs WHERE %(j)s::text IS NULL OR job = %(j)s ORDER BY id",
            {"j": job_name}).fetchall()


def steps_of(row_or_result) -> dict[str, dict]:
    if isinstance(row_or_result, RunResult):
        return {s.name: vars(s) for s in row_or_result.steps}
    return {s["name"]: s for s in row_or_result["steps"]}


def table_rows(conn: psycopg.Connection, table: str) -> list[tuple]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def rollup_contents(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Every rollup table's named columns (not updated_at)."""
    out = {}
    for r in BUILTIN_ROLLUPS:
        for g in r.grains:
            cols = ", ".join(["workspace_id", g.column, *FURTHER.get(r.name, []),
                              *COLUMNS[r.name]])
            out[r.table(g)] = conn.execute(
                f"SELECT {cols} FROM analytics.{r.table(g)} ORDER BY 1, 2, 3").fetchall()
    return out


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def blocked_backend(conn: psycopg.Connection, app: str = APP) -> int | None:
    """The pid of a session of the job waiting on a (table) lock, if any."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s AND wait_event_type = 'Lock'", (app,)).fetchone()
    return row and row[0]


def wait_gone(conn: psycopg.Connection, pid: int) -> None:
    wait_for(lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                      (pid,)).fetchone(), f"backend {pid} to exit")


@pytest.fixture
def table_lock(db_url: str) -> Iterator[Callable[[str], psycopg.Connection]]:
    """lock(mode) holds `mode` on the hourly execution table in an open transaction until
    the returned connection commits; closed (released) at the end of the test anyway."""
    held: list[psycopg.Connection] = []

    def lock(mode: str) -> psycopg.Connection:
        c = psycopg.connect(db_url, application_name="aggjobs:tests-lock")
        c.execute(f"LOCK TABLE {HOURLY_TABLE} IN {mode} MODE")
        held.append(c)
        return c

    yield lock
    for c in held:
        c.close()


@pytest.fixture
def background() -> Iterator[Callable[..., Future]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool.submit


# -- no overlap, slots, abandoned runs ------------------------------------------------------------
def test_overlapping_run_is_skipped_naming_the_holder(conn, fast, table_lock, background):
    # Steps in turn: the first run then holds still on its first step, so any write seen
    # afterwards could only be the second run's.
    fast = fast.model_copy(update={"step_concurrency": 1})
    load(conn, T0, 4)
    gate = table_lock("EXCLUSIVE")  # blocks the first run's writes, not reads
    first = background(job, fast, "hourly_rollup", T0 + 4 * H)
    wait_for(lambda: blocked_backend(conn), "the first run to block on the table lock")
    holder = runs(conn)[0]
    assert holder["status"] == "running"

    second = job(fast, "hourly_rollup", T0 + 4 * H)

    assert second.status == "skipped" and second.steps == []
    assert f"run {holder['id']} on {holder['host']} pid {holder['pid']}" in second.error
    row = runs(conn)[-1]
    assert (row["id"], row["status"], row["steps"], row["error"]) == (
        second.id, "skipped", [], second.error)
    assert row["finished_at"] is not None
    # Nothing written by the skipped run: no watermark moved, no rollup row committed.
    assert all(wm is None for wm in p.watermarks(conn).values())
    assert all(rows == [] for rows in rollup_contents(conn).values())

    gate.commit()
    result = first.result(timeout=30)
    assert result.status == "succeeded", result
    assert [r["status"] for r in runs(conn)] == ["succeeded", "skipped"]
    assert_hours_match(conn, T0 + 4 * H)


def test_advisory_lock_held_elsewhere_skips(conn, fast, db_url):
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('aggjobs.job'), hashtext('hourly_rollup'))")
        result = job(fast, "hourly_rollup", T0)
        assert result.status == "skipped"
        assert "already running" in result.error
    assert [(r["status"], r["steps"]) for r in runs(conn)] == [("skipped", [])]
    # The lock gone with its session, the job runs again.
    assert job(fast, "hourly_rollup", T0).status == "succeeded"


def test_second_run_of_a_schedule_slot_is_skipped(conn, fast):
    load(conn, T0, 3)
    slot = T0 + 3 * H + timedelta(minutes=5)
    first = job(fast, "hourly_rollup", slot, trigger="schedule", slot=slot)
    assert first.status == "succeeded"
    wm = p.watermarks(conn)
    p.run(conn, ws=1, at=T0 + timedelta(minutes=1))  # a late row the duplicate must not see

    second = job(fast, "hourly_rollup", slot, trigger="schedule", slot=slot)

    assert second.status == "skipped"
    assert f"already ran as run {first.id}" in second.error
    assert [(r["status"], r["slot"]) for r in runs(conn)] == [("succeeded", slot),
                                                              ("skipped", slot)]
    assert p.watermarks(conn) == wm
    assert conn.execute("SELECT total_executions FROM analytics.execution_metrics_hourly"
                        " WHERE workspace_id = 1 AND hour = %s", (T0,)).fetchone()[0] == 1
    # The next slot runs, and picks the late row up.
    nxt = job(fast, "hourly_rollup", slot + H, trigger="schedule", slot=slot + H)
    assert nxt.status == "succeeded"
    assert_hours_match(conn, T0 + 4 * H)


RUN_IN_CHILD = """
import sys
from datetime import datetime
from aggjobs.jobs.runner import RunRequest, run_job
from aggjobs.settings import Settings
run_job(RunRequest(job="hourly_rollup", as_of=datetime.fromisoformat(sys.argv[1])), Settings())
"""


def test_run_of_a_killed_process_is_marked_abandoned(conn, fast, db_url, table_lock):
    load(conn, T0, 4)
    gate = table_lock("EXCLUSIVE")
    env = dict(os.environ, AGGJOBS_DATABASE_URL=db_url, AGGJOBS_LOCK_TIMEOUT_MS="60000")
    child = subprocess.Popen([sys.executable, "-c", RUN_IN_CHILD, (T0 + 4 * H).isoformat()],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = wait_for(lambda: blocked_backend(conn) or child.poll() is not None,
                       "the child's run to block")
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    dead = runs(conn)[0]
    assert dead["pid"] == child.pid

    # Its step's session still lives (blocked): the next run does not overlap it. The run's
    # own session ended with the process, so the run is marked abandoned at once.
    blocked = job(fast, "hourly_rollup", T0 + 4 * H)
    assert blocked.status == "skipped" and "still finishing" in blocked.error
    assert runs(conn)[0]["status"] == "abandoned"

    gate.commit()  # the orphaned backend goes on, finds its client gone and ends
    wait_gone(conn, pid)
    result = job(fast, "hourly_rollup", T0 + 4 * H)

    assert result.status == "succeeded", result
    old = runs(conn)[0]
    assert old["id"] == dead["id"] and old["status"] == "abandoned"
    assert old["finished_at"] is not None and "died" in old["error"]
    assert_hours_match(conn, T0 + 4 * H)
    assert p.watermarks(conn)[("execution_metrics", "hour")] == T0 + 4 * H


# -- isolation, timeouts, retries ---------------------------------------------------------------
def test_step_breaching_statement_timeout_fails_alone(conn, fast, table_lock):
    load(conn, T0, 3)
    # EXCLUSIVE: the execution step's DELETE waits (and times out); reads, including the
    # views' refresh, go on.
    gate = table_lock("EXCLUSIVE")
    limited = fast.model_copy(update={
        "job_statement_timeout_ms": {"hourly_rollup": 300}, "retry_attempts": 2,
        "lock_timeout_ms": 60_000})
    started = time.monotonic()

    result = job(limited, "hourly_rollup", T0 + 3 * H)

    assert time.monotonic() - started < 10
    assert result.status == "failed"
    steps = steps_of(result)
    failed = steps["execution_metrics.hour"]
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert "statement timeout" in failed["error"] and "gave up after 2 attempts" in failed["error"]
    for name in ("user_activity.hour", "credit_consumption.hour", "view.caches",
                 "view.workspace_overview", "view.platform_daily_overview"):
        assert steps[name]["status"] == "succeeded", steps[name]
    # The history row says the same.
    row = runs(conn)[0]
    assert row["status"] == "failed" and row["error"].startswith("execution_metrics.hour: ")
    assert {n: s["status"] for n, s in steps_of(row).items()} == {
        n: s["status"] for n, s in steps.items()}
    # The failed step left nothing half-done; the others did their work.
    marks = p.watermarks(conn)
    assert marks[("execution_metrics", "hour")] is None
    assert marks[("user_activity", "hour")] == marks[("credit_consumption", "hour")] == T0 + 3 * H
    assert table_rows(conn, HOURLY_TABLE) == []
    assert_matches(conn, "user_activity", Grain.HOUR, T0 + 3 * H)
    assert_matches(conn, "credit_consumption", Grain.HOUR, T0 + 3 * H)

    gate.commit()
    assert job(limited, "hourly_rollup", T0 + 3 * H).status == "succeeded"
    assert_hours_match(conn, T0 + 3 * H)


def test_terminated_backend_step_retries_on_new_connection(conn, fast, table_lock, background):
    load(conn, T0, 4)
    gate = table_lock("EXCLUSIVE")
    future = background(job, fast, "hourly_rollup", T0 + 4 * H)
    pid = wait_for(lambda: blocked_backend(conn), "the run to block")
    assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    wait_gone(conn, pid)
    gate.commit()

    result = future.result(timeout=30)

    assert result.status == "succeeded", result
    step = steps_of(result)["execution_metrics.hour"]
    assert step["status"] == "succeeded" and step["attempts"] == 2
    row = runs(conn)[0]
    assert row["status"] == "succeeded" and row["error"] is None
    assert row["backend_pid"] != pid
    assert_hours_match(conn, T0 + 4 * H)


def test_reconnected_run_is_not_marked_abandoned_meanwhile(conn, fast, table_lock, background):
    load(conn, T0, 2)
    gate = table_lock("EXCLUSIVE")
    future = background(job, fast, "hourly_rollup", T0 + 2 * H)
    pid = wait_for(lambda: blocked_backend(conn), "the run to block")
    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_gone(conn, pid)
    # The retry is on a new connection, blocked again on the table.
    wait_for(lambda: blocked_backend(conn), "the retry to block")
    try:
        other = job(fast, "hourly_rollup", T0 + 2 * H)
        assert other.status == "skipped"
        assert runs(conn)[0]["status"] == "running"
    finally:
        gate.commit()
        future.result(timeout=30)


# -- catch-up and grains ----------------------------------------------------------------------
def test_one_run_catches_up_every_missed_hour(conn, fast):
    load(conn, T0, 2)
    first = job(fast, "hourly_rollup", T0 + 2 * H)
    assert first.status == "succeeded"
    assert p.watermarks(conn)[("execution_metrics", "hour")] == T0 + 2 * H
    load(conn, T0 + 2 * H, 5)  # five more hours while the scheduler was down

    result = job(fast, "hourly_rollup", T0 + 7 * H + timedelta(minutes=5))

    assert result.status == "succeeded"
    for r in BUILTIN_ROLLUPS:
        assert p.watermarks(conn)[(r.name, "hour")] == T0 + 7 * H
        detail = steps_of(result)[f"{r.name}.hour"]["detail"]["hour"]
        assert detail["new_buckets"] == 5 and detail["held_back"] is None
    hours = conn.execute("SELECT count(DISTINCT hour) FROM analytics.execution_metrics_hourly"
                         ).fetchone()[0]
    assert hours == 7
    assert_hours_match(conn, T0 + 7 * H)


def test_daily_rollup_never_builds_a_day_from_incomplete_hours(conn, fast):
    load(conn, T0 - 2 * H, 30, per_hour=2)  # 22:00 the day before to 04:00 the day after
    capped = fast.model_copy(update={"max_buckets_per_refresh": 10})
    as_of = T0 + D + 6 * H

    first = job(capped, "daily_rollup", as_of)

    assert first.status == "succeeded", first
    marks = p.watermarks(conn)
    assert marks[("execution_metrics", "hour")] == T0 + 8 * H  # 10 hours from T0 - 2h
    for r in BUILTIN_ROLLUPS:
        detail = steps_of(first)[f"{r.name}.day"]["detail"]
        assert "waiting for hours" in detail["day"]["held_back"], detail
    # The day before T0 has all its hours materialized (its data: 22:00 and 23:00), so it is
    # built; T0's hours are materialized only up to 08:00, so T0 must not be.
    for r in BUILTIN_ROLLUPS:
        days = [d for (d,) in conn.execute(
            f"SELECT DISTINCT day FROM analytics.{r.table(Grain.DAY)}").fetchall()]
        assert days == [(T0 - D).date()], (r.name, days)
    assert_matches(conn, "execution_metrics", Grain.DAY, T0)

    for _ in range(5):  # each run adds 10 hours; days follow only when all their hours are in
        result = job(capped, "daily_rollup", as_of)
        assert result.status == "succeeded"
        marks = p.watermarks(conn)
        for r in BUILTIN_ROLLUPS:
            hour_wm, day_wm = marks[(r.name, "hour")], marks[(r.name, "day")]
            assert day_wm <= Grain.DAY.floor(hour_wm)
            latest = conn.execute(f"SELECT max(day) FROM analytics.{r.table(Grain.DAY)}"
                                  ).fetchone()[0]
            assert latest is None or datetime(latest.year, latest.month, latest.day,
                                              tzinfo=UTC) + D <= hour_wm
    assert p.watermarks(conn)[("execution_metrics", "hour")] == T0 + D + 6 * H
    for r in BUILTIN_ROLLUPS:
        assert p.watermarks(conn)[(r.name, "day")] == T0 + D
        assert_matches(conn, r.name, Grain.DAY, T0 + D)
        assert_matches(conn, r.name, Grain.HOUR, T0 + D + 6 * H)


# -- retention ------------------------------------------------------------------------------------
KEEP_ROLLUPS = {"hourly": 0, "daily": 0, "weekly": 0, "job_runs": 0}


def raw_ids(conn: psycopg.Connection) -> dict[str, dict[int, datetime]]:
    return {t: dict(conn.execute(f"SELECT id, {c} FROM public.{t}").fetchall())
            for t, c in SOURCES.items()}


def change_log(conn: psycopg.Connection) -> tuple[list, list]:
    return (conn.execute("SELECT source, workspace_id, bucket FROM aggjobs.invalidation_log"
                         " ORDER BY 1, 2, 3").fetchall(),
            conn.execute("SELECT rollup, grain, bucket, workspace_id FROM aggjobs.pending_groups"
                         " ORDER BY 1, 2, 3, 4").fetchall())


def retention_audit(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT target, outcome FROM aggjobs.audit_log"
                             " WHERE action = 'retention_delete' ORDER BY id").fetchall())


def test_cleanup_never_deletes_raw_rows_not_rolled_up(conn, fast):
    load(conn, T0, 72, per_hour=1)  # three days
    held = T0 + 30 * H
    assert job(fast, "hourly_rollup", held).status == "succeeded"  # rollups stop at `held`
    before_raw, before_rollups = raw_ids(conn), rollup_contents(conn)
    before_log = change_log(conn)
    assert before_log == ([], [])
    cleaning = fast.model_copy(update={
        "retention_days": {"raw": 1, **KEEP_ROLLUPS}, "cleanup_batch_rows": 7})

    result = job(cleaning, "cleanup_old_data", T0 + 30 * D)

    assert result.status == "succeeded", result
    after_raw = raw_ids(conn)
    audit = retention_audit(conn)
    for table, rows in before_raw.items():
        kept = {i for i, t in rows.items() if t >= held}
        gone = {i for i, t in rows.items() if t < held}
        assert kept and gone
        assert set(after_raw[table]) == kept, table  # nothing at/after the watermark went
        step = steps_of(result)[f"cleanup.{table}"]
        assert step["rows"] == len(gone)
        assert step["detail"]["held_back"].startswith(f"{ROLLUP_OF[table]} hour: materialized")
        assert audit[f'"public"."{table}"'] == f"{len(gone)} rows deleted"
        assert p.watermarks(conn)[(ROLLUP_OF[table], "hour")] == held
    # Retention's deletes were not change-tracked, and no rollup row changed.
    assert change_log(conn) == before_log
    assert rollup_contents(conn) == before_rollups
    horizons = dict(((r, g), h) for r, g, h in conn.execute(
        "SELECT rollup, grain, horizon FROM aggjobs.watermarks WHERE grain = 'hour'"))
    assert set(horizons.values()) == {held}

    # The rest is rolled up later as usual: the hours from the horizon on match the raw rows.
    assert job(fast, "hourly_rollup", T0 + 72 * H).status == "succeeded"
    after_rollups = rollup_contents(conn)
    for r in BUILTIN_ROLLUPS:
        assert_hours_match_from(conn, r.name, held, T0 + 72 * H)
        table = r.table(Grain.HOUR)
        assert [k for k in after_rollups[table] if k[1] < held] == \
            [k for k in before_rollups[table] if k[1] < held]  # kept as they were


def test_cleanup_stops_at_a_pending_change(conn, fast):
    load(conn, T0, 48, per_hour=1)
    assert job(fast, "hourly_rollup", T0 + 48 * H).status == "succeeded"
    late = T0 + 10 * H + timedelta(minutes=40)
    p.run(conn, ws=2, at=late)  # a late run, not rolled up yet
    cleaning = fast.model_copy(update={"retention_days": {"raw": 1, **KEEP_ROLLUPS}})
    before = raw_ids(conn)["agent_runs"]

    result = job(cleaning, "cleanup_old_data", T0 + 30 * D)

    assert result.status == "succeeded", result
    after = raw_ids(conn)["agent_runs"]
    assert set(after) == {i for i, t in before.items() if t >= T0 + 10 * H}
    assert "changes pending" in steps_of(result)["cleanup.agent_runs"]["detail"]["held_back"]
    # The other sources had nothing pending: cut at their watermark.
    assert conn.execute("SELECT count(*) FROM user_events").fetchone()[0] == 0
    # The late row's hour is still recomputed in full by the next run.
    assert job(fast, "hourly_rollup", T0 + 48 * H).status == "succeeded"
    assert conn.execute("SELECT total_executions FROM analytics.execution_metrics_hourly"
                        " WHERE workspace_id = 2 AND hour = %s", (T0 + 10 * H,)
                        ).fetchone()[0] == expected(conn, "execution_metrics", Grain.HOUR,
                                                    T0 + 48 * H)[(2, T0 + 10 * H)][0]


def test_late_row_behind_the_retention_horizon_is_dropped(conn, fast):
    load(conn, T0, 24, per_hour=2)
    assert job(fast, "hourly_rollup", T0 + 24 * H).status == "succeeded"
    cleaning = fast.model_copy(update={"retention_days": {"raw": 1, **KEEP_ROLLUPS}})
    assert job(cleaning, "cleanup_old_data", T0 + 12 * H + D).status == "succeeded"
    horizon = T0 + 12 * H
    assert conn.execute("SELECT min(started_at) >= %s FROM agent_runs", (horizon,)
                        ).fetchone()[0]
    before = rollup_contents(conn)
    bucket = T0 + 3 * H
    stored = conn.execute("SELECT total_executions FROM analytics.execution_metrics_hourly"
                          " WHERE workspace_id = 1 AND hour = %s", (bucket,)).fetchone()
    p.run(conn, ws=1, at=bucket + timedelta(minutes=50))  # late, behind the horizon
    p.run(conn, ws=1, at=T0 + 20 * H + timedelta(minutes=50))  # late, after it

    result = job(fast, "hourly_rollup", T0 + 24 * H)

    assert result.status == "succeeded"
    detail = steps_of(result)["execution_metrics.hour"]["detail"]["hour"]
    assert detail["dropped_behind_horizon"] == 1 and detail["dirty_groups"] == 1
    after = rollup_contents(conn)
    old = [r for r in after[HOURLY_TABLE.split(".")[1]] if r[1] < horizon]
    assert old == [r for r in before[HOURLY_TABLE.split(".")[1]] if r[1] < horizon]
    assert conn.execute("SELECT total_executions FROM analytics.execution_metrics_hourly"
                        " WHERE workspace_id = 1 AND hour = %s", (bucket,)).fetchone() == stored
    assert conn.execute("SELECT count(*) FROM aggjobs.pending_groups").fetchone()[0] == 0

    report = verify_grain(conn, get_rollup("execution_metrics"), Grain.HOUR, T0, T0 + 24 * H)
    assert report.retained_from == horizon and report.checked_from == horizon
    assert report.mismatches == []
    assert report.groups == len([k for k in expected(conn, "execution_metrics", Grain.HOUR,
                                                     T0 + 24 * H) if k[1] >= horizon])


def test_job_history_retention_prunes_finished_runs_never_running(conn, fast):
    now = datetime.now(UTC)
    me = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # a live session: not abandoned
    rows = [("succeeded", 100), ("failed", 95), ("skipped", 91), ("abandoned", 120),
            ("running", 200), ("succeeded", 89), ("failed", 1)]
    ids = {}
    for status, age in rows:
        started = now - timedelta(days=age)
        ids[(status, age)] = conn.execute(
            "INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, started_at,"
            " finished_at, host, pid, backend_pid) VALUES ('hourly_rollup', 'manual', 't',"
            " %s, %s, %s, %s, 'h', 1, %s) RETURNING id",
            (started, status, started, None if status == "running" else started + H,
             me if status == "running" else None)).fetchone()[0]
    cleaning = fast.model_copy(update={"retention_days": {
        "raw": 0, "hourly": 0, "daily": 0, "weekly": 0, "job_runs": 90}})

    result = job(cleaning, "cleanup_old_data", now)

    assert result.status == "succeeded", result
    left = {r["id"]: r["status"] for r in runs(conn)}
    assert set(left) == {ids[("running", 200)], ids[("succeeded", 89)], ids[("failed", 1)],
                         result.id}
    assert left[ids[("running", 200)]] == "running"
    assert steps_of(result)["cleanup.job_runs"]["rows"] == 4
    assert retention_audit(conn)['"aggjobs"."job_runs"'] == "4 rows deleted"


# -- unknown job ------------------------------------------------------------------------------
def test_unknown_job_raises_and_writes_nothing(conn, fast):
    with pytest.raises(UnknownJob, match="unknown job 'hourly'"):
        job(fast, "hourly", T0)
    assert runs(conn) == []
    assert conn.execute("SELECT count(*) FROM aggjobs.audit_log").fetchone()[0] == 0


# -- audit ------------------------------------------------------------------------------------
def test_manual_runs_are_audited_scheduled_ones_are_not(conn, fast):
    load(conn, T0, 2)
    manual = job(fast, "refresh_materialized_views", T0 + 2 * H, who="alice@ops")
    scheduled = job(fast, "refresh_materialized_views", T0 + 2 * H, trigger="schedule",
                    slot=T0 + 2 * H)
    assert (manual.status, scheduled.status) == ("succeeded", "succeeded")
    rows = conn.execute("SELECT actor, action, target, params->>'run', outcome"
                        " FROM aggjobs.audit_log WHERE action = 'run'").fetchall()
    assert rows == [("alice@ops", "run", "refresh_materialized_views", str(manual.id),
                     "succeeded")]


def test_heavy_jobs_wait_for_a_slot_then_are_skipped_for_a_retry(conn, fast, db_url):
    """AGGJOBS_HEAVY_JOBS_CONCURRENCY=1: while another heavy job holds the slot, a daily run
    waits lock_wait_s, then is skipped saying why and asking to be sent again."""
    load(conn, T0, 2)
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute(query("take_heavy_slot"), {"slot": 1})  # another heavy job's
        waited = job(fast.model_copy(update={"lock_wait_s": 0.5}), "daily_rollup", T0 + D)
        light = job(fast, "hourly_rollup", T0 + 2 * H)  # light jobs do not need a slot
    assert waited.status == "skipped" and waited.retry_later
    assert "heavy job(s) already running" in waited.error
    assert light.status == "succeeded"
    after = job(fast, "daily_rollup", T0 + D)  # the slot is free again
    assert after.status == "succeeded" and not after.retry_later
    assert [r["status"] for r in runs(conn, "daily_rollup")] == ["skipped", "succeeded"]


# -- steps side by side ----------------------------------------------------------------------------
def register_test_job(monkeypatch, steps) -> None:
    """`test_job`, made of `steps`, in the job registry for this test only."""
    monkeypatch.setitem(registry.JOBS, "test_job",
                        Job("test_job", "0 0 * * *", False, 600, "test", lambda s: steps))


def sleeping_step(name: str, seconds: float, **options):
    """A concurrent step that only sleeps: its time is known in advance."""
    def run(ctx):
        time.sleep(seconds)
        return StepResult()
    return Step(name, run, concurrent=True, **options)


def ended(step) -> datetime:
    return step.started_at + timedelta(seconds=step.seconds)


def test_the_rollups_of_a_run_go_side_by_side_on_sessions_of_their_own(conn, fast, table_lock,
                                                                      background):
    """One rollup held up does not hold up the others; the views wait for all of them."""
    load(conn, T0, 3)
    gate = table_lock("EXCLUSIVE")  # holds execution_metrics' writes only
    first = background(job, fast, "hourly_rollup", T0 + 3 * H)
    # The other rollups finish while execution_metrics waits on the lock (the last of them
    # in the session the first to finish hands on: AGGJOBS_STEP_CONCURRENCY is 3).
    others = {r.name for r in BUILTIN_ROLLUPS} - {"execution_metrics"}
    wait_for(lambda: {r for (r, g), wm in p.watermarks(conn).items()
                      if g == "hour" and wm is not None} == others,
             "the other rollups to be materialized while execution_metrics waits")
    sessions = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'aggjobs:hourly_rollup%'"
    ).fetchone()[0]
    assert sessions >= 2  # the run's own session and the blocked step's
    gate.commit()
    result = first.result(timeout=30)
    assert result.status == "succeeded", result
    by_name = {s.name: s for s in result.steps}
    em, ua = by_name["execution_metrics.hour"], by_name["user_activity.hour"]
    assert em.started_at < ended(ua)  # they overlapped
    views = [s for s in result.steps if s.name.startswith("view.")]
    assert all(v.started_at >= ended(em) for v in views)
    assert_hours_match(conn, T0 + 3 * H)


def test_steps_side_by_side_start_longest_first_by_the_last_runs_times(fast, monkeypatch):
    """Three steps, two sessions: the first run starts them in the job's order, so the
    long one waits for a session; the next run starts them longest first, so the shortest
    waits. The history lists them in the job's order either way. (The short ones' times
    differ by 0.2 s, past any jitter: equal ones would start in either order.)"""
    register_test_job(monkeypatch, [sleeping_step("a", 0.2), sleeping_step("b", 0.4),
                                    sleeping_step("long", 1.5)])
    settings = fast.model_copy(update={"step_concurrency": 2})

    slack = timedelta(seconds=0.1)
    first = run_job(RunRequest(job="test_job"), settings)
    a, b, long = first.steps
    assert [s.name for s in first.steps] == ["a", "b", "long"]
    assert long.started_at >= min(ended(a), ended(b)) - slack  # it waited for a session
    second = run_job(RunRequest(job="test_job"), settings)
    a, b, long = second.steps
    assert [s.name for s in second.steps] == ["a", "b", "long"]
    assert long.started_at < a.started_at  # it started first, then b; a waited for b's
    assert a.started_at >= ended(b) - slack  # session


def test_a_step_waits_for_the_steps_it_reads_and_they_start_first(fast, monkeypatch):
    """Two sessions; `reads` waits for `written` (after=). First run, in the job's order:
    `written` starts when `mid` ends (0.4 s), and `reads` not when `long` ends (0.5 s) but
    after `written` (0.7 s). Next run, the longest path first: `written` + `reads` (0.6 s)
    and `long` start at once; `mid` (0.4 s) once `written` ends, before `reads` (0.3 s)."""
    register_test_job(monkeypatch, [
        sleeping_step("long", 0.5), sleeping_step("mid", 0.4), sleeping_step("written", 0.3),
        sleeping_step("reads", 0.3, after=("written", "not in the job"))])
    settings = fast.model_copy(update={"step_concurrency": 2})

    slack = timedelta(seconds=0.05)
    first = run_job(RunRequest(job="test_job"), settings)
    long, mid, written, reads = first.steps
    assert first.status == "succeeded"
    assert written.started_at >= ended(mid) - slack
    assert reads.started_at >= ended(written) - slack > ended(long)  # a session was free
    second = run_job(RunRequest(job="test_job"), settings)
    long, mid, written, reads = second.steps
    assert [s.name for s in second.steps] == ["long", "mid", "written", "reads"]
    assert written.started_at < mid.started_at and long.started_at < mid.started_at
    assert mid.started_at >= ended(written) - slack
    assert reads.started_at >= ended(long) - slack  # after mid, on the next free session


def test_steps_that_wait_for_each_other_fail_the_run_clearly(fast, monkeypatch):
    register_test_job(monkeypatch, [sleeping_step("a", 0, after=("b",)),
                                    sleeping_step("b", 0, after=("a",))])
    with pytest.raises(RuntimeError, match=r"steps \['a', 'b'\] wait in a circle"):
        run_job(RunRequest(job="test_job"), fast.model_copy(update={"step_concurrency": 2}))


class Interrupt(Exception):
    """Stands for Celery's soft time limit: an exception that ends the whole run."""


def test_an_interrupted_run_stops_the_steps_beside_the_one_interrupted(conn, fast, db_url,
                                                                       monkeypatch):
    def sleeper(ctx):
        ctx.conn.execute("SELECT pg_sleep(60)")
        return StepResult()

    def interrupted(ctx):
        time.sleep(0.5)
        raise Interrupt("soft time limit")

    register_test_job(monkeypatch, [Step("sleeps", sleeper, concurrent=True),
                                    Step("stops", interrupted, concurrent=True)])
    started = time.monotonic()
    with pytest.raises(Interrupt):
        run_job(RunRequest(job="test_job"), fast,
                should_stop=lambda exc: isinstance(exc, Interrupt))
    assert time.monotonic() - started < 10  # the 60 s sleep was cancelled, not waited for
    assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE"
                        " 'SELECT pg_sleep(60)' AND state = 'active'").fetchone()[0] == 0
    row = runs(conn)[0]
    assert row["status"] == "failed" and "Interrupt" in row["error"]

