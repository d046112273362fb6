"""The FastAPI application behind `aggjobs serve` (docs/api.md).

`create_api(settings)` builds it: middleware, error handlers, `app.state` and one
`APIRouter` per area (routes/). Who may call what is in auth.py: every route but `/healthz`
needs a token, each denial is audited. Errors (errors.py): no 500 for input or a lost
database session (503), bounded 422s, bodies over 64 KiB 413; secrets redacted from logs
(redact.py). Routes are plain functions, so FastAPI runs them (and the jobs they start) in
its threadpool; each request has its own database session named `aggjobs:api`.

Reads can go to a replica (AGGJOBS_READ_DATABASE_URL): the reading routes (dashboard, jobs,
runs, rollups, backfills, reports, retention, /metrics) take their data from a second
session, `aggjobs:api-read`, which never writes. Everything that writes or must see the
latest state stays on the primary: the token check (a revoked token is refused at once; its
last use is recorded), the audit rows of denials, runs, backfills, token administration.
Without a replica the reading routes share the request's one primary session.
"""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ..settings import Settings, get_settings
from . import errors, metrics, statuses
from .databases import Databases
from .denials import DenialLog
from .ratelimit import TriggerLimiter
from .redact import RedactTokens, redact_access_log
from .routes import admin, dashboard, health, jobs, reports, rollups

ROUTERS = (health, jobs, rollups, admin, reports, dashboard)
DOCS_ASSETS = "/static/docs"  # Swagger UI's and ReDoc's scripts: no CDN, so /docs works offline

__all__ = ["RedactTokens", "create_api", "redact_access_log"]


def create_api(settings: Settings | None = None) -> FastAPI:
    """The API over `settings` (default: the environment's); connects only per request."""
    settings = settings or get_settings()
    sessions = Databases.of(settings)
    denial_log = DenialLog()
    api = FastAPIOffline(  # /docs and /redoc with their assets served from the package
        static_url=DOCS_ASSETS,
        title="aggjobs",
        summary="Incremental analytics rollups over PostgreSQL: jobs, runs, freshness.",
        version=version("aggjobs"),
        max_body_size=errors.MAX_BODY_BYTES,
        lifespan=denial_log.lifespan(sessions.primary),  # writes the last aggregated denials
    )
    errors.install(api)
    api.state.settings = settings
    api.state.databases = sessions
    api.state.denials = denial_log
    api.state.limiter = TriggerLimiter(settings.api_rate_limit)
    api.state.metrics = metrics.registry(sessions.read, settings)
    if settings.trusted_proxies:  # else X-Forwarded-For is ignored (see also `serve`)
        api.add_middleware(ProxyHeadersMiddleware,
                           trusted_hosts=settings.trusted_proxies.split(","))
    for area in ROUTERS:  # each with every status its routes can answer, in OpenAPI
        api.include_router(statuses.declare(area.router))
    return api
