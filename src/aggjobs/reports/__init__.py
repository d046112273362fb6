"""Daily reports: one platform-wide and one per active workspace, built from the rollups.

`build(conn, day)` makes them, `store(conn, day)` replaces the day's rows of
analytics.daily_reports, `step()` is the daily job's step, `render(report, fmt)` gives
json, md, csv or a self-contained html. See docs/reports.md.
"""

from __future__ import annotations

from datetime import timedelta

from ..catalog.grains import as_utc
from ..jobs.model import Step, StepContext
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

__all__ = ["FORMATS", "SCHEMA_VERSION", "NoReportData", "ReportError", "UnknownWorkspace",
           "build", "lagging_rollups", "load_stored", "render", "step", "store",
           "workspace_known"]


def step() -> Step:
    """The daily job's step: build and store the reports of the last complete UTC day before
    `as_of`, once its day grains are materialized (else skipped, saying which lag)."""

    def run(ctx: StepContext) -> dict:
        day = as_utc(ctx.as_of).date() - timedelta(days=1)
        behind = lagging_rollups(ctx.conn, day)
        if behind:
            marks = ", ".join(f"{name} at {wm.isoformat() if wm else 'none'}"
                              for name, wm in behind.items())
            return {"status": "skipped", "day": day.isoformat(),
                    "reason": f"{day} is not complete in the daily rollups yet "
                              f"(day watermarks: {marks})"}
        return {"rows": store(ctx.conn, day), "day": day.isoformat()}

    return Step("daily_reports", run)
