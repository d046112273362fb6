"""Who may call a route (docs/api.md): the request's database sessions and the token
check, as FastAPI dependencies reading `request.app.state` (app.py sets it).

Every route but `/healthz` needs a token (`Authorization: Bearer <secret>`, or `?token=` for
links such as the dashboard's): reading needs `viewer`, triggering runs and backfills
`operator`, tokens and retention `admin`. A missing or invalid token is 401, a too-weak one
403, a token over its rate limit on a triggering route 429 (ratelimit.py); each denial is
written to aggjobs.audit_log (actor: the token's name, or "anonymous"; 401s aggregated per
client and minute, denials.py), with the client address in `source` (X-Forwarded-For only
from AGGJOBS_TRUSTED_PROXIES).

No `from __future__ import annotations` here: FastAPI must see the Annotated aliases as
objects, not strings.
"""

from collections.abc import Callable, Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from ..settings import Settings
from . import errors, tokens
from .databases import Databases
from .denials import Denial, DenialLog
from .ratelimit import TriggerLimiter
from .redact import redact
from .statuses import can_answer

bearer = HTTPBearer(auto_error=False, description="An aggjobs API token (`aggjobs token "
                    "create`).")
query_token = APIKeyQuery(name="token", auto_error=False,
                          description="The same token as a query parameter, for links.")


def client_address(request: Request) -> str:
    """The peer's address (after ProxyHeadersMiddleware when proxies are trusted)."""
    return request.client.host if request.client else "unknown"


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def databases(request: Request) -> Databases:
    found: Databases = request.app.state.databases
    return found


@can_answer(503)
def db(request: Request) -> Iterator[psycopg.Connection]:
    # Closed, never committed on the way out (autocommit: nothing is pending), so that
    # a session terminated after the route's last statement fails nothing.
    conn = databases(request).primary()
    try:
        yield conn
    finally:
        conn.close()


AppSettings = Annotated[Settings, Depends(app_settings)]
Conn = Annotated[psycopg.Connection, Depends(db)]


def read_db(request: Request, primary: Conn) -> Iterator[psycopg.Connection]:
    """The reading routes' session: the replica's, else the request's primary one.
    Routes list it after their token check, so that a refused request opens none."""
    found = databases(request)
    if found.replica is None:
        yield primary
        return
    conn = found.read()
    try:
        yield conn
    finally:
        conn.close()


ReadConn = Annotated[psycopg.Connection, Depends(read_db)]


def deny(conn: psycopg.Connection, request: Request, actor: str, needed: str,
         reason: str | None, status: int) -> None:
    """Audited: at once, or, a 401 after the first of its client and minute, counted
    and written with the others when the minute closes (denials.py)."""
    denial_log: DenialLog = request.app.state.denials
    denial_log.record(conn, Denial(
        actor=actor, target=errors.cut(redact(request.url.path), 200), method=request.method,
        needs=needed, reason=reason, client=client_address(request), status=status))


def authenticate(conn: psycopg.Connection, request: Request, role: str,
                 secret: str | None) -> tokens.Principal:
    """The principal of `secret` if its role is `role` or above; else denied, 401 or 403."""
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


def throttle(conn: psycopg.Connection, request: Request, role: str,
             principal: tokens.Principal) -> None:
    """Count a triggering request against the token's rate limit; over it, denied (429)."""
    limiter: TriggerLimiter = request.app.state.limiter
    wait = limiter.acquire(principal.name)
    if wait is not None:
        deny(conn, request, principal.name, role,
             f"rate limit {limiter.spec} (AGGJOBS_API_RATE_LIMIT)", 429)
        raise HTTPException(
            429, f"token {principal.name!r} is over the rate limit of triggering "
            f"requests, {limiter.spec} (AGGJOBS_API_RATE_LIMIT): retry in {wait} s",
            headers={"Retry-After": str(wait)})


def require(role: str, *, limited: bool = False) -> Callable[..., tokens.Principal]:
    """The token's principal if its role is `role` or above; `limited`: a triggering
    route, counted against the token's rate limit."""

    # 403 where a lower role exists; 429 on the triggering routes
    @can_answer(401, *([403] if role != tokens.ROLES[0] else []), *([429] if limited else []))
    def dependency(
        request: Request, conn: Conn,
        header: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        in_query: Annotated[str | None, Depends(query_token)],
    ) -> tokens.Principal:
        denial_log: DenialLog = request.app.state.denials
        denial_log.flush_due(conn)  # the aggregated denials of a closed minute
        secret = header.credentials if header else in_query
        principal = authenticate(conn, request, role, secret)
        if limited:
            throttle(conn, request, role, principal)
        return principal

    return dependency


Viewer = Annotated[tokens.Principal, Depends(require("viewer"))]
Operator = Annotated[tokens.Principal, Depends(require("operator", limited=True))]
Admin = Annotated[tokens.Principal, Depends(require("admin"))]
AdminTrigger = Annotated[tokens.Principal, Depends(require("admin", limited=True))]
