"""The rollups in force: the built-in ones, then those of the module AGGJOBS_ROLLUPS names.

The module is the platform's own code (docs/rollups.md, "Changing a rollup"): its `ROLLUPS`
is a sequence of `Rollup` declarations made with the API of `aggjobs.catalog`. It is
imported once per process, and any problem with it is a DeclarationError naming the
declaration and the field, which the commands print in one line (exit 2).
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from ..errors import DeclarationError
from ..settings import get_settings
from .families import BUILTIN_ROLLUPS
from .model import Rollup, Source
from .rules import catalog_problems, rollup_problems


@lru_cache
def load(module_name: str | None) -> tuple[Rollup, ...]:
    """The built-in rollups followed by the named module's (none: the built-in alone)."""
    if not module_name:
        return BUILTIN_ROLLUPS
    where = f"AGGJOBS_ROLLUPS={module_name}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise DeclarationError(f"{where}: cannot import the module: "
                               f"{type(exc).__name__}: {exc}") from None
    declared = getattr(module, "ROLLUPS", None)
    if not isinstance(declared, list | tuple) or not all(
            isinstance(r, Rollup) for r in declared):
        raise DeclarationError(f"{where}: the module must define ROLLUPS, a list or tuple of "
                               "aggjobs.catalog.Rollup")
    problems = [f"rollup {r.name!r}: {p}" for r in declared for p in rollup_problems(r)]
    if problems := problems or catalog_problems(BUILTIN_ROLLUPS, declared):
        raise DeclarationError(f"{where}: {problems[0]}")
    return BUILTIN_ROLLUPS + tuple(declared)


def rollups() -> tuple[Rollup, ...]:
    """Every rollup in force, built-in first."""
    return load(get_settings().rollups)


def sources() -> tuple[Source, ...]:
    """The sources of the rollups in force, each once, in order."""
    return tuple(dict.fromkeys(r.source for r in rollups()))
