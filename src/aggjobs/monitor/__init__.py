"""What the on-call engineer asks first: what ran, what failed, how stale is each table, and
is anything wrong. Shared by `aggjobs status`/`runs` and the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..catalog import rollups as declared_rollups
from ..catalog.grains import SUPPORTED_FROM, SUPPORTED_UNTIL, as_utc
from ..catalog.jobs import JOB_SPECS as JOBS
from ..db import definitions
from ..engine.status import rebuilds, rollup_status, unsupported_rows
from ..settings import Settings
from ..sql import query
from . import liveness, locks


def next_run(job: str, settings: Settings, now: datetime) -> datetime | None:
    return JOBS[job].next_run(settings, now)


def job_states(conn: psycopg.Connection, settings: Settings, now: datetime) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("job_summary"), {"jobs": list(JOBS)}).fetchall()
    states = []
    for row in rows:
        started, finished = row["last_started"], row["last_finished"]
        states.append({
            **row,
            "schedule": JOBS[row["job"]].schedule(settings),
            "next_run": JOBS[row["job"]].next_run(settings, now),
            "last_seconds": (finished - started).total_seconds() if started and finished
            else (now - started).total_seconds() if started else None,
        })
    return states


@dataclass(frozen=True)
class Problem:
    key: str  # the incident: the same problem seen again is the same key
    what: str
    why: str
    todo: str

    def __str__(self) -> str:
        return f"{self.what}: {self.why}. {self.todo}"


def problems(jobs: list[dict], rollups: list[dict], settings: Settings,
             now: datetime, unsupported: list[dict] | None = None) -> list[Problem]:
    """Everything that makes the installation unhealthy, each with what to do about it."""
    found = [unsupported_problem(row) for row in unsupported or []]
    for job in jobs:
        name, fails = job["job"], job["consecutive_failures"]
        if fails >= settings.alert_failures:
            found.append(Problem(
                f"failing:{name}", name,
                f"{fails} runs failed in a row; last error: {job['last_error']}",
                f"see `aggjobs runs --job {name}`; fix, then `aggjobs run {name}`"))
        limit = JOBS[name].time_limit(settings)
        if job["last_status"] == "running" and job["last_seconds"] > limit:
            found.append(Problem(
                f"over_budget:{job['last_id']}", name,
                f"run {job['last_id']} has been running {job['last_seconds']:.0f} s, over its "
                f"{limit} s budget",
                f"look for it in pg_stat_activity (application_name aggjobs:{name}); the "
                "worker's hard time limit ends it"))
    for row in rollups:
        table, target = row["table"], settings.freshness_target(row["grain"])
        if row["lag_seconds"] is not None and row["lag_seconds"] > target:
            found.append(Problem(
                f"stale:{table}", table,
                f"{row['lag_seconds'] / 3600:.1f} h behind (target {target / 3600:g} h); "
                f"watermark {row['watermark']}",
                "check the jobs above; `aggjobs run hourly_rollup` (or daily/weekly) catches up"))
        if row["tracking_threshold_broken"]:
            found.append(Problem(
                f"threshold:{row['rollup']}", table,
                f"the tracking threshold of its source is {row['tracking_threshold_broken']}, "
                "outside its bounds, so late changes are not tracked as they should be",
                "run `aggjobs migrate`: it repairs the threshold"))
        if row["quarantined_buckets"]:
            found.append(Problem(
                f"quarantine:{table}", table,
                f"{row['quarantined_buckets']} bucket(s) quarantined after repeated failures",
                "see aggjobs.quarantine; fix the cause, then `aggjobs backfill` those buckets"))
    return found


LIVENESS_KEYS = ("no_worker", "no_scheduler")
START = {"worker": "start one: `aggjobs worker` (or `aggjobs up`); until then the jobs wait "
                   "in the broker's queue",
         "scheduler": "start one: `aggjobs beat`, or a worker with `--beat` (one per "
                      "deployment); until then no job runs on schedule"}


def liveness_problems(live: dict, settings: Settings) -> list[Problem]:
    """No worker, or no scheduler, alive for longer than AGGJOBS_LIVENESS_SECONDS; at once
    when none was ever seen (0: not checked)."""
    limit = settings.liveness_seconds
    if not limit:
        return []
    found = []
    for kind, plural in liveness.KINDS:
        rows = live[plural]
        if any(r["up"] for r in rows):
            continue
        if not rows:
            why = f"no {kind} has ever sent a heartbeat to this database"
        else:
            last = min(rows, key=lambda r: r["down_seconds"])
            if last["down_seconds"] <= limit:
                continue
            how = (f"stopped at {as_utc(last['stopped_at']):%Y-%m-%d %H:%M:%S}Z"
                   if last["stopped_at"] else f"last heartbeat at "
                   f"{as_utc(last['seen_at']):%Y-%m-%d %H:%M:%S}Z, then silent")
            why = (f"none alive for {last['down_seconds']:.0f} s (over "
                   f"AGGJOBS_LIVENESS_SECONDS={limit:g}); the last, {last['name']} (pid "
                   f"{last['pid']}), {how}")
        found.append(Problem(f"no_{kind}", f"no {kind}", why, START[kind]))
    return found


def lock_problems(conn: psycopg.Connection) -> list[Problem]:
    """A session aggjobs does not run as holding one of its advisory locks (monitor.locks)."""
    return [Problem(f"foreign_lock:{h.pid}:{h.kind}:{h.name or ''}", f"advisory lock ({h.lock})",
                    f"held by a session aggjobs does not run as: {h.who}; while it is held, "
                    f"{locks.effect(h)}", h.todo)
            for h in locks.foreign_holders(conn)]


def definition_problems(conn: psycopg.Connection) -> list[Problem]:
    """Declarations that differ from what the tables were built with: the jobs refuse to
    work on those rollups until `aggjobs migrate` has run (docs/rollups.md)."""
    declared = declared_rollups()
    found = [Problem(f"definition:{name}", f"rollup {name}",
                     f"its declaration differs from what its tables were built with: {what}",
                     "run `aggjobs migrate` (`aggjobs migrate --plan` shows what it will do "
                     "first); until then its jobs' steps fail")
             for name, what in definitions.drift(conn, declared)]
    return found + [Problem(f"undeclared:{name}", f"rollup {name}",
                            "its tables are live but it is no longer declared (is "
                            "AGGJOBS_ROLLUPS set as the worker's?), so nothing refreshes them",
                            "declare it again, or run `aggjobs migrate` to retire its tables")
                    for name in definitions.undeclared(conn, declared)]


def rebuild_problems(rows: list[dict]) -> list[Problem]:
    """A rebuilt version that failed its check against the raw rows is not swapped in."""
    return [Problem(f"rebuild_check:{r['rollup']}:v{r['version']}",
                    f"rollup {r['rollup']} v{r['version']}",
                    f"its rebuild failed the check before the swap ({r['check_error']}); "
                    f"v{r['live_version']} stays live and correct",
                    "this is a bug of aggjobs: report it with `aggjobs migrate --plan`; "
                    "declaring the live definition again cancels the rebuild")
            for r in rows if r["check_error"]]


def unsupported_problem(row: dict) -> Problem:
    """Raw rows outside the supported times: in no bucket, so the rollups silently lack
    them; data the operator must look at."""
    return Problem(
        f"unsupported_rows:{row['source']}", row["table"],
        f"{row['rows']:,} row(s) with {row['time_column']} outside the supported times "
        f"[{SUPPORTED_FROM:%Y-%m-%d}, {SUPPORTED_UNTIL:%Y-%m-%d}) UTC are in no rollup "
        f"bucket (docs/rollups.md, \"Supported times\")",
        f"fix their {row['time_column']} or delete them; find them with: {row['query']}")


@dataclass(frozen=True)
class Status:
    """The installation's state: what `aggjobs status` shows (`--json`: `as_dict()`), what
    `GET /api/jobs` and the dashboard serve, and what `aggjobs.status()` returns."""

    healthy: bool
    checked_at: datetime
    problems: list[str]
    incidents: list[str]
    jobs: list[dict[str, Any]]
    rollups: list[dict[str, Any]]
    unsupported_rows: list[dict[str, Any]]
    rebuilds: list[dict[str, Any]]
    liveness: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The object `aggjobs status --json` prints (before JSON encoding)."""
        return dict(self.__dict__)


