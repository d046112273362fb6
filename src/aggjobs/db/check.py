"""The source tables against the catalog's declarations, checked by `aggjobs migrate`.

The platform owns the sources (docs/contract.md#source-tables): `migrate` creates them only if
missing, so a table made by the platform may lack a column the rollups read, or have it
with another type. Found at migrate time, that is one line listing each problem, and the
migration changes nothing; found later, it was a traceback in every refresh while `status`
said healthy (issue 21).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

import psycopg

from ..catalog import Rollup, Source
from ..catalog.model import Avg, DistinctCount, Quantile, Sum
from ..errors import AggjobsError
from ..sql import query

INTEGERS = frozenset({"int2", "int4", "int8"})
# What a column must be, by what reads it: the types accepted (base types, so a domain over
# one of them passes) and how the message names them.
KINDS: dict[str, tuple[frozenset[str], str]] = {
    # buckets are UTC instants: a timestamp without time zone would follow the TimeZone
    "time": (frozenset({"timestamptz"}), "timestamp with time zone"),
    # keys and dimensions are stored as bigint, and so are the distinct sets
    "integer": (INTEGERS, "smallint, integer or bigint"),
    "number": (INTEGERS | {"numeric", "float4", "float8"}, "a number type"),
    "text": (frozenset(), "a text type"),  # string category or an enum: see `accepts`
}


class SourceMismatch(AggjobsError):
    """A source table lacks a column the rollups read, or has it with another type."""


# Per column, per kind, per rollup: the declaration's fields that read it.
Needs = dict[str, dict[str, dict[str, list[str]]]]


def reads(rollup: Rollup) -> Iterator[tuple[str, str, str]]:
    """(column, kind it must be, the declaration's field that reads it) for one rollup."""
    yield rollup.source.time_column, "time", "source.time_column"
    for dim in rollup.dimensions:
        yield dim, "integer", "dimensions"
    for m in rollup.measures:
        if isinstance(m, DistinctCount):
            yield m.column, "integer", f"measures.{m.name}.column"
        elif isinstance(m, Sum | Avg | Quantile):
            yield m.column, "number", f"measures.{m.name}.column"
        where = getattr(m, "where", None)
        if where is not None:
            yield where.column, "text", f"measures.{m.name}.where.column"


def requirements(rollups: Iterable[Rollup]) -> dict[Source, Needs]:
    """Per source, per column, per kind: the rollups that need the column to be of it, and
    by which of their fields (what a message names, so that the user knows what to fix)."""
    needs: dict[Source, Needs] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for rollup in rollups:
        for column, kind, field in reads(rollup):
            needs[rollup.source][column][kind][rollup.name].append(field)
    return needs


def readers(by_rollup: dict[str, list[str]]) -> str:
    """"execution_metrics (measures.avg_runtime.column, ...), ...": who reads, and where."""
    return ", ".join(f"{name} ({', '.join(dict.fromkeys(fields))})"
                     for name, fields in sorted(by_rollup.items()))


def accepts(kind: str, typname: str, category: str, typtype: str) -> bool:
    if kind == "text":
        return category == "S" or typtype == "e"
    return typname in KINDS[kind][0]


def source_problems(conn: psycopg.Connection, source: Source, needs: Needs) -> list[str]:
    """What is missing or mistyped in one source table, one phrase each."""
    rows = conn.execute(query("source_columns"),
                        {"schema": source.schema, "table": source.table}).fetchall()
    name = f"{source.schema}.{source.table}"
    if not rows or not rows[0][0]:
        users = ", ".join(sorted({r for kinds in needs.values() for by in kinds.values()
                                  for r in by}))
        return [f"{name} does not exist (source {source.name!r} of {users})"]
    found = {col: (typname, category, typtype, shown) for _, col, typname, category, typtype,
             shown in rows if col is not None}
    problems = []
    for column, kinds in needs.items():
        if column not in found:
            every: dict[str, list[str]] = defaultdict(list)
            for by in kinds.values():
                for rollup, fields in by.items():
                    every[rollup] += fields
            problems.append(f"{name}.{column} is missing (read by {readers(every)})")
            continue
        typname, category, typtype, shown = found[column]
        for kind, by in kinds.items():
            if not accepts(kind, typname, category, typtype):
                # the fields that need it of this kind, not every one reading it
                problems.append(f"{name}.{column} is {shown}, must be {KINDS[kind][1]} "
                                f"(read by {readers(by)})")
                break
    return problems


def check_sources(conn: psycopg.Connection, rollups: Iterable[Rollup]) -> None:
    """Raise SourceMismatch listing every column the rollups read that is missing or of
    another type."""
    problems = [p for source, needs in requirements(rollups).items()
                for p in source_problems(conn, source, needs)]
    if problems:
        raise SourceMismatch("the source tables do not match what the rollups read: "
                             + "; ".join(problems)
                             + ". Fix the tables (docs/rollups.md, \"Source tables\"), then run "
                             "`aggjobs migrate` again")
