"""What the API lets one token start: the client address on every audit row
(X-Forwarded-For only from trusted proxies), the backfill span cap, and the rate limit of
the triggering routes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from aggjobs.api import tokens
from aggjobs.api.app import create_api
from aggjobs.api.ratelimit import TriggerLimiter
from aggjobs.settings import Settings
from tests.api.conftest import auth

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def keys(conn) -> dict[str, str]:
    return {role: tokens.create(conn, f"t-{role}", role, actor="tests")[0]
            for role in tokens.ROLES} | {
        "operator2": tokens.create(conn, "t-operator2", "operator", actor="tests")[0]}


@pytest.fixture
def make_client(settings: Settings) -> Iterator:
    clients: list[TestClient] = []

    def make(client: tuple[str, int] = ("testclient", 50000), **update) -> TestClient:
        c = TestClient(create_api(settings.model_copy(update={"retry_attempts": 1, **update})),
                       client=client)
        clients.append(c.__enter__())
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def audit_rows(conn, action: str) -> list[dict]:
    cur = conn.execute("SELECT actor, target, params, outcome, source FROM aggjobs.audit_log"
                       " WHERE action = %s ORDER BY id", (action,))
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# -- the client address -------------------------------------------------------------------
def test_every_api_audit_row_carries_the_client_address(make_client, keys, conn):
    client = make_client(client=("192.0.2.7", 40000))
    assert client.get("/api/jobs").status_code == 401
    run = client.post("/api/jobs/refresh_materialized_views/run",
                      headers=auth(keys["operator"]))
    assert run.status_code == 200, run.text
    backfill = client.post("/api/backfills", headers=auth(keys["operator"]), json={
        "rollups": ["user_activity"], "from": (TODAY - timedelta(days=2)).isoformat(),
        "to": (TODAY - timedelta(days=1)).isoformat()})
    assert backfill.status_code == 202, backfill.text
    [queued] = backfill.json()["backfills"]
    cancel = client.post(f"/api/backfills/{queued['id']}/cancel", headers=auth(keys["operator"]))
    assert cancel.status_code == 200, cancel.text
    made = client.post("/api/tokens", json={"name": "x", "role": "viewer"},
                       headers=auth(keys["admin"]))
    assert made.status_code == 201
    assert client.delete("/api/tokens/x", headers=auth(keys["admin"])).status_code == 200
    rows = conn.execute("SELECT action, source FROM aggjobs.audit_log WHERE actor <> 'tests'"
                        " ORDER BY id").fetchall()
    assert rows == [("denied", "192.0.2.7"), ("run", "192.0.2.7"),
                    ("backfill", "192.0.2.7"),  # queued (a worker's task runs it)
                    ("backfill.cancel", "192.0.2.7"),
                    ("token.create", "192.0.2.7"), ("token.revoke", "192.0.2.7")]


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(make_client, conn):
    spoof = {"X-Forwarded-For": "203.0.113.66"}
    default = make_client(client=("127.0.0.1", 40000))
    assert default.get("/api/jobs", headers=spoof).status_code == 401
    proxied = make_client(client=("10.1.2.3", 40000), trusted_proxies="10.0.0.0/8")
    assert proxied.get("/api/jobs", headers=spoof).status_code == 401
    direct = make_client(client=("198.51.100.4", 40000), trusted_proxies="10.0.0.0/8")
    assert direct.get("/api/jobs", headers=spoof).status_code == 401
    sources = [r["source"] for r in audit_rows(conn, "denied")]
    assert sources == ["127.0.0.1", "203.0.113.66", "198.51.100.4"]


def test_trusted_proxies_must_be_addresses():
    with pytest.raises(ValueError, match="AGGJOBS_TRUSTED_PROXIES: 'proxy.local'"):
        Settings(trusted_proxies="10.0.0.1, proxy.local")
    assert Settings(trusted_proxies=" 10.0.0.1 , ::1,").trusted_proxies == "10.0.0.1,::1"


# -- the backfill span cap ----------------------------------------------------------------
def test_a_backfill_over_the_cap_is_422_and_audited(make_client, keys, conn):
    client = make_client(max_backfill_days=7)
    lo, hi = TODAY - timedelta(days=10), TODAY - timedelta(days=2)
    body = {"rollups": ["user_activity"], "from": lo.isoformat(), "to": hi.isoformat()}
    got = client.post("/api/backfills", json=body, headers=auth(keys["operator"]))
    assert got.status_code == 422, got.text
    detail = got.json()["detail"]
    assert "spans 8 days, over the backfill cap of 7 days (AGGJOBS_MAX_BACKFILL_DAYS)" in detail
    assert "--force" not in detail  # no way past the cap over HTTP
    assert conn.execute("SELECT count(*) FROM aggjobs.backfills").fetchone()[0] == 0
    [row] = audit_rows(conn, "backfill")
    assert row["actor"] == "api:t-operator" and row["source"] == "testclient"
    assert row["outcome"].startswith("refused: the range spans 8 days")
    assert row["params"]["days"] == 8

    at_cap = {**body, "from": (hi - timedelta(days=7)).isoformat()}
    ok = client.post("/api/backfills", json=at_cap, headers=auth(keys["operator"]))
    assert ok.status_code == 202, ok.text


def test_no_cap_when_the_setting_is_zero(make_client, keys):
    client = make_client(max_backfill_days=0)
    body = {"rollups": ["user_activity"], "from": (TODAY - timedelta(days=400)).isoformat(),
            "to": (TODAY - timedelta(days=1)).isoformat()}
    assert client.post("/api/backfills", json=body,
                       headers=auth(keys["operator"])).status_code == 202


def test_the_default_cap_is_31_days(make_client, keys):
    client = make_client()
    body = {"rollups": ["user_activity"], "from": (TODAY - timedelta(days=33)).isoformat(),
            "to": (TODAY - timedelta(days=1)).isoformat()}
    got = client.post("/api/backfills", json=body, headers=auth(keys["operator"]))
    assert got.status_code == 422 and "cap of 31 days" in got.json()["detail"]


# -- rate limits ----------------------------------------------------------------------------
def test_triggering_routes_are_rate_limited_per_token(make_client, keys, conn):
    client = make_client(api_rate_limit="3/minute")
    run = "/api/jobs/refresh_materialized_views/run"
    op, op2 = auth(keys["operator"]), auth(keys["operator2"])
    # one budget per token across the triggering routes (bad bodies count too)
    assert client.post(run, headers=op).status_code == 200
    assert client.post("/api/backfills", json={"from": "x", "to": "y"},
                       headers=op).status_code == 422
    assert client.post(run, headers=op).status_code == 200
    limited = client.post("/api/backfills", json={"from": "x", "to": "y"}, headers=op)
    assert limited.status_code == 429, limited.text
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "3/minute (AGGJOBS_API_RATE_LIMIT)" in limited.json()["detail"]
    assert client.post(run, headers=op).status_code == 429
    # other tokens have their own budget; reads are not limited
    assert client.post(run, headers=op2).status_code == 200
    for _ in range(5):
        assert client.get("/api/jobs", headers=op).status_code == 200
    denied = audit_rows(conn, "denied")
    assert [(r["actor"], r["target"], r["outcome"], r["source"]) for r in denied] == [
        ("t-operator", "/api/backfills", "429", "testclient"),
        ("t-operator", run, "429", "testclient")]
    assert denied[0]["params"]["reason"] == "rate limit 3/minute (AGGJOBS_API_RATE_LIMIT)"
    assert conn.execute("SELECT count(*) FROM aggjobs.job_runs").fetchone()[0] == 3


def test_admin_triggering_routes_are_rate_limited(make_client, keys):
    client = make_client(api_rate_limit="2/minute")
    admin = auth(keys["admin"])
    assert client.post("/api/tokens", json={"name": "a", "role": "viewer"},
                       headers=admin).status_code == 201
    assert client.delete("/api/tokens/a", headers=admin).status_code == 200
    assert client.post("/api/cleanup", headers=admin).status_code == 429
    assert client.post("/api/tokens", json={"name": "b", "role": "viewer"},
                       headers=admin).status_code == 429


def test_rate_limit_off(make_client, keys):
    client = make_client(api_rate_limit="off")
    for _ in range(12):
        got = client.post("/api/backfills", json={"from": "x", "to": "y"},
                          headers=auth(keys["operator"]))
        assert got.status_code == 422


def test_the_limiter_lets_requests_through_again_after_retry_after():
    limiter = TriggerLimiter("2/second;3/minute")
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    wait = limiter.acquire("a")
    assert wait == 1
    assert limiter.acquire("b") is None
    time.sleep(wait + 0.05)
    assert limiter.acquire("a") is None  # the third of the minute
    time.sleep(1.05)
    assert 55 <= limiter.acquire("a") <= 60  # the minute's budget is spent
    assert TriggerLimiter("off").acquire("a") is None


def test_rate_limit_setting_is_checked():
    with pytest.raises(ValueError, match="AGGJOBS_API_RATE_LIMIT 'lots'"):
        Settings(api_rate_limit="lots")
    assert Settings(api_rate_limit=" OFF ").api_rate_limit == "off"