def overview(conn: psycopg.Connection, settings: Settings, now: datetime | None = None
             ) -> Status:
    now = as_utc(now or datetime.now(UTC))
    jobs = job_states(conn, settings, now)
    rollups = rollup_status(conn, now=now)
    unsupported = unsupported_rows(conn)
    rebuilding = rebuilds(conn)
    live = liveness.state(conn, settings)
    found = (liveness_problems(live, settings) + definition_problems(conn)
             + rebuild_problems(rebuilding) + problems(jobs, rollups, settings, now, unsupported)
             + lock_problems(conn))
    return Status(healthy=not found, checked_at=now, problems=[str(p) for p in found],
                  incidents=[p.key for p in found], jobs=jobs, rollups=rollups,
                  unsupported_rows=unsupported, rebuilds=rebuilding, liveness=live)


def current_problems(conn: psycopg.Connection, settings: Settings,
                     now: datetime | None = None) -> list[Problem]:
    now = as_utc(now or datetime.now(UTC))
    return current_liveness_problems(conn, settings) + definition_problems(conn) + \
        rebuild_problems(rebuilds(conn)) + problems(
        job_states(conn, settings, now), rollup_status(conn, now=now), settings, now,
        unsupported_rows(conn)) + lock_problems(conn)


def current_liveness_problems(conn: psycopg.Connection, settings: Settings) -> list[Problem]:
    """The liveness problems alone: what a worker's or scheduler's heartbeat checks."""
    return liveness_problems(liveness.state(conn, settings), settings)


def run_history(conn: psycopg.Connection, *, job: str | None = None,
                since: datetime | None = None, limit: int = 50) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("run_history"),
                           {"job": job, "since": since, "limit": limit}).fetchall()


def run_detail(conn: psycopg.Connection, run_id: int) -> dict | None:
    """One run (its page, `GET /api/runs/{id}`): the history's columns, its database session
    and the audit rows naming it (who asked for it; a retry of it). None if there is none."""
    with conn.cursor(row_factory=dict_row) as cur:
        run = cur.execute(query("run_by_id"), {"id": run_id}).fetchone()
        if run is None:
            return None
        run["audit"] = cur.execute(query("run_audit"), {
            "id": run_id, "since": run["started_at"]}).fetchall()
    return run
