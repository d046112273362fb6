"""A rollup's rows as a reader asks for them (`aggjobs rows`, GET
/api/rollups/{rollup}/{grain}/rows): one grain, buckets starting in [from, to), one workspace
or all, from the table or from its live view (docs/rollups.md, "Live reads"), a page at a
time. The outputs only: the sketches and sets kept for merging are not a reader's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ..catalog import Grain, Rollup
from ..catalog.grains import as_utc
from ..db import definitions
from ..errors import InvalidRange
from ..sql import live
from ..sql import rollup as rollup_sql

DEFAULT_SPAN = {Grain.HOUR: timedelta(days=1), Grain.DAY: timedelta(days=7),
                Grain.WEEK: timedelta(weeks=4)}


@dataclass(frozen=True)
class RowsPage:
    rollup: str
    grain: str
    live: bool
    from_: datetime
    to: datetime
    workspace: int | None
    columns: list[str]
    rows: list[dict[str, Any]]
    next_offset: int | None  # where the next page starts (None: this was the last)


def default_range(grain: Grain, lo: datetime | None, hi: datetime | None,
                  now: datetime) -> tuple[datetime, datetime]:
    """[from, to): to defaults to now, from to a grain's usual window before to."""
    hi = as_utc(hi) if hi is not None else now
    return (as_utc(lo) if lo is not None else hi - DEFAULT_SPAN[grain]), hi


def check_range(lo: datetime, hi: datetime, max_days: float) -> None:
    if lo >= hi:
        raise InvalidRange(f"from {lo.isoformat()} must be before to {hi.isoformat()}")
    if max_days and hi - lo > timedelta(days=max_days):
        raise InvalidRange(f"the range is {(hi - lo) / timedelta(days=1):g} days, more than "
                           f"AGGJOBS_MAX_ROWS_DAYS ({max_days:g}): ask for less, a page of "
                           "days at a time")


def output_columns(rollup: Rollup, grain: Grain) -> list[str]:
    return [*rollup.dimensions, grain.column, *rollup_sql.output_names(rollup), "updated_at"]


def select(rollup: Rollup, grain: Grain, *, live_view: bool, workspace: int | None
           ) -> sql.Composed:
    relation = (live.view_ident(rollup, grain) if live_view
                else rollup_sql.table_ident(rollup, grain))
    col = sql.Identifier(grain.column)
    where = sql.SQL("{0} >= %(lo)s AND {0} < %(hi)s").format(col)
    if workspace is not None:
        where = sql.SQL("{} AND {} = %(ws)s").format(
            where, sql.Identifier(rollup.source.key_column))
    order = [grain.column, *rollup.dimensions]
    return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT %(limit)s OFFSET %(offset)s"
                   ).format(sql.SQL(", ").join(map(sql.Identifier, output_columns(rollup, grain))),
                            relation, where,
                            sql.SQL(", ").join(sql.SQL("{} NULLS FIRST").format(sql.Identifier(c))
                                               for c in order))


def bounds(grain: Grain, lo: datetime, hi: datetime) -> dict[str, datetime | date]:
    """The bucket column's bounds for buckets starting in [lo, hi): the first bucket start
    at or after each (a date for the day and the week)."""
    first = [grain.ceil(lo), grain.ceil(hi)]
    values = [b.date() for b in first] if grain is not Grain.HOUR else first
    return {"lo": values[0], "hi": values[1]}


def read_rows(conn: psycopg.Connection, rollup: Rollup, grain: Grain, *, lo: datetime,
              hi: datetime, workspace: int | None = None, live_view: bool = False,
              limit: int = 1000, offset: int = 0, max_days: float = 31) -> RowsPage:
    """A page of the rollup's rows at `grain` with buckets starting in [lo, hi), under the
    definition its tables were built with (DefinitionsChanged if migrate has not run)."""
    if grain not in rollup.grains:
        known = ", ".join(g.value for g in rollup.grains)
        raise InvalidRange(f"rollup {rollup.name} has no {grain.value} grain (it has: {known})")
    check_range(lo, hi, max_days)
    built = definitions.versions(conn, rollup).live
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(select(built, grain, live_view=live_view, workspace=workspace), {
            **bounds(grain, lo, hi), "ws": workspace, "limit": limit + 1, "offset": offset,
        }).fetchall()
    more = len(rows) > limit
    return RowsPage(rollup.name, grain.value, live_view, lo, hi, workspace,
                    output_columns(built, grain), rows[:limit],
                    offset + limit if more else None)
