"""The platform's own writing role: the tracking triggers' function runs as the caller, so
the role that writes the source tables needs INSERT on aggjobs.invalidation_log (and USAGE
on the schema) as docs/security.md says; writes ahead of the threshold need nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from tests import platform as p

from .conftest import as_user

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def writer(db_url: str) -> Iterator[tuple[str, str]]:
    """(role name, URL) of a login role that may write public.agent_runs, nothing else."""
    name = f"aggjobs_t_platform_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
        admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.agent_runs TO {}"
                              ).format(role))
    yield name, as_user(db_url, name)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE usename = %s", (name,))
        admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
        admin.execute(sql.SQL("DROP ROLE {}").format(role))


def logged(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM aggjobs.invalidation_log").fetchone()[0]


def test_late_writes_need_the_documented_grant(conn, writer):
    name, url = writer
    conn.execute("SELECT aggjobs.move_tracking_threshold('agent_runs', %s)", (NOW,))
    with psycopg.connect(url, autocommit=True) as platform:
        p.run(platform, ws=1, at=NOW + timedelta(minutes=5))  # ahead: no trigger runs
        with pytest.raises(pg_errors.InsufficientPrivilege):
            p.run(platform, ws=1, at=NOW - timedelta(hours=2))  # late: the trigger logs it
        assert logged(conn) == 0

        # the GRANT of docs/security.md
        role = sql.Identifier(name)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA aggjobs TO {}").format(role))
        conn.execute(sql.SQL("GRANT INSERT ON aggjobs.invalidation_log TO {}").format(role))
        late = p.run(platform, ws=1, at=NOW - timedelta(hours=2))
        platform.execute("UPDATE agent_runs SET workspace_id = 2 WHERE id = %s", (late,))
        platform.execute("DELETE FROM agent_runs WHERE id = %s", (late,))
        assert logged(conn) == 4  # insert, update (old and new group), delete
        # and nothing more: it cannot read or rewrite the log
        with pytest.raises(pg_errors.InsufficientPrivilege):
            platform.execute("SELECT count(*) FROM aggjobs.invalidation_log")
        with pytest.raises(pg_errors.InsufficientPrivilege):
            platform.execute("DELETE FROM aggjobs.invalidation_log")
