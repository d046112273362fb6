"""Daily reports: one platform-wide and one per active workspace, built from the rollups.

`build(conn, day)` makes them, `store(conn, day)` replaces the day's rows of
analytics.daily_reports, `store_last_day(conn, as_of)` is what the daily job does (its step is
wired in aggjobs.jobs.steps), `render(report, fmt)` gives
json, md, csv or a self-contained html. See docs/reports.md.
"""

from __future__ import annotations

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
    lagging_rollups,
    load_stored,
    store,
    workspace_known,
)
from .render import FORMATS, render

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "DayReports",
    "NoReportData",
    "ReportError",
    "UnknownWorkspace",
    "build",
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


def store_last_day(conn: psycopg.Connection, as_of: datetime) -> DayReports:
    """Build and store the reports of the last complete UTC day before `as_of`, once its day
    grains are materialized (else nothing done, saying which lag)."""
    day = as_utc(as_of).date() - timedelta(days=1)
    behind = lagging_rollups(conn, day)
    if behind:
        marks = ", ".join(f"{name} at {wm.isoformat() if wm else 'none'}"
                          for name, wm in behind.items())
        return DayReports(day, waiting=f"{day} is not complete in the daily rollups yet "
                                       f"(day watermarks: {marks})")
    return DayReports(day, rows=store(conn, day))
