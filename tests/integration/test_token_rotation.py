"""Token names and rotation under concurrency, on a real PostgreSQL (migration 0017): a name
is unique among the tokens not revoked, and a rotation is one transaction."""

from __future__ import annotations

import threading

import psycopg
import pytest

from aggjobs.api import tokens
from aggjobs.operations.tokens import TokenExists, UnknownToken


def test_a_rotation_racing_another_waits_then_is_refused(db_url, conn) -> None:
    first, _ = tokens.create(conn, "oncall", "operator", actor="tests")
    outcome: list[object] = []
    with psycopg.connect(db_url) as holder:  # a rotation in progress, not committed yet
        holder.execute("SELECT aggjobs.rotate_token('oncall', repeat('b', 64), 'tests', 't')")
        with psycopg.connect(db_url, autocommit=True) as other:

            def rotate() -> None:
                try:
                    outcome.append(tokens.rotate(other, "oncall", actor="racer")[0])
                except UnknownToken as exc:
                    outcome.append(exc)

            racer = threading.Thread(target=rotate)
            racer.start()
            racer.join(timeout=1)
            assert racer.is_alive()  # waiting on the row lock
            holder.commit()
            racer.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], UnknownToken), outcome
    live = conn.execute("SELECT token_hash FROM aggjobs.api_tokens"
                        " WHERE name = 'oncall' AND revoked_at IS NULL").fetchall()
    assert live == [("b" * 64,)]  # one live token: the first rotation's
    assert tokens.verify(conn, first) is None


def test_a_name_is_unique_among_live_tokens_only(conn) -> None:
    tokens.create(conn, "ci", "viewer", actor="tests")
    with pytest.raises(TokenExists):
        tokens.create(conn, "ci", "admin", actor="tests")
    tokens.revoke(conn, "ci", actor="tests")
    secret, row = tokens.create(conn, "ci", "admin", actor="tests")
    assert row["role"] == "admin" and tokens.verify(conn, secret) == "admin"
    with pytest.raises(psycopg.errors.UniqueViolation):  # even bypassing the function
        conn.execute("INSERT INTO aggjobs.api_tokens (name, role, token_hash, created_by)"
                     " VALUES ('ci', 'viewer', repeat('c', 64), 'tests')")
