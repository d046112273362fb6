"""The FastAPI application behind `aggjobs serve` (docs/api.md).

Every route but `/healthz` needs a token (`Authorization: Bearer <secret>`, or `?token=` for
links such as the dashboard's): reading needs `viewer`, triggering runs and backfills
`operator`. A missing or invalid token is 401, a too-weak one 403; each denial is written to
aggjobs.audit_log (actor: the token's name, or "anonymous"). Routes are plain functions, so
FastAPI runs them (and the jobs they start) in its threadpool; each request has its own
database session named `aggjobs:api`.

No `from __future__ import annotations` here: FastAPI must see the route signatures'
Annotated aliases (defined inside create_api) as objects, not strings.
"""


import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Annotated

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from ..catalog import select_rollups
from ..catalog.grains import parse_timestamp
from ..db.connect import connect, first_line
from ..engine.status import rollup_status
from ..errors import (
    AggjobsError,
    DatabaseUnavailable,
    InvalidRange,
    MigrationRequired,
    UnknownJob,
)
from ..jobs.registry import JOBS, get_job
from ..monitor import overview, run_history
from ..settings import Settings, get_settings
from . import dashboard as dashboard_page
from . import metrics, tokens

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="An aggjobs API token (`aggjobs token "
                    "create`).")
query_token = APIKeyQuery(name="token", auto_error=False,
                          description="The same token as a query parameter, for links.")


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    as_of: str | None = Field(default=None, max_length=64,
                              description="Reference time, ISO 8601 (default now).")


class BackfillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    rollups: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=16, description="Rollups to backfill (default: all).")
    from_: str = Field(alias="from", max_length=64, description="Range start, ISO 8601.")
    to: str = Field(max_length=64, description="Range end (exclusive), ISO 8601.")


def past(text: str, what: str) -> datetime:
    ts = parse_timestamp(text)
    if ts > datetime.now(UTC):
        raise InvalidRange(f"{what} {ts.isoformat()} is in the future")
    return ts


