"""The request matrix: each kind of token against each route, with its audit row; tokens
are stored as hashes only, and their changes are audited."""

from __future__ import annotations

import hashlib

import pytest

from aggjobs.api import tokens

from .conftest import auth

READS = [("GET", "/api/jobs"), ("GET", "/api/rollups"), ("GET", "/api/jobs/hourly_rollup/runs"),
         ("GET", "/metrics"), ("GET", "/")]
WRITES = [("POST", "/api/jobs/refresh_materialized_views/run"), ("POST", "/api/backfills")]
ADMIN = [("GET", "/api/tokens"), ("POST", "/api/tokens"), ("DELETE", "/api/tokens/t-expired"),
         ("GET", "/api/retention"), ("POST", "/api/cleanup"),
         ("POST", "/api/jobs/cleanup_old_data/run")]
BODIES = {"/api/backfills": {"rollups": ["user_activity"], "from": "2026-01-01",
                             "to": "2026-01-02"},
          "/api/tokens": {"name": "made-over-http", "role": "viewer"}}
EXPECTED = {
    # who: (status on reads, status on writes, status on admin routes)
    None: (401, 401, 401), "wrong": (401, 401, 401), "revoked": (401, 401, 401),
    "expired": (401, 401, 401),
    "viewer": (200, 403, 403), "operator": (200, 200, 403), "admin": (200, 200, 200),
}
ACTOR = {None: "anonymous", "wrong": "anonymous", "revoked": "t-revoked",
         "expired": "t-expired", "viewer": "t-viewer", "operator": "t-operator"}


def expected_status(who: str | None, method: str, path: str) -> int:
    status = EXPECTED[who][2 if (method, path) in ADMIN else (method, path) in WRITES]
    if status == 200 and (method, path) == ("POST", "/api/tokens"):
        return 201
    if status == 200 and (method, path) == ("POST", "/api/backfills"):
        return 202  # queued for a worker
    return status


@pytest.mark.parametrize("method,path", READS + WRITES + ADMIN)
@pytest.mark.parametrize("who", list(EXPECTED))
def test_request_matrix(client, keys, conn, who, method, path):
    status = expected_status(who, method, path)
    headers = auth(keys[who]) if who else {}
    got = client.request(method, path, headers=headers, json=BODIES.get(path))
    assert got.status_code == status, got.text
    denied = conn.execute("SELECT actor, target, params, outcome, source FROM aggjobs.audit_log"
                          " WHERE action = 'denied'").fetchall()
    if status in (401, 403):
        [(actor, target, params, outcome, source)] = denied
        assert (actor, target, outcome) == (ACTOR[who], path, str(status))
        assert params["method"] == method and params["client"] == source == "testclient"
        if who:  # the secret is in no audit row and no answer
            assert keys[who] not in str(params) and keys[who] not in got.text
    else:
        assert denied == []


def test_token_in_the_query_string_is_accepted(client, keys):
    assert client.get("/api/jobs", params={"token": keys["viewer"]}).status_code == 200
    assert client.get("/api/jobs", params={"token": "agj_nope"}).status_code == 401


def test_a_malformed_authorization_header_is_401(client, keys):
    got = client.get("/api/jobs", headers={"Authorization": f"Basic {keys['viewer']}"})
    assert got.status_code == 401


def test_only_the_hash_of_a_secret_is_stored(conn):
    secret, _ = tokens.create(conn, "ci", "viewer", actor="tests")
    assert secret.startswith("agj_") and len(secret) > 40
    (stored,) = conn.execute("SELECT token_hash FROM aggjobs.api_tokens"
                             " WHERE name = 'ci'").fetchone()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    dump = conn.execute("SELECT (SELECT string_agg(t::text, ' ') FROM aggjobs.api_tokens AS t)"
                        " || (SELECT string_agg(a::text, ' ') FROM aggjobs.audit_log AS a)"
                        ).fetchone()[0]
    assert secret not in dump and secret[4:] not in dump
    assert tokens.verify(conn, secret) == "viewer"
    assert tokens.verify(conn, secret + "x") is None
    assert tokens.verify(conn, None) is None
    assert conn.execute("SELECT last_used_at IS NOT NULL FROM aggjobs.api_tokens"
                        " WHERE name = 'ci'").fetchone()[0]


def test_token_changes_are_audited(conn):
    secret, _ = tokens.create(conn, "ops", "operator", actor="alice", expires_days=7)
    with pytest.raises(tokens.TokenError, match="exists already"):
        tokens.create(conn, "ops", "admin", actor="mallory")
    tokens.revoke(conn, "ops", actor="alice")
    assert tokens.verify(conn, secret) is None
    with pytest.raises(tokens.UnknownToken):
        tokens.revoke(conn, "ops", actor="alice")
    rows = conn.execute("SELECT actor, action, target, outcome FROM aggjobs.audit_log"
                        " ORDER BY id").fetchall()
    assert rows == [("alice", "token.create", "ops", "created"),
                    ("mallory", "token.create", "ops", "refused: name exists"),
                    ("alice", "token.revoke", "ops", "revoked"),
                    ("alice", "token.revoke", "ops", "refused: no active token of that name")]


@pytest.mark.parametrize("name,role,days,words", [
    ("", "viewer", None, "invalid token name"),
    ("a b", "viewer", None, "invalid token name"),
    ("x'; DROP TABLE aggjobs.api_tokens; --", "viewer", None, "invalid token name"),
    ("ok", "root", None, "invalid role"),
    ("ok", "viewer", -1, "must be positive"),
])
def test_invalid_tokens_are_refused(conn, name, role, days, words):
    with pytest.raises(tokens.TokenError, match=words):
        tokens.create(conn, name, role, actor="tests", expires_days=days)
    assert conn.execute("SELECT count(*) FROM aggjobs.api_tokens").fetchone()[0] == 0


def test_roles_are_ordered():
    assert tokens.role_allows("admin", "operator") and tokens.role_allows("operator", "viewer")
    assert not tokens.role_allows("viewer", "operator")
    assert not tokens.role_allows("operator", "admin")
