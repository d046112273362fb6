"""Schemathesis against the OpenAPI schema: requests generated from every operation, with
an admin token, against the app in-process on a real (empty) database, one per test; no
answer may be a server error, nor a status the operation does not declare.

Beyond what the schema allows (issue 21), the hooks below put hostile values where the
routes take numbers and times: `NaN`, `Infinity`, `-Infinity` (which Python's JSON parser
accepts, sent as bare JSON constants), huge numbers, and times before 1970, at or after
2200, in year 1 or 10000, with offsets that overflow. And each triggering request
(POST, DELETE) is also sent twice at once, as a client that retries too early would.

The schema is read from an app built without a database (building one connects to
nothing), and each case is sent to an app on the test's own database. Not
`schemathesis.pytest.from_fixture`: its lazy tests set `request.node._nodeid`, which
pytest 9 no longer has.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, status_code_conformance

from aggjobs.api import tokens
from aggjobs.api.app import create_api
from aggjobs.settings import Settings

schema = schemathesis.openapi.from_dict(
    create_api(Settings(database_url="postgresql://nowhere.invalid/none")).openapi())

NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, -1, 0]
TIMES = ["0001-01-01T00:00+01:00", "9999-12-31T23:59-23:59", "10000-01-01", "0001-01-01",
         "1969-12-31T23:59:59Z", "1970-01-01T00:00Z", "2199-12-31T23:59:59Z", "2200-01-01",
         "9999-12-31", "infinity", "-infinity", "NaN", "epoch", "2026-02-30"]
HOSTILE = st.sampled_from(NUMBERS + TIMES)
# where the routes read numbers or times: body fields by path, query and path parameters
BODY_FIELDS = {"/api/jobs/{job}/run": {"as_of"}, "/api/cleanup": {"as_of"},
               "/api/backfills": {"from", "to", "rollups"}, "/api/tokens": {"expires_days"}}
QUERY_FIELDS = {"since", "limit"}
PATH_FIELDS = {"day"}


def raw_json(body: dict) -> bytes:
    """JSON with bare NaN/Infinity (json.dumps allows them; requests would refuse)."""
    return json.dumps(body).encode()


def with_hostile(values: dict, fields: set[str], encode):
    keys = sorted(fields & set(values) or fields)
    return st.builds(lambda key, value: encode(
        {**values, key: [value] if key == "rollups" else value}), st.sampled_from(keys),
        HOSTILE)


@schema.hook
def flatmap_body(context, body):
    operation = context.operation
    fields = BODY_FIELDS.get(operation.path, set()) if operation.method.upper() == "POST" \
        else set()
    if not fields or not (body is None or isinstance(body, dict)):
        return st.just(body)
    return st.one_of(st.just(body), with_hostile(body or {}, fields, raw_json))


@schema.hook
def flatmap_query(context, query):
    names = {p.name for p in context.operation.query} & QUERY_FIELDS
    if not names:
        return st.just(query)
    return st.one_of(st.just(query), with_hostile(
        query or {}, names, lambda q: {k: v if isinstance(v, str) else json.dumps(v)
                                       for k, v in q.items()}))


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    names = set(path_parameters or {}) & PATH_FIELDS
    if not names:
        return st.just(path_parameters)
    return st.one_of(st.just(path_parameters), with_hostile(
        path_parameters, names, lambda p: {k: str(v) for k, v in p.items()}))


@pytest.fixture
def admin_secret(conn) -> str:
    return tokens.create(conn, "fuzz", "admin", actor="tests")[0]


@pytest.fixture
def app(settings: Settings):
    # no rate limit (the generated requests must reach the routes), no retries or waits
    return create_api(settings.model_copy(update={
        "api_rate_limit": "off", "retry_attempts": 1, "lock_wait_s": 1.0}))


@schema.parametrize()
@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_with_a_server_error(case, app, admin_secret):
    """... nor a status its OpenAPI answers do not declare (issue 17)."""
    response = case.call(app=app, headers={"Authorization": f"Bearer {admin_secret}"})
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance])


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def httpx_kwargs(case, secret: str) -> dict:
    """The case as arguments of httpx (TestClient), from requests' (schemathesis')."""
    sent = case.as_transport_kwargs(base_url="http://testserver",
                                    headers={"Authorization": f"Bearer {secret}"})
    kwargs = {k: sent[k] for k in ("method", "url", "headers", "params", "json")
              if sent.get(k) is not None}
    if sent.get("data") is not None:
        kwargs["content"] = sent["data"]
    return kwargs


@schema.include(method=["POST", "DELETE"]).parametrize()
@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_concurrent_duplicates_never_answer_a_server_error(case, client, admin_secret):
    kwargs = httpx_kwargs(case, admin_secret)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: client.request(**kwargs), range(2)))
    for answer in answers:
        assert answer.status_code < 500, (kwargs, answer.status_code, answer.text[:500])
