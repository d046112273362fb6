"""Schemathesis against the OpenAPI schema: requests generated from every operation, with
an admin token, against the app in-process on a real (empty) database, one per test; no
answer may be a server error.

The schema is read from an app built without a database (building one connects to
nothing), and each case is sent to an app on the test's own database. Not
`schemathesis.pytest.from_fixture`: its lazy tests set `request.node._nodeid`, which
pytest 9 no longer has.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from aggjobs.api import tokens
from aggjobs.api.app import create_api
from aggjobs.settings import Settings

schema = schemathesis.openapi.from_dict(
    create_api(Settings(database_url="postgresql://nowhere.invalid/none")).openapi())


@pytest.fixture
def admin_secret(conn) -> str:
    return tokens.create(conn, "fuzz", "admin", actor="tests")[0]


@pytest.fixture
def app(settings: Settings):
    # no rate limit (the generated requests must reach the routes), no retries or waits
    return create_api(settings.model_copy(update={
        "api_rate_limit": "off", "retry_attempts": 1, "lock_wait_s": 1.0}))


@schema.parametrize()
@hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_with_a_server_error(case, app, admin_secret):
    response = case.call(app=app, headers={"Authorization": f"Bearer {admin_secret}"})
    case.validate_response(response, checks=[not_a_server_error])
