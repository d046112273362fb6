"""Connections: URL resolution, per-purpose session limits, error translation, and `scalar`
(the one value of a one-row query)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.abc import Params, QueryNoTemplate
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row

from ..errors import DatabaseUnavailable, LockBusy, PrivilegeMissing
from ..settings import Settings, get_settings
from .embedded import embedded_url


def database_url(settings: Settings | None = None) -> str:
    """The configured URL, or the embedded server's (started on demand)."""
    settings = settings or get_settings()
    if settings.database_url:
        return normalize_url(settings.database_url)
    return embedded_url(settings.data_dir)


def read_database_url(settings: Settings | None = None) -> str:
    """Where read-only work may go (the API's reading routes): AGGJOBS_READ_DATABASE_URL, a
    replica, else the primary."""
    settings = settings or get_settings()
    if settings.read_database_url:
        return normalize_url(settings.read_database_url)
    return database_url(settings)


def normalize_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+psycopg://) as well as libpq ones."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        return "postgresql://" + rest
    return url


@dataclass(frozen=True, kw_only=True)
class SessionLimits:
    """What one session may take; applied as startup options at connect time."""

    statement_timeout_ms: int
    lock_timeout_ms: int
    work_mem: str
    idle_in_transaction_timeout_ms: int

    @classmethod
    def from_settings(cls, settings: Settings, job: str | None = None) -> SessionLimits:
        """The defaults, with a job's own statement_timeout if one is configured."""
        return cls(
            statement_timeout_ms=settings.job_statement_timeout_ms.get(
                job or "", settings.statement_timeout_ms
            ),
            lock_timeout_ms=settings.lock_timeout_ms,
            work_mem=settings.work_mem,
            idle_in_transaction_timeout_ms=settings.idle_in_transaction_timeout_ms,
        )

    def options(self) -> str:
        # jit=off: our statements scan an hour or a day, where compiling their many
        # expressions costs more than it saves (0.1-0.3 s of a 1.6 s hourly step once the
        # source is large enough for the planner to cost it past jit_above_cost).
        return (
            f"-c statement_timeout={self.statement_timeout_ms} "
            f"-c lock_timeout={self.lock_timeout_ms} -c work_mem={self.work_mem} "
            f"-c idle_in_transaction_session_timeout={self.idle_in_transaction_timeout_ms} "
            "-c jit=off"
        )


def connect(
    purpose: str,
    *,
    url: str | None = None,
    settings: Settings | None = None,
    autocommit: bool = True,
    limits: SessionLimits | None = None,
) -> psycopg.Connection:
    """A connection named `aggjobs:<purpose>` in pg_stat_activity, with the session limits."""
    settings = settings or get_settings()
    url = url or database_url(settings)
    options = (limits or SessionLimits.from_settings(settings)).options()
    # The URL's own `options` (e.g. `-c default_transaction_read_only=on`) would be replaced
    # by ours: keep them, after ours, so that what the URL says explicitly wins.
    given = conninfo_to_dict(url).get("options")
    if given:
        options = f"{options} {given}"
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            application_name=f"aggjobs:{purpose}",
            options=options,
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors that users can act on into aggjobs errors with one-line reasons."""
    try:
        yield
    except pg_errors.LockNotAvailable as exc:
        raise LockBusy(f"a lock was busy: {first_line(exc)}") from exc
    except pg_errors.InsufficientPrivilege as exc:
        raise PrivilegeMissing(f"the database role lacks a privilege: {first_line(exc)}"
                               ) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database error: {first_line(exc)}") from exc


class NoRow(LookupError):
    """A query that always returns a row (an aggregate, a function call, INSERT ...
    RETURNING) returned none: a bug or a broken schema, not something a user can act on."""


def scalar(conn: psycopg.Connection[Any], query: QueryNoTemplate,
           params: Params | None = None) -> Any:
    """The first value of the one row `query` returns (None for SQL NULL); NoRow if it
    returns no row. Where no row is a legitimate answer, use `fetchone()` and say so."""
    return one_row(conn, query, params)[0]


def one_row(conn: psycopg.Connection[Any], query: QueryNoTemplate,
            params: Params | None = None) -> tuple[Any, ...]:
    """The (first) row `query` returns, as a tuple whatever the connection's row factory;
    NoRow if it returns none."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, params).fetchone()
    if row is None:
        raise NoRow(f"no row returned by: {query_text(conn, query)}")
    return row


def query_text(conn: psycopg.Connection[Any], query: QueryNoTemplate, limit: int = 200) -> str:
    """The start of `query`'s text, for an error message."""
    if isinstance(query, sql.Composable):
        text = query.as_string(conn)
    elif isinstance(query, bytes):
        text = query.decode(errors="replace")
    else:
        text = query
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
