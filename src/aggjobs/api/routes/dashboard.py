"""The dashboard at `/` (page built by api/dashboard.py) and a run's page at `/runs/{id}`
(api/run_page.py)."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ...errors import UnknownRun
from ...monitor import run_detail
from .. import dashboard as dashboard_page
from ..auth import AppSettings, ReadConn, Viewer
from ..run_page import render_run
from ..statuses import answers
from .jobs import RunId

router = APIRouter(tags=["dashboard"])
NO_STORE = {"Cache-Control": "no-store"}


@router.get("/", response_class=HTMLResponse)
def dashboard(who: Viewer, conn: ReadConn, settings: AppSettings) -> HTMLResponse:
    """The dashboard (docs/api.md): jobs at a glance, run charts, freshness against
    targets, recent failures, backfills, problems, the latest daily report; every run links
    to its page. An operator's or an admin's token also gets the actions: run a job now,
    retry a failed run, start and cancel a backfill (each confirmed, then sent to the API).
    Open it with `?token=` in the address; it refreshes itself every 15 s."""
    state = dashboard_page.gather(conn, settings, role=who.role)
    return HTMLResponse(dashboard_page.render(state), headers=NO_STORE)


@router.get("/runs/{run_id}", response_class=HTMLResponse, responses=answers(404))
def run_page(who: Viewer, conn: ReadConn, run_id: RunId) -> HTMLResponse:
    """A run's page: job, status, trigger and who asked, as_of, timings, worker, each step
    (timeline, rows, attempts, detail, error), the audit rows naming it; a retry button
    for an operator's or an admin's token when it failed. `?token=` as for `/`."""
    found = run_detail(conn, run_id)
    if found is None:
        raise UnknownRun(f"no run {run_id}")
    return HTMLResponse(render_run(found, who.role), headers=NO_STORE)
