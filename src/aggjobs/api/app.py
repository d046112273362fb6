"""The FastAPI application behind `aggjobs serve` (docs/api.md).

Every route but `/healthz` needs a token (`Authorization: Bearer <secret>`, or `?token=` for
links such as the dashboard's): reading needs `viewer`, triggering runs and backfills
`operator`, tokens and retention `admin`. A missing or invalid token is 401, a too-weak one
403, a token over its rate limit on a triggering route 429 (ratelimit.py); each denial is
written to aggjobs.audit_log (actor: the token's name, or "anonymous"; 401s aggregated per
client and minute, denials.py), with the client address in `source` (X-Forwarded-For only
from AGGJOBS_TRUSTED_PROXIES). Errors (errors.py): no 500 for input or a lost database
session (503), bounded 422s, bodies over 64 KiB 413; secrets redacted from logs
(redact.py). Routes are plain functions, so FastAPI runs them (and the jobs they start) in
its threadpool; each request has its own database session named `aggjobs:api`.

Reads can go to a replica (AGGJOBS_READ_DATABASE_URL): the reading routes (dashboard, jobs,
runs, rollups, backfills, reports, retention, /metrics) take their data from a second
session, `aggjobs:api-read`, which never writes. Everything that writes or must see the
latest state stays on the primary: the token check (a revoked token is refused at once; its
last use is recorded), the audit rows of denials, runs, backfills, token administration.
Without a replica the reading routes share the request's one primary session.

No `from __future__ import annotations` here: FastAPI must see the route signatures'
Annotated aliases (defined inside create_api) as objects, not strings.
"""


import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Annotated, Literal

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ..catalog import select_rollups
from ..catalog.grains import parse_timestamp
from ..db.connect import connect, first_line, read_database_url
from ..engine.status import rollup_status
from ..errors import AggjobsError, InvalidRange
from ..jobs.registry import JOBS, get_job
from ..monitor import overview, run_history
from ..settings import RETENTION_DAYS, Settings, get_settings
from ..sql import query
from . import dashboard as dashboard_page
from . import errors, metrics, tokens
from .denials import Denial, DenialLog
from .ratelimit import TriggerLimiter
from .redact import RedactTokens, redact, redact_access_log

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="An aggjobs API token (`aggjobs token "
                    "create`).")
query_token = APIKeyQuery(name="token", auto_error=False,
                          description="The same token as a query parameter, for links.")


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    as_of: str | None = Field(default=None, max_length=64, examples=["2026-01-01T05:00Z"],
                              description="Reference time, ISO 8601 (default now).")


class BackfillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    rollups: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=16, examples=[["user_activity"]],
        description="Rollups to backfill (default: all).")
    from_: str = Field(alias="from", max_length=64, examples=["2026-01-01"],
                       description="Range start, ISO 8601.")
    to: str = Field(max_length=64, examples=["2026-01-02T06:00Z"],
                    description="Range end (exclusive), ISO 8601.")


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100, examples=["grafana"],
                      description="Unique name: who or what uses it (1-100 letters, digits "
                      "or _ . @ : -).")
    role: Literal["viewer", "operator", "admin"]
    expires_days: float | None = Field(default=None, gt=0, le=36500, allow_inf_nan=False,
                                       description="Expire after this many days (default: "
                                       "never).")


# A job's name in a path; the examples (in the OpenAPI schema) are what `/docs` and schema
# based test generators try first.
JobName = Annotated[str, Path(max_length=64, examples=["hourly_rollup",
                                                        "refresh_materialized_views"])]
CLEANUP_JOB = "cleanup_old_data"  # retention: admin only, whichever route starts it


def client_address(request: Request) -> str:
    """The peer's address (after ProxyHeadersMiddleware when proxies are trusted)."""
    return request.client.host if request.client else "unknown"


def past(text: str, what: str) -> datetime:
    ts = parse_timestamp(text)
    if ts > datetime.now(UTC):
        raise InvalidRange(f"{what} {ts.isoformat()} is in the future")
    return ts


