"""Login roles made per test, members of aggjobs_worker or aggjobs_reader, and connections
as them (trust authentication: a user name is enough)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def as_user(url: str, user: str) -> str:
    params = conninfo_to_dict(url)
    params["user"] = user
    params.pop("password", None)
    return make_conninfo(**params)


@pytest.fixture
def login_role(db_url: str) -> Iterator[Callable[[str], str]]:
    """make(group) -> the URL of the test database for a new LOGIN role in `group`; the
    roles are dropped at teardown (roles are cluster-wide)."""
    made: list[str] = []

    def make(group: str) -> str:
        name = f"aggjobs_t_{group.removeprefix('aggjobs_')}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(group)))
        made.append(name)
        return as_user(db_url, name)

    yield make
    with psycopg.connect(db_url, autocommit=True) as admin:
        for name in made:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,))
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def worker_url(login_role) -> str:
    return login_role("aggjobs_worker")


@pytest.fixture
def reader_url(login_role) -> str:
    return login_role("aggjobs_reader")


@pytest.fixture
def worker(worker_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(worker_url, autocommit=True) as c:
        yield c


@pytest.fixture
def reader(reader_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(reader_url, autocommit=True) as c:
        yield c
