"""The live views (sql/live.py) made by `aggjobs migrate`, and kept in step with the
definitions: made again when their SQL changes (each view's comment holds its digest),
dropped before their rollup's tables change in place, and handed, for a version being
rebuilt, to the swap that makes them over the new tables (migration 0015).
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..catalog import Grain, Rollup
from ..sql import live, native_query, query
from .connect import scalar


def bodies(conn: psycopg.Connection, rollup: Rollup) -> list[dict[str, str]]:
    """Per grain, in order: the view's name, the SQL after `CREATE VIEW ... AS`, and the
    comment that identifies it. With the C functions where they are installed: the SQL, so
    the digest, changes when they come or go."""
    native = bool(scalar(conn, native_query("native_installed")))
    out = []
    for grain in rollup.grains:
        body = live.body(rollup, grain, native=native).as_string(conn)
        digest = hashlib.sha256(body.encode()).hexdigest()[:16]
        out.append({"name": live.view_name(rollup, grain), "sql": body,
                    "comment": f"aggjobs live view {digest}"})
    return out


def comments(conn: psycopg.Connection, schema: str) -> dict[str, str | None]:
    return dict(conn.execute(query("live_view_comments"), (schema,)).fetchall())


def drop(conn: psycopg.Connection, rollup: str, schema: str = "analytics") -> None:
    """Drop a live rollup's views, the coarsest first (each reads the one finer)."""
    for grain in reversed(Grain):
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(
            sql.Identifier(schema, live.view_name_of(rollup, grain))))


def sync(conn: psycopg.Connection, rollups: list[Rollup]) -> None:
    """Make the live rollups' views whose SQL is missing or changed (all of a rollup's,
    since the coarser read the finer)."""
    existing = comments(conn, "analytics")
    for rollup in rollups:
        wanted = bodies(conn, rollup)
        if all(existing.get(v["name"]) == v["comment"] for v in wanted):
            continue
        drop(conn, rollup.name)
        for grain, v in zip(rollup.grains, wanted, strict=True):
            ident = live.view_ident(rollup, grain)
            conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(ident, sql.SQL(v["sql"])))
            conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(
                ident, sql.Literal(v["comment"])))


def hand_over(conn: psycopg.Connection, declared: Rollup, version: int) -> None:
    """Record the live views of a version being rebuilt, for its swap."""
    conn.execute(
        query("hand_over_live_views"),
        (Jsonb(bodies(conn, declared)), declared.name, version))
