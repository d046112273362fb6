"""Real PostgreSQL for every test: AGGJOBS_TEST_DATABASE_URL, else the embedded server.

Each test gets its own database copied from a migrated template (CREATE DATABASE ...
TEMPLATE is a file copy: milliseconds), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aggjobs.db.embedded import embedded_url
from aggjobs.db.migrate import migrate
from aggjobs.settings import Settings
from tests.platform import create_partitioned_sources

EMBEDDED_DIR = Path(tempfile.gettempdir()) / "aggjobs-test-embedded"

# Importing the Celery app builds its broker URL; unset, that is the embedded broker, which
# would start a server in the working directory. Tests name their broker explicitly.
os.environ.setdefault("AGGJOBS_BROKER_URL", "memory://")
# A test database has never seen a worker nor a scheduler, which `aggjobs status` reports as
# problems (docs/jobs.md, "Liveness"): off unless a test turns it on (tests/celery/
# test_liveness.py). Processes started with a cleaned environment have it on.
os.environ.setdefault("AGGJOBS_LIVENESS_SECONDS", "0")


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def server_url() -> str:
    """A URL of the server under test, connected to its maintenance database."""
    url = os.environ.get("AGGJOBS_TEST_DATABASE_URL") or embedded_url(EMBEDDED_DIR)
    return with_dbname(url, "postgres")


def admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(server_url, autocommit=True, application_name="aggjobs:tests")


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """A database whose sessions have jit off, as the jobs' have (db/connect.py): the tests'
    own connections run engine statements too, and JIT-compiled each of them (the planner
    costs them past jit_above_cost: a refresh of 288 rows over 728 hours took 46 s, not 0.5)."""
    with admin(server_url) as conn:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(stmt)
        conn.execute(sql.SQL("ALTER DATABASE {} SET jit = off").format(sql.Identifier(name)))
    return with_dbname(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def migrated_template(server_url: str, name: str,
                      prepare: Callable[[psycopg.Connection], None] | None = None
                      ) -> Iterator[str]:
    """A database `prepare`d (as the platform may have it), then migrated; dropped after."""
    drop_database(server_url, name)
    url = create_database(server_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        if prepare:
            prepare(conn)
        migrate(conn)
    yield name
    drop_database(server_url, name)


def copy_of(server_url: str, template: str, prefix: str) -> Iterator[str]:
    """A fresh copy of `template` for one test; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=template)
    yield url
    drop_database(server_url, name)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    yield from migrated_template(server_url, f"aggjobs_tpl_{os.getpid()}")


@pytest.fixture(scope="module")
def module_conn(server_url: str, template_db: str) -> Iterator[psycopg.Connection]:
    """A connection to one copy of the template shared by a module's tests (hypothesis
    examples cannot use function-scoped fixtures); the copy is dropped after."""
    copies = copy_of(server_url, template_db, "aggjobs_m")
    url = next(copies)
    try:
        with psycopg.connect(url, autocommit=True, application_name="aggjobs:tests") as conn:
            yield conn
    finally:
        next(copies, None)


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    yield from copy_of(server_url, template_db, "aggjobs_t")


# Partitioned sources (docs/rollups.md): a partition per UTC day over these days, and a
# default partition, in the template below.
PARTITIONS_FROM = datetime(2026, 2, 28, tzinfo=UTC)
PARTITION_DAYS = 20


@pytest.fixture(scope="session")
def partitioned_template_db(server_url: str) -> Iterator[str]:
    """A template whose three sources were created partitioned by day before `migrate`."""
    yield from migrated_template(
        server_url, f"aggjobs_tplp_{os.getpid()}",
        lambda conn: create_partitioned_sources(conn, PARTITIONS_FROM, PARTITION_DAYS))


@pytest.fixture
def partitioned_db_url(server_url: str, partitioned_template_db: str) -> Iterator[str]:
    """Like db_url, with partitioned sources; a module uses it for every fixture built on
    db_url by overriding db_url with it."""
    yield from copy_of(server_url, partitioned_template_db, "aggjobs_tp")


@pytest.fixture
def settings(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AGGJOBS_DATABASE_URL", db_url)
    return Settings(database_url=db_url)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True, application_name="aggjobs:tests") as c:
        yield c