def create_api(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    def open_conn() -> psycopg.Connection:
        return connect("api", settings=settings)

    denial_log = DenialLog()
    api = FastAPI(
        title="aggjobs",
        summary="Incremental analytics rollups over PostgreSQL: jobs, runs, freshness.",
        version="0.1.0",
        max_body_size=errors.MAX_BODY_BYTES,
        lifespan=denial_log.lifespan(open_conn),  # writes the last aggregated denials
    )
    errors.install(api)
    api.state.denials = denial_log

    replica = read_database_url(settings) if settings.read_database_url else None

    def open_read() -> psycopg.Connection:
        """A session for reading only: on the replica when one is configured."""
        if replica is None:
            return open_conn()
        return connect("api-read", url=replica, settings=settings)

    registry = metrics.registry(open_read, settings)

    def db() -> Iterator[psycopg.Connection]:
        # Closed, never committed on the way out (autocommit: nothing is pending), so that
        # a session terminated after the route's last statement fails nothing.
        conn = open_conn()
        try:
            yield conn
        finally:
            conn.close()

    Conn = Annotated[psycopg.Connection, Depends(db)]

    def read_db(primary: Conn) -> Iterator[psycopg.Connection]:
        """The reading routes' session: the replica's, else the request's primary one.
        Routes list it after their token check, so that a refused request opens none."""
        if replica is None:
            yield primary
            return
        conn = open_read()
        try:
            yield conn
        finally:
            conn.close()

    ReadConn = Annotated[psycopg.Connection, Depends(read_db)]

    limiter = TriggerLimiter(settings.api_rate_limit)

    def require(role: str, *, limited: bool = False) -> Callable[..., tokens.Principal]:
        """The token's principal if its role is `role` or above; `limited`: a triggering
        route, counted against the token's rate limit."""

        def dependency(
            request: Request, conn: Conn,
            header: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
            in_query: Annotated[str | None, Depends(query_token)],
        ) -> tokens.Principal:
            denial_log.flush_due(conn)  # the aggregated denials of a closed minute
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
            if limited:
                wait = limiter.acquire(principal.name)
                if wait is not None:
                    deny(conn, request, principal.name, role,
                         f"rate limit {limiter.spec} (AGGJOBS_API_RATE_LIMIT)", 429)
                    raise HTTPException(
                        429, f"token {principal.name!r} is over the rate limit of triggering "
                        f"requests, {limiter.spec} (AGGJOBS_API_RATE_LIMIT): retry in {wait} s",
                        headers={"Retry-After": str(wait)})
            return principal

        return dependency

    def deny(conn: psycopg.Connection, request: Request, actor: str, needed: str,
             reason: str | None, status: int) -> None:
        """Audited: at once, or, a 401 after the first of its client and minute, counted
        and written with the others when the minute closes (denials.py)."""
        denial_log.record(conn, Denial(
            actor=actor, target=errors.cut(redact(request.url.path), 200), method=request.method,
            needs=needed, reason=reason, client=client_address(request), status=status))

    Viewer = Annotated[tokens.Principal, Depends(require("viewer"))]
    Operator = Annotated[tokens.Principal, Depends(require("operator", limited=True))]
    Admin = Annotated[tokens.Principal, Depends(require("admin"))]
    AdminTrigger = Annotated[tokens.Principal, Depends(require("admin", limited=True))]

    if settings.trusted_proxies:  # else X-Forwarded-For is ignored (see also `serve`)
        api.add_middleware(ProxyHeadersMiddleware,
                           trusted_hosts=settings.trusted_proxies.split(","))

    @api.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """Liveness: 200 when the database answers (and the read replica, when one is
        configured), 503 otherwise, saying which failed. No token needed."""
        targets = [("database", open_conn)] + ([("read replica", open_read)] if replica
                                                else [])
        for what, opener in targets:
            try:
                with opener() as conn:
                    conn.execute("SELECT 1")
            except (AggjobsError, psycopg.Error) as exc:
                error = first_line(exc) if what == "database" else f"{what}: {first_line(exc)}"
                return JSONResponse({"ok": False, "error": error}, status_code=503,
                                    headers={"Retry-After": str(errors.RETRY_AFTER_S)})
        return JSONResponse({"ok": True})

    @api.get("/metrics", tags=["health"], response_class=Response)
    def prometheus(_: Viewer) -> Response:
        """Prometheus text format, collected from the database at scrape time (viewer)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/api/jobs", tags=["jobs"])
    def jobs(_: Viewer, conn: ReadConn) -> dict:
        """Per job its latest run, next scheduled time and failures in a row; whether the
        installation is healthy and, if not, what to do."""
        state = overview(conn, settings)
        return {k: state[k] for k in ("healthy", "checked_at", "problems", "jobs")}

    @api.get("/api/jobs/{job}/runs", tags=["jobs"])
    def runs(_: Viewer, conn: ReadConn, job: JobName,
             since: Annotated[str | None, Query(max_length=64)] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
        """The job's run history, newest first, with each step's outcome and error."""
        get_job(job)
        start = parse_timestamp(since) if since else None
        return run_history(conn, job=job, since=start, limit=limit)

    @api.get("/api/rollups", tags=["rollups"])
    def rollups(_: Viewer, conn: ReadConn) -> list[dict]:
        """Per rollup and grain: watermark, lag, pending dirty groups, quarantined buckets."""
        return rollup_status(conn, now=datetime.now(UTC))

    def run_now(request: Request, who: tokens.Principal, job: str,
                body: RunBody | None) -> dict:
        from ..jobs.runner import RunRequest, run_job

        ref = past(body.as_of, "as_of") if body and body.as_of else None
        result = run_job(RunRequest(job=job, as_of=ref, trigger="manual",
                                    who=f"api:{who.name}", source=client_address(request)),
                         settings)
        return {"id": result.id, "job": result.job, "status": result.status,
                "error": result.error, "steps": [asdict(s) for s in result.steps]}

    @api.post("/api/jobs/{job}/run", tags=["jobs"])
    def run(request: Request, conn: Conn, who: Operator,
            job: JobName, body: RunBody | None = None) -> dict:
        """Run the job now and wait for its end (operator; `cleanup_old_data` needs admin).
        Same guarantees as scheduled runs: no overlap (a busy job answers `skipped`),
        history, retries; audited."""
        get_job(job)
        if job == CLEANUP_JOB and not who.allows("admin"):
            deny(conn, request, who.name, "admin", f"role {who.role}", 403)
            raise HTTPException(403, f"{CLEANUP_JOB} deletes data: it needs a token with role "
                                f"admin; {who.name!r} is {who.role}")
        return run_now(request, who, job, body)

    @api.post("/api/backfills", tags=["rollups"])
    def backfills(request: Request, who: Operator, body: BackfillBody) -> dict:
        """Recompute a range of materialized buckets of the rollups, all grains (operator).
        Chunked and resumable like `aggjobs backfill`; waits for its end; audited (a row
        when it starts, one when it ends). A range longer than AGGJOBS_MAX_BACKFILL_DAYS is
        refused (422, audited); so is one that another session is backfilling (409)."""
        from ..operations import Requester, audited_backfill

        chosen = select_rollups(body.rollups)
        lo, hi = past(body.from_, "from"), past(body.to, "to")
        if lo >= hi:
            raise InvalidRange(f"from {lo.isoformat()} must be before to {hi.isoformat()}")
        with connect("backfill", settings=settings) as work:
            reports = audited_backfill(
                work, chosen, lo, hi, settings=settings,
                who=Requester(f"api:{who.name}", client_address(request)))
        return {"rollups": [asdict(r) for r in reports]}

    # -- admin: tokens and retention --------------------------------------------------------
    @api.get("/api/tokens", tags=["admin"])
    def token_list(conn: Conn, _: Admin) -> list[dict]:
        """Every token, newest first: name, role, creator, expiry, revocation, last use and
        whether it is active (admin). Never a secret nor its hash."""
        return tokens.list_tokens(conn)

    @api.post("/api/tokens", tags=["admin"], status_code=201)
    def token_create(request: Request, conn: Conn, who: AdminTrigger, body: TokenBody) -> dict:
        """Create a token (admin). The answer holds its `secret`, the only time it is shown:
        only its SHA-256 is stored. A name in use is 409. Audited (`token.create`)."""
        secret, row = tokens.create(conn, body.name, body.role, actor=f"api:{who.name}",
                                    expires_days=body.expires_days,
                                    source=client_address(request))
        return {**{k: row[k] for k in ("name", "role", "created_at", "created_by",
                                        "expires_at")}, "secret": secret}

    @api.delete("/api/tokens/{name}", tags=["admin"])
    def token_revoke(request: Request, conn: Conn, who: AdminTrigger,
                     name: Annotated[str, Path(max_length=100)]) -> dict:
        """Revoke a token (admin): requests bearing it are refused from now on. No active
        token of that name is 404. Audited (`token.revoke`)."""
        tokens.revoke(conn, name, actor=f"api:{who.name}", source=client_address(request))
        return {"name": name, "revoked": True}

    @api.get("/api/retention", tags=["admin"])
    def retention(_: Admin, conn: ReadConn) -> dict:
        """What retention keeps (admin): days per class in force (0: forever;
        AGGJOBS_RETENTION_DAYS), rows per delete batch, and per rollup and grain the
        horizon before which buckets can no longer be recomputed (their inputs are gone)."""
        with conn.cursor(row_factory=dict_row) as cur:
            horizons = cur.execute(query("retention_horizons")).fetchall()
        return {"days": {kind: settings.retention(kind) for kind in RETENTION_DAYS},
                "batch_rows": settings.cleanup_batch_rows, "horizons": horizons}

    @api.post("/api/cleanup", tags=["admin"])
    def cleanup(request: Request, who: AdminTrigger, body: RunBody | None = None) -> dict:
        """Run the retention job `cleanup_old_data` now and wait for its end (admin), as
        `POST /api/jobs/cleanup_old_data/run`: deletes what is past AGGJOBS_RETENTION_DAYS,
        in batches, never what a rollup still needs; audited (`run`, `retention_delete`)."""
        return run_now(request, who, CLEANUP_JOB, body)

    @api.get("/api/backfills", tags=["rollups"])
    def backfill_list(_: Viewer, conn: ReadConn,
                      status: Annotated[str | None, Query(
                          pattern="^(running|succeeded|failed)$")] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        """Backfills (aggjobs.backfills), running first then newest, each with `progress`:
        the fraction of its range done (done_until between range_start and range_end)."""
        return dashboard_page.backfills(conn, status=status, limit=limit)

    @api.get("/api/reports/latest", tags=["reports"])
    def latest_report(_: Viewer, conn: ReadConn) -> dict:
        """The latest day with a stored platform daily report, and where to read it."""
        day = dashboard_page.latest_report_day(conn)
        if day is None:
            raise HTTPException(404, "no daily report stored yet (the daily job makes them)")
        return {"day": day.isoformat(), "url": f"/reports/{day.isoformat()}"}

    @api.get("/reports/{day}", response_class=HTMLResponse, tags=["reports"])
    def report_page(_: Viewer, conn: ReadConn, day: date) -> HTMLResponse:
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
    def dashboard(_: Viewer, conn: ReadConn) -> HTMLResponse:
        """The dashboard (docs/api.md): jobs at a glance, run charts, freshness against
        targets, recent failures, running backfills, problems, the latest daily report.
        Open it with `?token=` in the address; it refreshes itself every 15 s."""
        return HTMLResponse(dashboard_page.render(dashboard_page.gather(conn, settings)),
                            headers={"Cache-Control": "no-store"})

    return api


render_dashboard = dashboard_page.render

__all__ = ["JOBS", "RedactTokens", "create_api", "redact_access_log", "render_dashboard"]
