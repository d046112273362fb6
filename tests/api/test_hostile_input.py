"""Hostile input never makes the API answer 500 (issue 21, finding 5 and 11): non-finite
numbers (`NaN`, `Infinity`, `-Infinity`, which Python's JSON parser accepts) and times
outside the supported range are 422; a 422 never echoes more than a bounded part of what
it refuses; a body over the limit is 413 before anything reads it."""

from __future__ import annotations

import json

import pytest

from aggjobs.api.errors import MAX_BODY_BYTES, MAX_ECHO_CHARS, MAX_ERRORS

from .conftest import auth

RUN = "/api/jobs/hourly_rollup/run"
NON_FINITE = ["NaN", "Infinity", "-Infinity"]
# timestamps outside [1970, 2200) UTC, or whose offset overflows Python's datetime
OUT_OF_RANGE = ["0001-01-01T00:00+01:00", "9999-12-31T23:59-23:59", "10000-01-01",
                "1969-12-31T23:59:59Z", "2200-01-01T00:00Z", "0001-01-01"]


def post_raw(client, path: str, text: str, secret: str):
    return client.post(path, content=text.encode(),
                       headers={**auth(secret), "Content-Type": "application/json"})


def strict(constant: str):
    raise AssertionError(f"the answer holds a bare {constant}: not JSON")


def nothing_was_done(conn) -> bool:
    return conn.execute(
        "SELECT (SELECT count(*) FROM aggjobs.job_runs) + (SELECT count(*) FROM"
        " aggjobs.backfills) + (SELECT count(*) FROM aggjobs.api_tokens WHERE name = 'nan')"
    ).fetchone()[0] == 0


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize("path,role,template", [
    (RUN, "operator", '{"as_of": %s}'),
    ("/api/cleanup", "admin", '{"as_of": %s}'),
    ("/api/backfills", "operator", '{"from": %s, "to": "2026-01-02"}'),
    ("/api/backfills", "operator", '{"rollups": [%s], "from": "2026-01-01", "to": "2026-01-02"}'),
    ("/api/tokens", "admin", '{"name": "nan", "role": "viewer", "expires_days": %s}'),
])
def test_non_finite_numbers_are_422(client, keys, conn, number, path, role, template):
    got = post_raw(client, path, template % number, keys[role])
    assert got.status_code == 422, got.text
    # strict JSON (no bare NaN): the refused number is echoed as a string
    detail = json.loads(got.text, parse_constant=strict)["detail"]
    assert any(e.get("input") == number for e in detail), detail
    assert nothing_was_done(conn)


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_times_out_of_range_are_422(client, keys, conn, text):
    since = client.get("/api/jobs/hourly_rollup/runs", params={"since": text},
                       headers=auth(keys["viewer"]))
    run = client.post(RUN, json={"as_of": text}, headers=auth(keys["operator"]))
    backfill = client.post("/api/backfills", json={"from": text, "to": "2026-01-02"},
                           headers=auth(keys["operator"]))
    for got in (since, run, backfill):
        assert got.status_code == 422, got.text
        detail = got.json()["detail"]
        assert "\n" not in detail and ("outside the supported times" in detail
                                       or "cannot parse timestamp" in detail), detail
    assert nothing_was_done(conn)


def test_times_at_the_edges_of_the_range_are_accepted(client, keys):
    for since in ("1970-01-01T00:00Z", "2199-12-31T23:59:59Z"):
        got = client.get("/api/jobs/hourly_rollup/runs", params={"since": since},
                         headers=auth(keys["viewer"]))
        assert got.status_code == 200, got.text


def test_a_422_echoes_a_bounded_part_of_the_input(client, keys):
    long = "2026-01-01" + "9" * 60_000  # under the body limit, over the field's 64
    got = client.post(RUN, json={"as_of": long}, headers=auth(keys["operator"]))
    assert got.status_code == 422, got.text
    assert len(got.content) < 4 * MAX_ECHO_CHARS
    [error] = got.json()["detail"]
    assert error["type"] == "string_too_long" and error["loc"] == ["body", "as_of"]
    assert error["input"].startswith("2026-01-01999") and "60010 characters" in error["input"]

    query = client.get("/api/jobs/hourly_rollup/runs", params={"since": "x" * 10_000},
                       headers=auth(keys["viewer"]))
    assert query.status_code == 422 and len(query.content) < 4 * MAX_ECHO_CHARS


def test_a_422_lists_a_bounded_number_of_errors(client, keys):
    body = {"from": "2026-01-01", "to": "2026-01-02",
            **{f"k{'x' * 500}{i}": "v" * 20 for i in range(100)}}
    got = client.post("/api/backfills", json=body, headers=auth(keys["operator"]))
    assert got.status_code == 422, got.text
    detail = got.json()["detail"]
    assert len(detail) == MAX_ERRORS + 1
    assert detail[-1]["msg"] == f"{100 - MAX_ERRORS} more errors not shown"
    assert all(len(str(loc)) <= MAX_ECHO_CHARS + 40 for e in detail for loc in e["loc"])
    assert len(got.content) < (MAX_ERRORS + 1) * 3 * MAX_ECHO_CHARS


def test_a_body_over_the_limit_is_413(client, keys, conn):
    huge = json.dumps({"as_of": "x" * 20_000_000})
    got = post_raw(client, RUN, huge, keys["operator"])
    assert got.status_code == 413 and len(got.content) < 200, got.text[:200]

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"as_of": "'
        for _ in range(MAX_BODY_BYTES // 1000 + 1):
            yield b"x" * 1000
        yield b'"}'

    streamed = client.post(RUN, content=chunks(), headers={
        **auth(keys["operator"]), "Content-Type": "application/json"})
    assert streamed.status_code == 413, streamed.text[:200]
    at_limit = post_raw(client, RUN, json.dumps({"as_of": "y" * (MAX_BODY_BYTES - 20)}),
                        keys["operator"])
    assert at_limit.status_code == 422  # read, and refused by the field's own limit
    assert nothing_was_done(conn)
