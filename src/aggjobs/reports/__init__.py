"""Daily reports: one platform-wide and one per active workspace, built from the rollups.

`build(conn, day)` makes them, `store(conn, day)` replaces the day's rows of
analytics.daily_reports, `store_last_day(conn, as_of)` is what the daily job does (its step is
wired in aggjobs.jobs.steps), `day_report(conn, day, workspace)` is what `aggjobs report`
shows, `render(report, fmt)` gives json, md, csv or a self-contained html. See
docs/reports.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg

from ..catalog.grains import as_utc
from .build import (
    SCHEMA_VERSION,
    NoReportData,
    ReportError,
    UnknownWorkspace,
    build,
    hour_rows,
    lagging_rollups,
    load_stored,
    store,
    workspace_known,
)
from .render import FORMATS, render

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "DayReport",
    "DayReports",
    "NoReportData",
    "ReportError",
    "UnknownWorkspace",
    "build",
    "day_report",
    "hour_rows",
    "lagging_rollups",
    "load_stored",
    "render",
    "store",
    "store_last_day",
    "workspace_known",
]


@dataclass(frozen=True)
class DayReports:
    """What storing the last complete day's reports did: the day, and either why it had to
    wait or how many reports were stored."""

    day: date
    waiting: str | None = None
    rows: int = 0


def store_last_day(conn: psycopg.Connection, as_of: datetime,
                   open_session: Callable[[], psycopg.Connection] | None = None) -> DayReports:
    """Build and store the reports of the last complete UTC day before `as_of`, once its day
    grains are materialized (else nothing done, saying which lag). `open_session`: a second
    session for the longest query, read beside the others (build.HourlyRead)."""
    day = as_utc(as_of).date() - timedelta(days=1)
    behind = lagging_rollups(conn, day)
    if behind:
        marks = ", ".join(f"{name} at {wm.isoformat() if wm else 'none'}"
                          for name, wm in behind.items())
        return DayReports(day, waiting=f"{day} is not complete in the daily rollups yet "
                                       f"(day watermarks: {marks})")
    return DayReports(day, rows=store(conn, day, open_session))


@dataclass(frozen=True)
class DayReport:
    """A report to show, and where it comes from (a line for the reader)."""

    report: dict
    origin: str


def day_report(conn: psycopg.Connection, day: date, workspace: int | None) -> DayReport:
    """The report of `day`, the platform's or `workspace`'s: the stored one if the daily job
    made it (in the current layout), else built from the rollups now, not stored.
    NoReportData when it has no data, or the day is not rolled up yet."""
    stored = load_stored(conn, day, workspace)
    if stored is not None and stored.get("schema_version") == SCHEMA_VERSION:
        chosen = DayReport(stored, f"stored report from analytics.daily_reports (generated "
                                   f"{stored['generated_at'][:19]} UTC)")
    else:
        chosen = DayReport(built_now(conn, day, workspace), (
            "no stored report: built from the rollups now (not stored)" if stored is None
            else "stored report has an older schema: rebuilt now from the rollups (not stored)"))
    if not chosen.report["has_data"]:
        raise NoReportData(f"no data for {day}: no runs, user events or credit "
                           "transactions in the rollups that day")
    return chosen


def built_now(conn: psycopg.Connection, day: date, workspace: int | None) -> dict:
    """The report of `day` built from the rollups, once its day grains are materialized."""
    if workspace is not None and not workspace_known(conn, workspace):
        raise UnknownWorkspace(f"unknown workspace {workspace}: it appears in no rollup")
    behind = lagging_rollups(conn, day)
    if behind:
        names = ", ".join(behind)
        raise NoReportData(f"{day} is not rolled up yet ({names} day grain): run "
                           "`aggjobs refresh` or wait for the daily job")
    built = build(conn, day)
    if workspace is not None and workspace not in built:
        if not built[None]["has_data"]:
            raise NoReportData(f"no data for {day}: no runs, user events or credit "
                               "transactions in the rollups that day")
        raise NoReportData(f"workspace {workspace} had no runs or user events on {day}")
    return built[workspace]
