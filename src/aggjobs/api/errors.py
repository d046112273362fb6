"""How the API answers errors (docs/api.md, "Errors"): never a 500 for input or for a lost
database session.

- aggjobs' own errors: a status per kind, with a one-line `detail`;
- a database session lost mid-request (terminated, server shut down, connection closed: any
  psycopg OperationalError) and a database that cannot be reached or is not migrated: 503
  with `Retry-After`;
- a request of the wrong shape: FastAPI's 422, whose `detail` lists at most MAX_ERRORS
  errors, each echoing at most MAX_ECHO_CHARS characters of what it refuses, as strict
  JSON (a non-finite number is echoed as the string `"NaN"`, `"Infinity"`, `"-Infinity"`);
- a body over MAX_BODY_BYTES: 413 (Starlette's body limit, `FastAPI(max_body_size=...)`),
  before anything reads it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..db.connect import first_line
from ..engine.backfill import BackfillBusy
from ..errors import (
    AggjobsError,
    Conflict,
    DatabaseUnavailable,
    DeclarationError,
    DefinitionsChanged,
    InvalidTimestamp,
    MigrationRequired,
    NotFound,
    SpanTooLong,
    UnknownJob,
)
from ..operations import tokens
from ..operations.backfill import BrokerUnavailable
from .redact import redact

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # the largest valid body (a backfill of 16 rollups) is ~1.5 KiB
MAX_ERRORS = 20  # errors listed by one 422; a last entry says how many more there were
MAX_ECHO_CHARS = 100  # characters of one refused value (or key, or message) in a 422
RETRY_AFTER_S = 5  # what a 503 tells the client to wait
MAX_NESTING = 3  # levels of a refused list or object echoed; deeper ones as their repr


def aggjobs_status(exc: AggjobsError) -> int:
    # the server's own configuration (AGGJOBS_ROLLUPS) is at fault, not the request
    if isinstance(exc, DatabaseUnavailable | MigrationRequired | DeclarationError
                  | BrokerUnavailable):
        return 503
    if isinstance(exc, UnknownJob | tokens.UnknownToken | NotFound):
        return 404
    if isinstance(exc, tokens.TokenExists | BackfillBusy | DefinitionsChanged | Conflict):
        return 409
    if isinstance(exc, SpanTooLong | InvalidTimestamp):
        return 422
    return 400


def unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def aggjobs_error(request: Request, exc: AggjobsError) -> JSONResponse:
    status = aggjobs_status(exc)
    detail = first_line(exc)
    if status == 503:
        return unavailable(detail)
    return JSONResponse({"detail": detail}, status_code=status)


def lost_session(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
    """The request's database session failed under it (terminated by an administrator or a
    failover, the server shutting down, the network): nothing the client did wrong, and
    the next request opens a new session."""
    log.warning("%s %s: database session lost: %s", request.method,
                redact(request.url.path), first_line(exc))
    return unavailable(f"the database session was lost ({type(exc).__name__}): retry")


def cut(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def echo(value: Any, depth: int = 0) -> Any:
    """`value` as bounded, strict JSON: strings cut, non-finite numbers as their JSON
    spelling, long lists and objects shortened, anything else as its cut repr."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else cut(str(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return value if math.isfinite(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, dict) and depth < MAX_NESTING:
        items = list(value.items())
        shown = {cut(str(k)): echo(v, depth + 1) for k, v in items[:MAX_ERRORS]}
        if len(items) > MAX_ERRORS:
            shown["..."] = f"{len(items) - MAX_ERRORS} more keys"
        return shown
    if isinstance(value, list | tuple) and depth < MAX_NESTING:
        listed = [echo(v, depth + 1) for v in value[:MAX_ERRORS]]
        if len(value) > MAX_ERRORS:
            listed.append(f"... {len(value) - MAX_ERRORS} more items")
        return listed
    return cut(repr(value))


def bounded_errors(errors: list[dict]) -> list[dict]:
    shown = []
    for error in errors[:MAX_ERRORS]:
        entry = {"type": cut(str(error.get("type", ""))),
                 "loc": [part if isinstance(part, int) else cut(str(part))
                         for part in error.get("loc", ())[:MAX_NESTING + 2]],
                 "msg": cut(str(error.get("msg", "")), 2 * MAX_ECHO_CHARS),
                 "input": echo(error.get("input"))}
        if error.get("ctx"):
            entry["ctx"] = echo(error["ctx"], MAX_NESTING - 1)
        shown.append(entry)
    if len(errors) > MAX_ERRORS:
        shown.append({"type": "too_many_errors", "loc": [], "input": None,
                      "msg": f"{len(errors) - MAX_ERRORS} more errors not shown"})
    return shown


def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, bounded: its default handler echoes every refused value whole (a
    20 MB field, a 20 MB reply) and fails on a non-finite number (a 500)."""
    return JSONResponse({"detail": bounded_errors(list(exc.errors()))}, status_code=422)


def install(api: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; each of these takes its own class.
    api.add_exception_handler(AggjobsError, aggjobs_error)  # type: ignore[arg-type]
    api.add_exception_handler(psycopg.OperationalError, lost_session)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError,
                              invalid_request)  # type: ignore[arg-type]
