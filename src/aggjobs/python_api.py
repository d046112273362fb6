"""aggjobs from Python (docs/python.md): the calls the `aggjobs` command makes, as typed
functions returning the result objects the command renders. They are re-exported at the
package root, lazily (`aggjobs.refresh(...)`), so that `import aggjobs` stays cheap.

Each takes `database`: an open psycopg connection (used as is, left open), a PostgreSQL URL,
or None (AGGJOBS_DATABASE_URL, else the embedded server); and `settings` (default: this
process's AGGJOBS_* environment, checked as the command line checks it). Bad input raises
an aggjobs.errors.AggjobsError subclass with the command line's one-line reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import audit
from .catalog import Grain, Rollup, select_rollups
from .catalog.grains import past, past_range
from .catalog.jobs import check_job_settings, checked_settings, get_job_spec
from .db import definitions
from .db.connect import connect, translate_errors
from .db.migrate import current_version, migrations
from .engine.backfill import BackfillReport
from .engine.refresh import RefreshReport
from .engine.refresh import refresh as refresh_rollup
from .engine.verify import Mismatch
from .errors import InvalidRange, MigrationRequired
from .jobs.run import RunResult
from .monitor import Status
from .reports import DayReport
from .settings import Settings

__all__ = ["BackfillReport", "Database", "DayReport", "Mismatch", "RefreshReport", "Report",
           "RunResult", "Status", "backfill", "refresh", "report", "run_job", "status",
           "verify"]

Database = psycopg.Connection[Any] | str | None
Instant = datetime | str | None  # a datetime (naive: UTC) or ISO 8601 text; None: now
Report = DayReport  # a daily report and where it came from (stored, or built now)


def refresh(rollups: Sequence[str] | None = None, grain: Grain | str | None = None,
            as_of: Instant = None, *, max_buckets: int | None = None,
            database: Database = None, settings: Settings | None = None
            ) -> list[RefreshReport]:
    """`aggjobs refresh [ROLLUP...] [--grain G] [--as-of TS]`: one report per rollup."""
    config = resolved(settings)
    chosen = select_rollups(list(rollups) if rollups else None)
    wanted = Grain(grain) if grain is not None else None
    if wanted is not None:
        chosen = with_grain(chosen, wanted, named=bool(rollups))
    ref = instant(as_of, "as_of")
    with session(database, "refresh", config, current=chosen) as conn:
        return [refresh_rollup(conn, rollup, as_of=ref, settings=config,
                               grains=[wanted] if wanted else None, max_buckets=max_buckets)
                for rollup in chosen]


def with_grain(chosen: list[Rollup], grain: Grain, *, named: bool) -> list[Rollup]:
    """The rollups that have `grain`; naming one that has not is an error."""
    lacking = [r for r in chosen if grain not in r.grains]
    if named and lacking:
        raise InvalidRange(f"rollup {lacking[0].name} has no {grain.value} grain")
    return [r for r in chosen if grain in r.grains]


def verify(rollups: Sequence[str] | None = None, *, start: Instant, end: Instant,
           repair: bool = False, force: bool = False, database: Database = None,
           settings: Settings | None = None) -> list[Mismatch]:
    """`aggjobs verify [ROLLUP...] --from START --to END [--repair] [--force]`: the
    mismatched groups of every grain (after the repair, with `repair`: those left)."""
    from .operations import Requester
    from .operations.repair import verify_and_repair
    from .safety import check_backfill_span

    config = resolved(settings)
    chosen = select_rollups(list(rollups) if rollups else None)
    lo, hi = time_range(start, end)
    if not force:
        check_backfill_span(lo, hi, config, override="force=True")
    who = Requester(actor(), actor()) if repair else None
    found: list[Mismatch] = []
    with session(database, "verify", config, current=chosen) as conn:
        for rollup in chosen:  # the live tables, under the definition they were built with
            live = definitions.versions(conn, rollup).live
            for g in live.grains:
                report, again = verify_and_repair(conn, live, g, lo, hi, repair_as=who)
                found += (again or report).mismatches
    return found


def backfill(rollups: Sequence[str] | None = None, *, start: Instant, end: Instant,
             force: bool = False, database: Database = None,
             settings: Settings | None = None) -> list[BackfillReport]:
    """`aggjobs backfill [ROLLUP...] --from START --to END [--force]`, audited as
    `python:<user>@<host>`: one report per rollup."""
    from .operations import Requester, audited_backfill

    config = resolved(settings)
    chosen = select_rollups(list(rollups) if rollups else None)
    lo, hi = time_range(start, end)
    who = Requester(actor(), actor())
    with session(database, "backfill", config, current=chosen) as conn:
        return audited_backfill(conn, chosen, lo, hi, settings=with_database(config, conn),
                                who=who, force=force, override="force=True")


def status(*, database: Database = None, settings: Settings | None = None) -> Status:
    """`aggjobs status --json`: jobs, liveness, rollups, problems; `healthy`."""
    from .monitor import overview

    config = resolved(settings)
    with session(database, "status", config) as conn:
        return overview(conn, config)


def run_job(name: str, as_of: Instant = None, *, database: Database = None,
            settings: Settings | None = None) -> RunResult:
    """`aggjobs run JOB [--as-of TS]`: one run now, with the scheduled runs' guarantees,
    recorded in aggjobs.job_runs and audited as `python:<user>@<host>`."""
    from .operations.runs import manual_run

    get_job_spec(name)
    config = resolved(settings)
    ref = instant(as_of, "as_of")
    with session(database, name, config) as conn:  # the runner opens its own sessions
        config = with_database(config, conn)
    with translate_errors():
        return manual_run(name, config, as_of=ref, actor=actor(), source=actor())


def report(day: date | str, workspace: int | None = None, *, database: Database = None,
           settings: Settings | None = None) -> Report:
    """`aggjobs report --day DAY [--workspace ID] --format json`: the report (`.report`)
    and where it came from (`.origin`)."""
    from . import reports

    wanted = day if isinstance(day, date) else report_day(day)
    with session(database, "report", resolved(settings)) as conn:
        return reports.day_report(conn, wanted, workspace)


def report_day(text: str) -> date:
    from .errors import InvalidTimestamp

    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidTimestamp(f"day {text!r} is not a date: use YYYY-MM-DD") from None


# -- helpers --------------------------------------------------------------------------------


def resolved(settings: Settings | None) -> Settings:
    return check_job_settings(settings) if settings is not None else checked_settings()


def actor() -> str:
    """`python:<user>@<host>`: who the audit log says did it."""
    return audit.local_source("python")


def instant(value: Instant, name: str) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return past(value if isinstance(value, str) else value.isoformat(), name)


def time_range(start: Instant, end: Instant) -> tuple[datetime, datetime]:
    now = datetime.now(UTC).isoformat()

    def text(value: Instant) -> str:
        return now if value is None else value if isinstance(value, str) else value.isoformat()

    return past_range(text(start), text(end), "start", "end")


def with_database(settings: Settings, conn: psycopg.Connection[Any]) -> Settings:
    """`settings` pointing at the database of `conn`, for work that opens sessions of its
    own (a job's runner, a backfill's helpers): where it is and who, not its session's
    options (a job's sessions have their own limits)."""
    params = {k: v for k, v in conninfo_to_dict(conn.info.dsn).items()
              if k not in ("options", "application_name")}
    if conn.info.password:
        params["password"] = conn.info.password
    return settings.model_copy(update={"database_url": make_conninfo("", **params)})


@contextlib.contextmanager
def session(database: Database, purpose: str, settings: Settings, *,
            current: list[Rollup] | None = None) -> Iterator[psycopg.Connection[Any]]:
    """`database` as a connection whose schema is current (else MigrationRequired) and whose
    `current` rollups were built with their declared definitions."""
    with translate_errors(), opened(database, purpose, settings) as conn:
        if current_version(conn) != migrations()[-1].version:
            raise MigrationRequired()
        if current:
            definitions.ensure_current(conn, current)
        yield conn


@contextlib.contextmanager
def opened(database: Database, purpose: str, settings: Settings
           ) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(database, psycopg.Connection):
        yield database  # the caller's: left open
        return
    with connect(purpose, url=database, settings=settings) as conn:
        yield conn
