"""The catalog: what aggjobs rolls up. Pure data; look rollups up by name here."""

from __future__ import annotations

from ..errors import UnknownRollup
from .families import ROLLUPS, SOURCES
from .grains import Grain
from .model import Rollup, Source

__all__ = [
    "ROLLUPS", "SOURCES", "Grain", "Rollup", "Source", "get_rollup", "rollups_on", "select_rollups",
]


def get_rollup(name: str) -> Rollup:
    for rollup in ROLLUPS:
        if rollup.name == name:
            return rollup
    known = ", ".join(r.name for r in ROLLUPS)
    raise UnknownRollup(f"unknown rollup {name!r}; known rollups: {known}")


def select_rollups(names: list[str] | None) -> list[Rollup]:
    """The named rollups (all when none are named), each once, in catalog order."""
    if not names:
        return list(ROLLUPS)
    wanted = {get_rollup(n).name for n in names}
    return [r for r in ROLLUPS if r.name in wanted]


def rollups_on(source: Source) -> list[Rollup]:
    return [r for r in ROLLUPS if r.source == source]
