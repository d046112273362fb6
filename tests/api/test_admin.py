"""Admin routes over HTTP: tokens (list, create, revoke) and retention (read, run the
cleanup), each audited with the client address."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggjobs.api import tokens

from .conftest import auth


def audit_rows(conn, action: str) -> list[tuple]:
    return conn.execute("SELECT actor, target, outcome, source FROM aggjobs.audit_log"
                        " WHERE action = %s ORDER BY id", (action,)).fetchall()


def test_admin_creates_lists_and_revokes_tokens(client, keys, conn):
    made = client.post("/api/tokens", json={"name": "grafana", "role": "viewer",
                                            "expires_days": 30}, headers=auth(keys["admin"]))
    assert made.status_code == 201, made.text
    body = made.json()
    secret = body["secret"]
    assert secret.startswith("agj_") and tokens.verify(conn, secret) == "viewer"
    assert (body["name"], body["role"], body["created_by"]) == ("grafana", "viewer",
                                                                "api:t-admin")
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert client.get("/api/jobs", headers=auth(secret)).status_code == 200

    listed = client.get("/api/tokens", headers=auth(keys["admin"]))
    assert listed.status_code == 200
    by_name = {t["name"]: t for t in listed.json()}
    assert by_name["grafana"]["active"] and not by_name["t-revoked"]["active"]
    assert set(by_name) >= {"grafana", "t-viewer", "t-operator", "t-admin"}
    stored = conn.execute("SELECT token_hash FROM aggjobs.api_tokens WHERE name = 'grafana'"
                          ).fetchone()[0]
    assert secret not in listed.text and stored not in listed.text
    assert "token_hash" not in listed.text and "secret" not in listed.text

    gone = client.delete("/api/tokens/grafana", headers=auth(keys["admin"]))
    assert gone.status_code == 200 and gone.json() == {"name": "grafana", "revoked": True}
    assert client.get("/api/jobs", headers=auth(secret)).status_code == 401

    assert audit_rows(conn, "token.create")[-1] == ("api:t-admin", "grafana", "created",
                                                     "testclient")
    assert audit_rows(conn, "token.revoke")[-1] == ("api:t-admin", "grafana", "revoked",
                                                     "testclient")
    dump = conn.execute("SELECT string_agg(a::text, ' ') FROM aggjobs.audit_log AS a"
                        ).fetchone()[0]
    assert secret not in dump


def test_token_route_errors(client, keys, conn):
    admin = auth(keys["admin"])
    taken = client.post("/api/tokens", json={"name": "t-viewer", "role": "admin"},
                        headers=admin)
    assert taken.status_code == 409 and "exists already" in taken.json()["detail"]
    assert audit_rows(conn, "token.create")[-1] == ("api:t-admin", "t-viewer",
                                                     "refused: name exists", "testclient")
    bad_name = client.post("/api/tokens", json={"name": "a b", "role": "viewer"}, headers=admin)
    assert bad_name.status_code == 400 and "invalid token name" in bad_name.json()["detail"]
    for body in ({"name": "x", "role": "root"}, {"name": "x"},
                 {"name": "x", "role": "viewer", "expires_days": 0},
                 {"name": "x", "role": "viewer", "secret": "agj_mine"}):
        assert client.post("/api/tokens", json=body, headers=admin).status_code == 422, body
    missing = client.delete("/api/tokens/nobody", headers=admin)
    assert missing.status_code == 404 and "no active token named 'nobody'" in \
        missing.json()["detail"]
    assert audit_rows(conn, "token.revoke")[-1] == (
        "api:t-admin", "nobody", "refused: no active token of that name", "testclient")
    assert conn.execute("SELECT count(*) FROM aggjobs.api_tokens WHERE name = 'x'"
                        ).fetchone()[0] == 0


def test_retention_shows_the_days_in_force_and_the_horizons(client, keys, api_settings,
                                                            conn):
    from fastapi.testclient import TestClient

    from aggjobs.api.app import create_api

    conn.execute("UPDATE aggjobs.watermarks SET horizon = '2026-01-01T00:00Z'"
                 " WHERE rollup = 'user_activity' AND grain = 'hour'")
    custom = api_settings.model_copy(update={"retention_days": {"raw": 30, "weekly": 0}})
    with TestClient(create_api(custom)) as c:
        got = c.get("/api/retention", headers=auth(keys["admin"]))
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["days"] == {"raw": 30, "hourly": 90, "daily": 730, "weekly": 0,
                            "job_runs": 90}
    assert body["batch_rows"] == custom.cleanup_batch_rows
    horizons = {(h["rollup"], h["grain"]): h["horizon"] for h in body["horizons"]}
    assert datetime.fromisoformat(horizons[("user_activity", "hour")]) == datetime(
        2026, 1, 1, tzinfo=UTC)
    assert horizons[("user_activity", "day")] is None


def test_cleanup_runs_the_retention_job_as_admin_only(client, keys, conn):
    # job history past its 90 days: the cleanup's job_runs step deletes it
    for _ in range(3):
        conn.execute("INSERT INTO aggjobs.job_runs (job, trigger, who, as_of, status, host,"
                     " pid, started_at, finished_at) VALUES ('hourly_rollup', 'schedule',"
                     " 'beat', now(), 'succeeded', 'h', 1, now() - interval '100 days',"
                     " now() - interval '100 days')")
    denied = client.post("/api/jobs/cleanup_old_data/run", headers=auth(keys["operator"]))
    assert denied.status_code == 403 and "needs a token with role admin" in \
        denied.json()["detail"]
    assert conn.execute("SELECT count(*) FROM aggjobs.job_runs WHERE job = 'cleanup_old_data'"
                        ).fetchone()[0] == 0
    assert audit_rows(conn, "denied") == [("t-operator", "/api/jobs/cleanup_old_data/run",
                                           "403", "testclient")]

    got = client.post("/api/cleanup", headers=auth(keys["admin"]))
    assert got.status_code == 200, got.text
    assert (got.json()["job"], got.json()["status"]) == ("cleanup_old_data", "succeeded")
    assert {s["name"]: s["rows"] for s in got.json()["steps"]}["cleanup.job_runs"] == 3
    assert audit_rows(conn, "run") == [("api:t-admin", "cleanup_old_data", "succeeded",
                                        "testclient")]
    assert audit_rows(conn, "retention_delete") == [
        ("cleanup_old_data", '"aggjobs"."job_runs"', "3 rows deleted", "testclient")]


@pytest.mark.parametrize("path", ["/api/tokens", "/api/retention"])
def test_admin_reads_are_not_rate_limited(client, keys, path):
    for _ in range(12):  # the default limit is 10/minute on triggering routes
        assert client.get(path, headers=auth(keys["admin"])).status_code == 200
