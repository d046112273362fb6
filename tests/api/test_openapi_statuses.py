"""The OpenAPI schema declares every status each route answers: each operation of the schema
is called the ways that make the shared statuses (no token, a token below the route's role,
over the rate limit, a body over 64 KiB, the database gone) and must have declared what it
answered; and a route declares 429 and 413 only where it can answer them. The statuses a
route answers itself (404, 409, 400) are checked on generated requests by the schemathesis
test (status_code_conformance)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from aggjobs.api import tokens
from aggjobs.api.app import create_api
from aggjobs.settings import Settings

from .conftest import auth

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/none"
PATH_VALUES = {"{job}": "hourly_rollup", "{name}": "nobody", "{rollup}": "execution_metrics",
               "{grain}": "hour", "{day}": "2026-01-01"}
SCHEMA = create_api(Settings(database_url=UNREACHABLE)).openapi()
OPERATIONS = [(method.upper(), path, op) for path, ops in SCHEMA["paths"].items()
              for method, op in ops.items() if path != "/healthz"]
IDS = [f"{method} {path}" for method, path, _ in OPERATIONS]


def url(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    return path


def declared(op: dict) -> set[int]:
    return {int(status) for status in op["responses"]}


def call(client: TestClient, method: str, path: str, **kwargs):
    return client.request(method, url(path), **kwargs)


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_api(settings.model_copy(update={"api_rate_limit": "1/minute"}))) as c:
        yield c


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=IDS)
def test_shared_statuses_are_declared_where_answered(client, conn, method, path, op):
    viewer = tokens.create(conn, "v", "viewer", actor="tests")[0]
    admin = tokens.create(conn, "a", "admin", actor="tests")[0]
    answered = {call(client, method, path).status_code}  # no token
    below = call(client, method, path, headers=auth(viewer)).status_code
    answered.add(below)
    if "requestBody" in op:  # over 64 KiB
        answered.add(call(client, method, path, content=b"{" + b" " * (70 * 1024) + b"}",
                          headers={**auth(admin), "Content-Type": "application/json"}
                          ).status_code)
    if method != "GET":  # triggering routes: the second request of the minute is over
        for _ in range(2):
            answered.add(call(client, method, path, headers=auth(admin), json={}).status_code)
    assert 401 in answered
    assert answered - {200, 201} <= declared(op), (answered, declared(op))
    assert (429 in declared(op)) == (429 in answered)  # declared only where it happens
    assert (413 in declared(op)) == ("requestBody" in op)
    if below == 200:  # a viewer may read it: 403 must not be declared
        assert 403 not in declared(op)


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=IDS)
def test_a_database_gone_is_a_declared_503(method, path, op):
    with TestClient(create_api(Settings(database_url=UNREACHABLE))) as gone:
        answer = call(gone, method, path, headers=auth(tokens.new_secret()))
    assert answer.status_code == 503 and 503 in declared(op), answer.text


def test_every_route_is_in_the_schema_with_its_statuses():
    assert len(OPERATIONS) >= 17
    for method, path, op in OPERATIONS:
        assert {401, 503} <= declared(op), (method, path)
