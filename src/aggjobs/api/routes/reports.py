"""Daily reports: the latest one's address, a stored one as HTML."""

from datetime import date

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse

from .. import dashboard as dashboard_page
from ..auth import ReadConn, Viewer
from ..statuses import answers

router = APIRouter(tags=["reports"])


@router.get("/api/reports/latest", responses=answers(404))
def latest_report(_: Viewer, conn: ReadConn) -> dict:
    """The latest day with a stored platform daily report, and where to read it."""
    day = dashboard_page.latest_report_day(conn)
    if day is None:
        raise HTTPException(404, "no daily report stored yet (the daily job makes them)")
    return {"day": day.isoformat(), "url": f"/reports/{day.isoformat()}"}


@router.get("/reports/{day}", response_class=HTMLResponse, responses=answers(404))
def report_page(_: Viewer, conn: ReadConn, day: date) -> HTMLResponse:
    """The stored platform daily report of `day` (analytics.daily_reports) as the
    self-contained HTML page of `aggjobs report --format html`; 404 if none."""
    from ... import reports

    stored = reports.load_stored(conn, day, None)
    if stored is None:
        raise HTTPException(404, f"no daily report stored for {day}")
    if stored.get("schema_version") != reports.SCHEMA_VERSION:
        stored = reports.build(conn, day)[None]  # an older layout: rebuilt, not stored
    return HTMLResponse(reports.render(stored, "html"))
