"""The catalog: what aggjobs rolls up. Pure data; look rollups up by name here.

This is also the public declaration API (docs/rollups.md, "Changing a rollup"): a module
named by AGGJOBS_ROLLUPS declares the platform's own rollups with the names below.
"""

from __future__ import annotations

from ..errors import UnknownRollup
from .declared import rollups, sources
from .families import AGENT_RUNS, BUILTIN_ROLLUPS, BUILTIN_SOURCES, CREDIT_TRANSACTIONS, USER_EVENTS
from .grains import Grain
from .model import Avg, Count, Difference, DistinctCount, Filter, Quantile, Rollup, Source, Sum

__all__ = [
    # the declaration API
    "AGENT_RUNS", "CREDIT_TRANSACTIONS", "USER_EVENTS", "Avg", "Count", "Difference",
    "DistinctCount", "Filter", "Grain", "Quantile", "Rollup", "Source", "Sum",
    # what is in force
    "BUILTIN_ROLLUPS", "BUILTIN_SOURCES", "get_rollup", "rollups", "rollups_on",
    "select_rollups", "sources",
]


def get_rollup(name: str) -> Rollup:
    for rollup in rollups():
        if rollup.name == name:
            return rollup
    known = ", ".join(r.name for r in rollups())
    raise UnknownRollup(f"unknown rollup {name!r}; known rollups: {known}")


def select_rollups(names: list[str] | None) -> list[Rollup]:
    """The named rollups (all when none are named), each once, in catalog order."""
    if not names:
        return list(rollups())
    wanted = {get_rollup(n).name for n in names}
    return [r for r in rollups() if r.name in wanted]


def rollups_on(source: Source) -> list[Rollup]:
    return [r for r in rollups() if r.source == source]
