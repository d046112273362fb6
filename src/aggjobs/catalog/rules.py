"""What makes a declaration valid, checked where it is made (no database needed).

Each problem is one phrase, `<field>: <what is wrong>`, so that `aggjobs migrate` can say in
one line which declaration and which field to fix. What only the database can tell (does
the column exist, is it of the right type) is checked by `aggjobs migrate` (db/check.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .grains import Grain
from .model import Count, Difference, Quantile, Rollup, Source, Sum

# Unquoted lower-case SQL names: what the platform's tables use, and what needs no quoting
# in the queries a user writes against the rollups.
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_ROLLUP_NAME = 40  # room for "_hourly" and a retired version's "__v123" in 63 bytes
MAX_MEASURE_NAME = 50  # room for the state columns' suffixes ("__counts")
GRAIN_CHAINS = ((Grain.HOUR,), (Grain.HOUR, Grain.DAY), (Grain.HOUR, Grain.DAY, Grain.WEEK))
RESERVED_COLUMNS = frozenset({"updated_at", *(g.column for g in Grain)})


def name_problem(field: str, value: object, longest: int = 63) -> str | None:
    if not isinstance(value, str) or not NAME.match(value):
        return f"{field}: {value!r} is not a lower-case SQL name (a-z, 0-9, _)"
    if len(value) > longest:
        return f"{field}: {value!r} is longer than {longest} characters"
    return None


def source_problems(source: Source) -> list[str]:
    fields = ("name", "schema", "table", "time_column", "key_column")
    return [p for f in fields if (p := name_problem(f"source.{f}", getattr(source, f)))]


def grain_problems(grains: object) -> list[str]:
    if not isinstance(grains, tuple) or not grains:
        return ["grains: must be a tuple of Grain, e.g. (Grain.HOUR, Grain.DAY)"]
    unknown = [g for g in grains if not isinstance(g, Grain)]
    if unknown:
        return [f"grains: unsupported grain {unknown[0]!r} (supported: Grain.HOUR, Grain.DAY, "
                "Grain.WEEK)"]
    if grains not in GRAIN_CHAINS:
        shown = ", ".join(g.value for g in grains)
        return [f"grains: ({shown}) is unsupported: the hour, then optionally the day, then "
                "optionally the week (each grain is merged from the one before)"]
    return []


def measure_problems(rollup: Rollup) -> list[str]:
    out: list[str] = []
    seen: dict[str, object] = {}
    for m in rollup.measures:
        field = f"measures.{getattr(m, 'name', '?')}"
        if p := name_problem(field, getattr(m, "name", None), MAX_MEASURE_NAME):
            out.append(p)
        elif "__" in m.name:
            out.append(f"{field}: a measure name may not contain '__' (state columns use it)")
        elif m.name in seen:
            out.append(f"{field}: the name is used twice")
        elif m.name in RESERVED_COLUMNS or m.name in rollup.dimensions:
            out.append(f"{field}: the name is a column of every rollup table or a dimension")
        for attr in ("column",):
            if hasattr(m, attr) and (p := name_problem(f"{field}.{attr}", getattr(m, attr))):
                out.append(p)
        where = getattr(m, "where", None)
        if where is not None:
            if p := name_problem(f"{field}.where.column", where.column):
                out.append(p)
            if not isinstance(where.value, str):
                out.append(f"{field}.where.value: must be a string (compared as the column's "
                           "type)")
        if isinstance(m, Quantile) and not (isinstance(m.q, float | int) and 0 < m.q < 1):
            out.append(f"{field}.q: {m.q!r} must be a number strictly between 0 and 1")
        if isinstance(m, Difference):
            for attr in ("minuend", "subtrahend"):
                ref = getattr(m, attr)
                if not isinstance(seen.get(ref), Count | Sum):
                    out.append(f"{field}.{attr}: {ref!r} must name a Count or Sum declared "
                               "before it")
        seen[getattr(m, "name", "?")] = m
    if not rollup.measures:
        out.append("measures: at least one measure")
    return out


def rollup_problems(rollup: Rollup) -> list[str]:
    """Everything wrong with one declaration, each as `<field>: <problem>`."""
    out = [p for p in (name_problem("name", rollup.name, MAX_ROLLUP_NAME),) if p]
    if not isinstance(rollup.source, Source):
        return out + ["source: must be a Source (e.g. AGENT_RUNS)"]
    if rollup.schema != "analytics":
        out.append(f"schema: {rollup.schema!r}: rollups live in schema analytics")
    out += source_problems(rollup.source)
    out += grain_problems(rollup.grains)
    dims = rollup.dimensions
    if not isinstance(dims, tuple) or dims[:1] != (rollup.source.key_column,):
        out.append(f"dimensions: must start with the source's key column "
                   f"{rollup.source.key_column!r}")
    else:
        out += [p for d in dims if (p := name_problem(f"dimensions.{d}", d))]
        if len(set(dims)) != len(dims):
            out.append("dimensions: a dimension is listed twice")
    if not isinstance(rollup.measures, tuple):
        return out + ["measures: must be a tuple of measures"]
    return out + measure_problems(rollup)


def catalog_problems(builtin: Iterable[Rollup], declared: Iterable[Rollup]) -> list[str]:
    """Clashes between declarations: a rollup name used twice, one source name or one table
    declared as two different sources (each source table has one set of tracking triggers)."""
    out = []
    names: dict[str, str] = {r.name: "a built-in rollup" for r in builtin}
    sources: dict[str, Source] = {}
    tables: dict[tuple[str, str], Source] = {}
    for r in builtin:
        sources[r.source.name] = r.source
        tables[(r.source.schema, r.source.table)] = r.source
    for r in declared:
        if r.name in names:
            out.append(f"rollup {r.name!r}: name: already used by {names[r.name]}")
        names[r.name] = "another declared rollup"
        src = r.source
        known = sources.get(src.name) or tables.get((src.schema, src.table))
        if known is not None and known != src:
            out.append(f"rollup {r.name!r}: source: {src.name!r} on {src.schema}.{src.table} "
                       f"clashes with source {known.name!r} on {known.schema}.{known.table} "
                       "(declare one Source per table and reuse it, e.g. AGENT_RUNS)")
        sources.setdefault(src.name, src)
        tables.setdefault((src.schema, src.table), src)
    return out
