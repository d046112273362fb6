"""SQL: generated from the catalog (`rollup`) and static named queries (`queries.sql`)."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from psycopg import sql

# The version of extension aggjobs_native (native/, docs/native.md) whose functions this
# code's SQL calls: the control file's default_version (tests/unit/test_package.py checks).
NATIVE_VERSION = "1.5"

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


QUERY_FILES = ("queries.sql", "jobs.sql", "view_caches.sql", "roles.sql", "definitions.sql",
               "migrate.sql", "tokens.sql", "demo.sql", "liveness.sql", "citus.sql")


@cache
def queries() -> dict[str, str]:
    """Named static queries: each block of the .sql files below under a `-- name: x`
    header. Each file is split on its own, so that a file's opening comment never ends the
    last block of the one before (a placeholder in it would be taken for a parameter)."""
    found: dict[str, str] = {}
    for name in QUERY_FILES:
        blocks = named(files(__package__).joinpath(name).read_text())
        if twice := blocks.keys() & found.keys():
            raise ValueError(f"{name}: queries named again: {', '.join(sorted(twice))}")
        found.update(blocks)
    return found


def named(text: str) -> dict[str, str]:
    """The blocks of `text` under `-- name: x` headers (what precedes the first is a comment)."""
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def with_merges(blocks: dict[str, str], name: str, *, native: bool) -> sql.Composed:
    """Block `name` with each `{x}` in it replaced by block `x__native` (the C aggregate of
    aggjobs_native, docs/native.md) or `x__portable` (the same numbers in SQL)."""
    suffix = "native" if native else "portable"
    text = blocks[name]
    return sql.SQL(text).format(**{
        x: sql.SQL(blocks[f"{x}__{suffix}"]) for x in _PLACEHOLDER.findall(text)})


def query(name: str) -> sql.SQL:
    return sql.SQL(queries()[name])


def native_query(name: str) -> sql.Composed:
    """A query about extension aggjobs_native, with `{native_version}` in it composed as
    NATIVE_VERSION (a literal: ALTER EXTENSION ... UPDATE TO takes no parameter)."""
    return query(name).format(native_version=sql.Literal(NATIVE_VERSION))
