"""Anonymous denials cannot flood the audit log (issue 21, finding 11: 600 anonymous requests
wrote 600 audit rows in 3 s): one row at once per client, actor and minute, the rest counted
and written as one row when the minute closes, or when the server stops; no count is lost.
Denials of a valid token stay one row each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from aggjobs.api import tokens
from aggjobs.api.app import create_api
from aggjobs.api.denials import MAX_LISTED, MAX_TRACKED, WINDOW_S, Denial, Tally, listed
from aggjobs.settings import Settings
from tests.api.conftest import auth


class Clock:
    """The aggregation's clock, moved by the test instead of waiting a minute."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0 - 1_900_000_000.0 % WINDOW_S + 1

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(settings: Settings):
    return create_api(settings.model_copy(update={"retry_attempts": 1}))


@pytest.fixture
def clock(api) -> Clock:
    api.state.denials.clock = Clock()
    return api.state.denials.clock


def client_at(api, address: str) -> TestClient:
    return TestClient(api, client=(address, 40000))


def denied(conn) -> list[dict]:
    cur = conn.execute("SELECT actor, target, params, outcome, source FROM aggjobs.audit_log"
                       " WHERE action = 'denied' ORDER BY id")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_600_anonymous_requests_write_a_bounded_number_of_rows(api, conn):
    """Real time: the 600 may straddle a minute, so at most two minutes of rows."""
    with client_at(api, "192.0.2.1") as client:
        for i in range(600):
            got = client.get("/api/jobs", headers=auth("agj_wrong") if i % 2 else {})
            assert got.status_code == 401
        during = denied(conn)
        assert 1 <= len(during) <= 3, during
    after = denied(conn)  # the server stopped: the open minute is written too
    assert len(after) <= 4, after
    assert sum(r["params"]["count"] for r in after) == 600
    assert {(r["actor"], r["target"], r["outcome"], r["source"]) for r in after} == {
        ("anonymous", "/api/jobs", "401", "192.0.2.1")}


def test_the_rest_of_a_minute_is_one_row_written_when_it_closes(api, clock, conn):
    a, b = client_at(api, "192.0.2.1"), client_at(api, "192.0.2.2")
    with a, b:
        for path in ["/api/jobs"] * 4 + ["/api/rollups", "/metrics"]:
            assert a.get(path).status_code == 401
        assert a.post("/api/backfills", json={"from": "2026-01-01", "to": "2026-01-02"}
                      ).status_code == 401
        for _ in range(3):
            assert b.get("/api/jobs", headers=auth("agj_wrong")).status_code == 401
        first = denied(conn)
        assert [(r["source"], r["params"]["count"]) for r in first] == [
            ("192.0.2.1", 1), ("192.0.2.2", 1)]
        assert first[0]["params"]["method"] == "GET"

        clock.now += WINDOW_S  # the minute closes; the next denial writes its tallies
        assert b.get("/api/jobs").status_code == 401
        rows = denied(conn)
        assert len(rows) == 5, rows
        by_client = {r["source"]: r for r in rows[2:4]}
        rest_a, rest_b = by_client["192.0.2.1"], by_client["192.0.2.2"]
        assert (rest_a["actor"], rest_a["target"], rest_a["outcome"]) == ("anonymous", "*", "401")
        assert rest_a["params"]["aggregated"] is True and rest_a["params"]["count"] == 6
        assert rest_a["params"]["paths"] == {"/api/jobs": 3, "/api/rollups": 1, "/metrics": 1,
                                             "/api/backfills": 1}
        assert rest_a["params"]["methods"] == {"GET": 5, "POST": 1}
        assert rest_a["params"]["reasons"] == {"no token": 6}
        assert rest_b["target"] == "/api/jobs" and rest_b["params"]["count"] == 2
        assert rest_b["params"]["reasons"] == {"unknown token": 2}
        assert rows[4]["source"] == "192.0.2.2" and rows[4]["params"]["count"] == 1
    assert sum(r["params"]["count"] for r in denied(conn)) == 7 + 3 + 1


def test_any_request_after_the_minute_writes_its_tally(api, clock, conn, keys):
    with client_at(api, "192.0.2.9") as client:
        for _ in range(3):
            assert client.get("/api/rollups").status_code == 401
        assert len(denied(conn)) == 1
        clock.now += WINDOW_S
        assert client.get("/api/jobs", headers=auth(keys["viewer"])).status_code == 200
        rows = denied(conn)
        assert [r["params"]["count"] for r in rows] == [1, 2]


def test_each_actor_has_its_own_tally(api, clock, conn, keys):
    with client_at(api, "192.0.2.3") as client:
        for secret in ("wrong", "revoked", "wrong", "revoked", None):
            headers = auth(keys[secret]) if secret else {}
            assert client.get("/api/jobs", headers=headers).status_code == 401
    rows = denied(conn)
    assert sorted((r["actor"], r["params"]["count"]) for r in rows) == [
        ("anonymous", 1), ("anonymous", 2), ("t-revoked", 1), ("t-revoked", 1)]


def test_denials_of_a_valid_token_are_one_row_each(api, clock, conn, keys):
    with client_at(api, "192.0.2.4") as client:
        for _ in range(3):
            assert client.get("/api/tokens", headers=auth(keys["viewer"])).status_code == 403
    rows = denied(conn)
    assert [(r["actor"], r["outcome"], r["params"]["count"]) for r in rows] == [
        ("t-viewer", "403", 1)] * 3


@pytest.fixture
def keys(conn) -> Iterator[dict[str, str]]:
    made = {"viewer": tokens.create(conn, "t-viewer", "viewer", actor="tests")[0],
            "revoked": tokens.create(conn, "t-revoked", "viewer", actor="tests")[0],
            "wrong": tokens.new_secret()}
    tokens.revoke(conn, "t-revoked", actor="tests")
    yield made


def test_a_tally_stays_bounded_whatever_the_paths():
    tally = Tally(0)
    for i in range(MAX_TRACKED + 500):
        tally.add(Denial(actor="anonymous", target=f"/api/jobs/j{i}/runs", method="GET",
                         needs="viewer", reason="no token", client="192.0.2.5", status=401),
                  float(i))
    assert tally.count == MAX_TRACKED + 500 and len(tally.paths) == MAX_TRACKED + 1
    paths = listed(tally.paths)
    assert len(paths) <= MAX_LISTED + 1 and sum(paths.values()) == tally.count
    assert paths["(others)"] == tally.count - (len(paths) - 1)
