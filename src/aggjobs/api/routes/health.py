"""`/healthz` (no token) and `/metrics`."""

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...db.connect import first_line
from ...errors import AggjobsError
from ...sql import query
from .. import errors
from ..auth import Viewer, databases

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {
    "description": "The database (or the read replica) does not answer: `error` says which."}})
def healthz(request: Request) -> JSONResponse:
    """Liveness: 200 when the database answers (and the read replica, when one is
    configured), 503 otherwise, saying which failed. No token needed."""
    for what, opener in databases(request).targets():
        try:
            with opener() as conn:
                conn.execute(query("ping"))
        except (AggjobsError, psycopg.Error) as exc:
            error = first_line(exc) if what == "database" else f"{what}: {first_line(exc)}"
            return JSONResponse({"ok": False, "error": error}, status_code=503,
                                headers={"Retry-After": str(errors.RETRY_AFTER_S)})
    return JSONResponse({"ok": True})


@router.get("/metrics", response_class=Response)
def prometheus(request: Request, _: Viewer) -> Response:
    """Prometheus text format, collected from the database at scrape time (viewer)."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
