"""Every route of the API, its area (OpenAPI tag, one APIRouter each: api/routes/) and the
role it needs: a route added, moved or left unguarded shows here."""

from __future__ import annotations

import pytest

from aggjobs.api import tokens

from .conftest import auth

ROUTES = {  # (method, path): (tag, role needed; None: no token)
    ("GET", "/healthz"): ("health", None),
    ("GET", "/metrics"): ("health", "viewer"),
    ("GET", "/api/jobs"): ("jobs", "viewer"),
    ("GET", "/api/jobs/{job}/runs"): ("jobs", "viewer"),
    ("POST", "/api/jobs/{job}/run"): ("jobs", "operator"),
    ("GET", "/api/rollups"): ("rollups", "viewer"),
    ("GET", "/api/rollups/{rollup}/{grain}/rows"): ("rollups", "viewer"),
    ("GET", "/api/backfills"): ("rollups", "viewer"),
    ("POST", "/api/backfills"): ("rollups", "operator"),
    ("GET", "/api/backfills/{backfill_id}"): ("rollups", "viewer"),
    ("POST", "/api/backfills/{backfill_id}/cancel"): ("rollups", "operator"),
    ("GET", "/api/runs/{run_id}"): ("jobs", "viewer"),
    ("POST", "/api/runs/{run_id}/retry"): ("jobs", "operator"),
    ("GET", "/api/tokens"): ("admin", "admin"),
    ("POST", "/api/tokens"): ("admin", "admin"),
    ("DELETE", "/api/tokens/{name}"): ("admin", "admin"),
    ("POST", "/api/tokens/{name}/rotate"): ("admin", "admin"),
    ("GET", "/api/retention"): ("admin", "admin"),
    ("POST", "/api/cleanup"): ("admin", "admin"),
    ("GET", "/api/reports/latest"): ("reports", "viewer"),
    ("GET", "/reports/{day}"): ("reports", "viewer"),
    ("GET", "/"): ("dashboard", "viewer"),
    ("GET", "/runs/{run_id}"): ("dashboard", "viewer"),
}
PARAMS = {"{job}": "hourly_rollup", "{name}": "t-viewer", "{day}": "2026-01-01",
          "{rollup}": "execution_metrics", "{grain}": "hour", "{run_id}": "1",
          "{backfill_id}": "1"}
BODIES = {"/api/backfills": {"from": "2026-01-01", "to": "2026-01-02"},
          "/api/tokens": {"name": "routes-test", "role": "viewer"}}


def concrete(path: str) -> str:
    for name, value in PARAMS.items():
        path = path.replace(name, value)
    return path


def test_the_routes_and_their_areas_are_these(client):
    schema = client.get("/openapi.json").json()
    found = {(method.upper(), path): tuple(op["tags"])
             for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert found == {key: (tag,) for key, (tag, _) in ROUTES.items()}


@pytest.mark.parametrize("method,path", [key for key, (_, role) in ROUTES.items() if role])
def test_every_route_but_healthz_needs_a_token(client, conn, method, path):
    got = client.request(method, concrete(path), json=BODIES.get(path))
    assert got.status_code == 401, got.text
    assert got.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("method,path", [key for key, (_, role) in ROUTES.items()
                                         if role not in (None, "viewer")])
def test_a_token_below_the_role_is_refused(client, keys, method, path):
    role = ROUTES[method, path][1]
    below = tokens.ROLES[tokens.ROLES.index(role) - 1]
    got = client.request(method, concrete(path), headers=auth(keys[below]),
                         json=BODIES.get(path))
    assert got.status_code == 403, got.text
    assert f"role {role}" in got.json()["detail"]
