"""The dashboard at `/` (page built by api/dashboard.py)."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from .. import dashboard as dashboard_page
from ..auth import AppSettings, ReadConn, Viewer

router = APIRouter(tags=["dashboard"])


@router.get("/", response_class=HTMLResponse)
def dashboard(_: Viewer, conn: ReadConn, settings: AppSettings) -> HTMLResponse:
    """The dashboard (docs/api.md): jobs at a glance, run charts, freshness against
    targets, recent failures, running backfills, problems, the latest daily report.
    Open it with `?token=` in the address; it refreshes itself every 15 s."""
    return HTMLResponse(dashboard_page.render(dashboard_page.gather(conn, settings)),
                        headers={"Cache-Control": "no-store"})
