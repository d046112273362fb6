"""The statuses each route declares in its OpenAPI answer list: every one it can return.

What a route's dependencies can answer is declared once, on the dependency (`can_answer`):
the token check 401 and 403, a triggering route's rate limit 429, a database session 503.
`declare(router)` adds those of each route's dependencies to its `responses`, plus 413 where
there is a body; what a route answers itself (an unknown job's 404, a name in use's 409) it
declares with `responses=answers(...)`. FastAPI declares 422 where there are parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

WHY = {
    400: "The request cannot be done as asked (e.g. a time in the future); `detail` says why.",
    401: "Missing, invalid, expired or revoked token (audited).",
    403: "The token's role is below the one the route needs (audited).",
    404: "No such job, token, report, run or backfill.",
    409: "In conflict with what exists or runs (a token name in use, a range being "
         "backfilled, a backfill that has ended, a run that did not fail, rollup definitions "
         "changed).",
    413: "The body is over 64 KiB.",
    422: "Invalid parameters or body; `detail` lists the problems.",
    429: "The token is over the rate limit of triggering requests (AGGJOBS_API_RATE_LIMIT); "
         "`Retry-After` says when to retry.",
    503: "The database (or, for a queued backfill, the workers' broker) cannot be reached, "
         "is not migrated, or the session was lost; `Retry-After` says when to retry.",
}
ATTRIBUTE = "aggjobs_can_answer"

F = TypeVar("F", bound=Callable[..., Any])


class ErrorBody(BaseModel):
    """What every error answers (422's `detail` is a list of problems instead)."""

    detail: str


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for these statuses, each with its meaning and body."""
    return {status: {"description": WHY[status], "model": ErrorBody} for status in statuses}


def can_answer(*statuses: int) -> Callable[[F], F]:
    """Marks a dependency: every route using it can answer these statuses."""

    def mark(dependency: F) -> F:
        setattr(dependency, ATTRIBUTE, frozenset(statuses))
        return dependency

    return mark


def from_dependencies(dependant: Dependant) -> set[int]:
    found: set[int] = set()
    for dependency in dependant.dependencies:
        found |= getattr(dependency.call, ATTRIBUTE, frozenset())
        found |= from_dependencies(dependency)
    return found


def declare(router: APIRouter) -> APIRouter:
    """Adds to each route's answers what its dependencies and its body can answer (before
    the router is included: FastAPI reads the routes of an included router lazily)."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            statuses = from_dependencies(route.dependant) | ({413} if route.body_field
                                                            else set())
            for status, entry in answers(*sorted(statuses)).items():
                route.responses.setdefault(status, entry)
    return router
