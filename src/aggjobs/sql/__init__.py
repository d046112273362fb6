"""SQL: generated from the catalog (`rollup`) and static named queries (`queries.sql`)."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from psycopg import sql

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Named static queries: each block of queries.sql, jobs.sql and view_caches.sql under a
    `-- name: x` header."""
    return named("\n".join(
        files(__package__).joinpath(name).read_text()
        for name in ("queries.sql", "jobs.sql", "view_caches.sql")
    ))


def named(text: str) -> dict[str, str]:
    """The blocks of `text` under `-- name: x` headers (what precedes the first is a comment)."""
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> sql.SQL:
    return sql.SQL(queries()[name])  # type: ignore[arg-type]
