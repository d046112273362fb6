"""A rollup's definition as stored data: a canonical description, its fingerprint, and what
differs between two of them (docs/rollups.md, "Changing a rollup").

The description holds what decides the tables' contents and nothing else: the description
text and the order of the measures (columns are addressed by name) are left out, so that
changing them is no change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from .grains import Grain
from .model import (
    Avg,
    Count,
    Difference,
    DistinctCount,
    Filter,
    Measure,
    Quantile,
    Rollup,
    Source,
    Sum,
)

MEASURE_KINDS: dict[str, type[Measure]] = {cls.__name__.lower(): cls for cls in (
    Count, Sum, Avg, Quantile, DistinctCount, Difference)}

Description = dict[str, Any]


def describe_measure(m: Measure) -> Description:
    out: Description = {"kind": type(m).__name__.lower()}
    for f in fields(m):
        value = getattr(m, f.name)
        out[f.name] = {"column": value.column, "value": value.value} if isinstance(
            value, Filter) else value
    return out


def describe(rollup: Rollup) -> Description:
    """The canonical description of what the rollup's tables hold (JSON-able)."""
    src = rollup.source
    return {
        "name": rollup.name,
        "schema": rollup.schema,
        "source": {"name": src.name, "schema": src.schema, "table": src.table,
                   "time_column": src.time_column, "key_column": src.key_column},
        "dimensions": list(rollup.dimensions),
        "grains": [g.value for g in rollup.grains],
        "measures": sorted((describe_measure(m) for m in rollup.measures),
                           key=lambda d: d["name"]),
    }


def fingerprint(description: Description) -> str:
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_from(d: Description) -> Measure:
    args = {k: v for k, v in d.items() if k != "kind"}
    if isinstance(args.get("where"), dict):
        args["where"] = Filter(**args["where"])
    return MEASURE_KINDS[d["kind"]](**args)


def rollup_from(d: Description, *, order: tuple[str, ...] = ()) -> Rollup:
    """The Rollup a stored description was made from. Measures come back by name; a
    Difference after the measures it reads (`order`: names to put first, as declared)."""
    measures = [measure_from(m) for m in d["measures"]]
    rank = {name: i for i, name in enumerate(order)}
    measures.sort(key=lambda m: (0, rank[m.name]) if m.name in rank
                  else (1, isinstance(m, Difference)))
    return Rollup(
        name=d["name"], schema=d["schema"], source=Source(**d["source"]),
        dimensions=tuple(d["dimensions"]), grains=tuple(Grain(g) for g in d["grains"]),
        measures=tuple(measures),
    )


# ---------------------------------------------------------------------------- differences

# What a change costs: these need the raw rows read again; the others are done on the tables
# as they are (a dropped column, a grain merged from the finer one, a table retired).
REBUILDS = frozenset({"measure added", "measure changed", "filter changed", "dimensions",
                      "source", "schema", "tables"})


@dataclass(frozen=True)
class Change:
    kind: str  # "measure added", "measure removed", "grain added", ... (see REBUILDS)
    text: str  # what a user reads in the plan

    @property
    def rebuilds(self) -> bool:
        return self.kind in REBUILDS


def shown_filter(where: Description | None) -> str:
    return "no filter" if where is None else f"{where['column']} = {where['value']!r}"


def measure_changes(name: str, old: Description, new: Description) -> list[Change]:
    if old["kind"] != new["kind"]:
        return [Change("measure changed", f"measure {name} changed: {old['kind']} -> "
                                          f"{new['kind']}")]
    out = []
    if old.get("where") != new.get("where"):
        out.append(Change("filter changed", f"filter of {name} changed: "
                          f"{shown_filter(old.get('where'))} -> {shown_filter(new.get('where'))}"))
    other = [k for k in sorted(old.keys() | new.keys()) if k != "where"
             and old.get(k) != new.get(k)]
    if other:
        what = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in other)
        out.append(Change("measure changed", f"measure {name} changed: {what}"))
    return out


def differences(old: Description, new: Description) -> list[Change]:
    """What changed from the stored description `old` to the declared `new`, in the order
    a plan shows it."""
    out: list[Change] = []
    if old["source"] != new["source"]:
        o, n = old["source"], new["source"]
        out.append(Change("source", f"source: {o['schema']}.{o['table']}({o['time_column']}, "
                          f"{o['key_column']}) -> {n['schema']}.{n['table']}"
                          f"({n['time_column']}, {n['key_column']})"))
    if old["schema"] != new["schema"]:
        out.append(Change("schema", f"schema: {old['schema']} -> {new['schema']}"))
    if old["dimensions"] != new["dimensions"]:
        out.append(Change("dimensions", f"dimensions: {', '.join(old['dimensions'])} -> "
                          f"{', '.join(new['dimensions'])}"))
    old_m = {m["name"]: m for m in old["measures"]}
    new_m = {m["name"]: m for m in new["measures"]}
    if added := [n for n in new_m if n not in old_m]:
        out.append(Change("measure added", "measures added: " + ", ".join(added)))
    if removed := [n for n in old_m if n not in new_m]:
        out.append(Change("measure removed", "measures removed: " + ", ".join(removed)))
    for name in (n for n in new_m if n in old_m):
        out += measure_changes(name, old_m[name], new_m[name])
    if added_g := [g for g in new["grains"] if g not in old["grains"]]:
        out.append(Change("grain added", "grains added: " + ", ".join(added_g)))
    if removed_g := [g for g in old["grains"] if g not in new["grains"]]:
        out.append(Change("grain removed", "grains removed: " + ", ".join(removed_g)))
    return out