def create_api(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    api = FastAPI(
        title="aggjobs",
        summary="Incremental analytics rollups over PostgreSQL: jobs, runs, freshness.",
        version="0.1.0",
    )

    def open_conn() -> psycopg.Connection:
        return connect("api", settings=settings)

    registry = metrics.registry(open_conn, settings)

    def db() -> Iterator[psycopg.Connection]:
        with open_conn() as conn:
            yield conn

    Conn = Annotated[psycopg.Connection, Depends(db)]

    def require(role: str) -> Callable[..., tokens.Principal]:
        def dependency(
            request: Request, conn: Conn,
            header: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
            in_query: Annotated[str | None, Depends(query_token)],
        ) -> tokens.Principal:
            secret = header.credentials if header else in_query
            verdict = tokens.check(conn, secret)
            principal = verdict.principal
            if principal is None:
                deny(conn, request, verdict.name or "anonymous", role, verdict.reason, 401)
                raise HTTPException(401, "missing, invalid, expired or revoked token",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not principal.allows(role):
                deny(conn, request, principal.name, role, f"role {principal.role}", 403)
                raise HTTPException(403, f"this needs a token with role {role} or above; "
                                    f"{principal.name!r} is {principal.role}")
            return principal

        return dependency

    def deny(conn: psycopg.Connection, request: Request, actor: str, needed: str,
             reason: str | None, status: int) -> None:
        tokens.audit(conn, actor=actor, action="denied", target=request.url.path, params={
            "method": request.method, "needs": needed, "reason": reason,
            "client": request.client.host if request.client else None,
        }, outcome=str(status))

    Viewer = Annotated[tokens.Principal, Depends(require("viewer"))]
    Operator = Annotated[tokens.Principal, Depends(require("operator"))]

    @api.exception_handler(AggjobsError)
    def aggjobs_error(request: Request, exc: AggjobsError) -> JSONResponse:
        status = 503 if isinstance(exc, DatabaseUnavailable | MigrationRequired) else \
            404 if isinstance(exc, UnknownJob) else 400
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=status)

    @api.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """Liveness: 200 when the database answers, 503 otherwise. No token needed."""
        try:
            with open_conn() as conn:
                conn.execute("SELECT 1")
        except (AggjobsError, psycopg.Error) as exc:
            return JSONResponse({"ok": False, "error": first_line(exc)}, status_code=503)
        return JSONResponse({"ok": True})

    @api.get("/metrics", tags=["health"], response_class=Response)
    def prometheus(_: Viewer) -> Response:
        """Prometheus text format, collected from the database at scrape time (viewer)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/api/jobs", tags=["jobs"])
    def jobs(conn: Conn, _: Viewer) -> dict:
        """Per job its latest run, next scheduled time and failures in a row; whether the
        installation is healthy and, if not, what to do."""
        state = overview(conn, settings)
        return {k: state[k] for k in ("healthy", "checked_at", "problems", "jobs")}

    @api.get("/api/jobs/{job}/runs", tags=["jobs"])
    def runs(conn: Conn, _: Viewer, job: Annotated[str, Path(max_length=64)],
             since: Annotated[str | None, Query(max_length=64)] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
        """The job's run history, newest first, with each step's outcome and error."""
        get_job(job)
        start = parse_timestamp(since) if since else None
        return run_history(conn, job=job, since=start, limit=limit)

    @api.get("/api/rollups", tags=["rollups"])
    def rollups(conn: Conn, _: Viewer) -> list[dict]:
        """Per rollup and grain: watermark, lag, pending dirty groups, quarantined buckets."""
        return rollup_status(conn, now=datetime.now(UTC))

    @api.post("/api/jobs/{job}/run", tags=["jobs"])
    def run(who: Operator, job: Annotated[str, Path(max_length=64)],
            body: RunBody | None = None) -> dict:
        """Run the job now and wait for its end (operator). Same guarantees as scheduled
        runs: no overlap (a busy job answers `skipped`), history, retries; audited."""
        from ..jobs.runner import RunRequest, run_job

        get_job(job)
        ref = past(body.as_of, "as_of") if body and body.as_of else None
        result = run_job(RunRequest(job=job, as_of=ref, trigger="manual",
                                    who=f"api:{who.name}"), settings)
        return {"id": result.id, "job": result.job, "status": result.status,
                "error": result.error, "steps": [asdict(s) for s in result.steps]}

    @api.post("/api/backfills", tags=["rollups"])
    def backfills(conn: Conn, who: Operator, body: BackfillBody) -> dict:
        """Recompute a range of materialized buckets of the rollups, all grains (operator).
        Chunked and resumable like `aggjobs backfill`; waits for its end; audited."""
        from ..engine.backfill import backfill as run_backfill

        chosen = select_rollups(body.rollups)
        lo, hi = past(body.from_, "from"), past(body.to, "to")
        if lo >= hi:
            raise InvalidRange(f"from {lo.isoformat()} must be before to {hi.isoformat()}")
        params = {"rollups": [r.name for r in chosen], "from": lo.isoformat(),
                  "to": hi.isoformat()}
        reports = []
        try:
            with connect("backfill", settings=settings) as work:
                for rollup in chosen:
                    reports.append(asdict(run_backfill(work, rollup, lo, hi,
                                                       settings=settings)))
        except Exception as exc:
            tokens.audit(conn, actor=f"api:{who.name}", action="backfill",
                         target=",".join(params["rollups"]), params=params,
                         outcome=f"failed: {type(exc).__name__}: {first_line(exc)}")
            raise
        tokens.audit(conn, actor=f"api:{who.name}", action="backfill",
                     target=",".join(params["rollups"]), params=params, outcome="succeeded")
        return {"rollups": reports}

    @api.get("/api/backfills", tags=["rollups"])
    def backfill_list(conn: Conn, _: Viewer,
                      status: Annotated[str | None, Query(
                          pattern="^(running|succeeded|failed)$")] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        """Backfills (aggjobs.backfills), running first then newest, each with `progress`:
        the fraction of its range done (done_until between range_start and range_end)."""
        return dashboard_page.backfills(conn, status=status, limit=limit)

    @api.get("/api/reports/latest", tags=["reports"])
    def latest_report(conn: Conn, _: Viewer) -> dict:
        """The latest day with a stored platform daily report, and where to read it."""
        day = dashboard_page.latest_report_day(conn)
        if day is None:
            raise HTTPException(404, "no daily report stored yet (the daily job makes them)")
        return {"day": day.isoformat(), "url": f"/reports/{day.isoformat()}"}

    @api.get("/reports/{day}", response_class=HTMLResponse, tags=["reports"])
    def report_page(conn: Conn, _: Viewer, day: date) -> HTMLResponse:
        """The stored platform daily report of `day` (analytics.daily_reports) as the
        self-contained HTML page of `aggjobs report --format html`; 404 if none."""
        from .. import reports

        stored = reports.load_stored(conn, day, None)
        if stored is None:
            raise HTTPException(404, f"no daily report stored for {day}")
        if stored.get("schema_version") != reports.SCHEMA_VERSION:
            stored = reports.build(conn, day)[None]  # an older layout: rebuilt, not stored
        return HTMLResponse(reports.render(stored, "html"))

    @api.get("/", response_class=HTMLResponse, tags=["dashboard"])
    def dashboard(conn: Conn, _: Viewer) -> HTMLResponse:
        """The dashboard (docs/api.md): jobs at a glance, run charts, freshness against
        targets, recent failures, running backfills, problems, the latest daily report.
        Open it with `?token=` in the address; it refreshes itself every 15 s."""
        return HTMLResponse(dashboard_page.render(dashboard_page.gather(conn, settings)),
                            headers={"Cache-Control": "no-store"})

    return api


TOKEN_IN_QUERY = re.compile(r"(?i)(token=)[^&\s]*")


class RedactTokens(logging.Filter):
    """Keeps `?token=<secret>` out of uvicorn's access log (and any record it is put on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(TOKEN_IN_QUERY.sub(r"\1<redacted>", a) if isinstance(a, str)
                                else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = TOKEN_IN_QUERY.sub(r"\1<redacted>", record.msg)
        return True


def redact_access_log() -> None:
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())


render_dashboard = dashboard_page.render

__all__ = ["JOBS", "create_api", "redact_access_log", "render_dashboard"]
