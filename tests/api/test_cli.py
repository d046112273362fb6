"""`aggjobs token create|list|revoke` and `aggjobs serve` as real processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess

import httpx

from aggjobs.api import tokens
from tests.api.conftest import auth
from tests.api.serve import AGGJOBS, serving


def aggjobs(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url, "COLUMNS": "160"}
    return subprocess.run([AGGJOBS, *args], env=env, capture_output=True, text=True, check=False,
                          timeout=60)


def test_token_create_list_revoke(db_url, conn):
    made = aggjobs(db_url, "token", "create", "--name", "grafana", "--role", "viewer",
                   "--expires-days", "30")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("agj_") and "\n" not in secret
    assert "not shown again" in made.stderr
    (stored,) = conn.execute("SELECT token_hash FROM aggjobs.api_tokens").fetchone()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    assert tokens.verify(conn, secret) == "viewer"

    again = aggjobs(db_url, "token", "create", "--name", "grafana", "--role", "admin")
    assert again.returncode == 2 and "exists already" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    bad_role = aggjobs(db_url, "token", "create", "--name", "x", "--role", "root")
    assert bad_role.returncode == 2

    listed = aggjobs(db_url, "token", "list")
    assert listed.returncode == 0, listed.stderr
    assert "grafana" in listed.stdout and "viewer" in listed.stdout
    assert secret not in listed.stdout and stored not in listed.stdout

    revoked = aggjobs(db_url, "token", "revoke", "grafana")
    assert revoked.returncode == 0, revoked.stderr
    assert tokens.verify(conn, secret) is None
    gone = aggjobs(db_url, "token", "revoke", "grafana")
    assert gone.returncode == 2 and "no active token named 'grafana'" in gone.stderr
    actions = conn.execute("SELECT action, outcome FROM aggjobs.audit_log ORDER BY id"
                           ).fetchall()
    assert actions == [("token.create", "created"), ("token.create", "refused: name exists"),
                       ("token.revoke", "revoked"),
                       ("token.revoke", "refused: no active token of that name")]


def test_serve_answers_over_real_http(db_url, conn):
    secret, _ = tokens.create(conn, "probe", "viewer", actor="tests")
    with serving({**os.environ, "AGGJOBS_DATABASE_URL": db_url}) as served:
        base = served.base
        assert served.health.status_code == 200 and served.health.json() == {"ok": True}
        assert httpx.get(f"{base}/api/jobs", timeout=5).status_code == 401
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default; aggjobs serve must not
        spoofed = httpx.get(f"{base}/api/rollups", headers={"X-Forwarded-For": "203.0.113.9"},
                            timeout=5)
        assert spoofed.status_code == 401
        # the first anonymous denial of a client in a minute is written at once, the
        # others of that minute counted and written when it closes or the server stops
        assert conn.execute("SELECT target, source FROM aggjobs.audit_log"
                            " WHERE action = 'denied' ORDER BY id").fetchall()[0] == (
            "/api/jobs", "127.0.0.1")
        jobs = httpx.get(f"{base}/api/jobs", headers={"Authorization": f"Bearer {secret}"},
                         timeout=10)
        assert jobs.status_code == 200 and jobs.json()["healthy"] in (True, False)
        page = httpx.get(f"{base}/", params={"token": secret}, timeout=10)
        assert page.status_code == 200 and "hourly_rollup" in page.text
    output = served.output
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert served.proc.returncode in (0, -signal.SIGTERM), output
    denied = conn.execute("SELECT target, source, (params ->> 'count')::int FROM"
                          " aggjobs.audit_log WHERE action = 'denied' ORDER BY id").fetchall()
    assert {source for _, source, _ in denied} == {"127.0.0.1"}
    assert sum(count for _, _, count in denied) == 2 and len(denied) == 2
    assert denied[1][0] == "/api/rollups", denied
    assert "Finished server process" in output, output
    assert "GET /?token=<redacted>" in output, output
    assert secret not in output  # no secret in the access log


def test_a_revoked_name_is_reused_and_a_token_is_rotated_under_its_name(db_url, conn):
    first = aggjobs(db_url, "token", "create", "--name", "oncall", "--role", "operator",
                    "--expires-days", "2").stdout.strip()
    assert aggjobs(db_url, "token", "revoke", "oncall").returncode == 0
    again = aggjobs(db_url, "token", "create", "--name", "oncall", "--role", "operator",
                    "--expires-days", "2")
    assert again.returncode == 0, again.stderr
    second = again.stdout.strip()
    assert tokens.verify(conn, first) is None and tokens.verify(conn, second) == "operator"

    rotated = aggjobs(db_url, "token", "rotate", "oncall")
    assert rotated.returncode == 0, rotated.stderr
    third = rotated.stdout.strip()
    assert third.startswith("agj_") and third != second and "rotated" in rotated.stderr
    assert tokens.verify(conn, second) is None and tokens.verify(conn, third) == "operator"
    live = conn.execute("SELECT role, expires_at - created_at FROM aggjobs.api_tokens"
                        " WHERE name = 'oncall' AND revoked_at IS NULL").fetchall()
    assert len(live) == 1 and live[0][0] == "operator"
    assert abs(live[0][1].total_seconds() - 2 * 86400) < 5  # the same lifetime, from now
    assert conn.execute("SELECT count(*) FROM aggjobs.api_tokens WHERE name = 'oncall'"
                        ).fetchone()[0] == 3

    unknown = aggjobs(db_url, "token", "rotate", "nobody")
    assert unknown.returncode == 2 and "no active token named 'nobody'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    audited = conn.execute("SELECT action, outcome, actor FROM aggjobs.audit_log"
                           " WHERE action = 'token.rotate' ORDER BY id").fetchall()
    assert [(a, o) for a, o, _ in audited] == [
        ("token.rotate", "rotated"), ("token.rotate", "refused: no active token of that name")]
    assert audited[0][2].startswith("cli:") and "@" in audited[0][2]


def test_token_list_never_cuts_a_name_and_has_json(db_url, conn):
    name = "grafana.dashboards.production-eu-west-1." + "x" * 50 + ".end"
    tokens.create(conn, name, "viewer", actor="tests")
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url, "COLUMNS": "60"}
    narrow = subprocess.run([AGGJOBS, "token", "list"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in narrow.stdout
    # folded: the name column's pieces, line after line, spell the whole name
    body = narrow.stdout.splitlines()
    start = next(i for i, line in enumerate(body) if line.strip().startswith("grafana"))
    pieces = [line.split()[0] for line in body[start:] if line.strip()]
    assert "".join(pieces).startswith(name), narrow.stdout
    listed = aggjobs(db_url, "token", "list", "--json")
    [row] = json.loads(listed.stdout)
    assert row["name"] == name and row["role"] == "viewer" and row["active"] is True
    assert "token_hash" not in row and "secret" not in row


def test_the_api_rotates_a_token(client, keys, conn):
    got = client.post("/api/tokens/t-viewer/rotate", headers=auth(keys["admin"]))
    assert got.status_code == 200, got.text
    assert got.json()["name"] == "t-viewer" and got.json()["role"] == "viewer"
    assert tokens.verify(conn, keys["viewer"]) is None
    assert tokens.verify(conn, got.json()["secret"]) == "viewer"
    assert client.post("/api/tokens/nobody/rotate",
                       headers=auth(keys["admin"])).status_code == 404
    assert client.post("/api/tokens/t-admin/rotate",
                       headers=auth(keys["operator"])).status_code == 403
