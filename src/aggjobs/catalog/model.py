"""What is rolled up: sources, measures and rollups as plain data (no SQL, no I/O).

`aggjobs.sql.rollup` turns a `Rollup` into its tables and queries, so that a new rollup
is a declaration in `catalog.families` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .grains import Grain


@dataclass(frozen=True, kw_only=True)
class Source:
    """A platform table whose rows are aggregated.

    Change tracking logs (key, hour) for every row written behind the materialized
    point, so `key_column` is the unit of dirt: one late row dirties one key-hour.
    """

    name: str
    table: str
    time_column: str
    schema: str = "public"
    key_column: str = "workspace_id"


@dataclass(frozen=True, kw_only=True)
class Filter:
    """`column = value`, used as an aggregate FILTER."""

    column: str
    value: str


@dataclass(frozen=True, kw_only=True)
class Count:
    """count(*) of rows (optionally filtered)."""

    name: str
    where: Filter | None = None


@dataclass(frozen=True, kw_only=True)
class Sum:
    """sum(column) (optionally filtered); NULL over no values unless `zero_if_empty`."""

    name: str
    column: str
    where: Filter | None = None
    zero_if_empty: bool = False


@dataclass(frozen=True, kw_only=True)
class Avg:
    """avg(column) over non-NULL values; merged exactly from (sum, count) state."""

    name: str
    column: str


@dataclass(frozen=True, kw_only=True)
class Quantile:
    """percentile_cont(q) of column: exact on the raw grain, from a mergeable
    log-bucket sketch (relative error <= 0.75%) on the grains merged from it."""

    name: str
    column: str
    q: float


@dataclass(frozen=True, kw_only=True)
class DistinctCount:
    """count(DISTINCT column), exact at every grain (the set is kept as state)."""

    name: str
    column: str


@dataclass(frozen=True, kw_only=True)
class Difference:
    """coalesce(minuend, 0) - coalesce(subtrahend, 0) of two other measures."""

    name: str
    minuend: str
    subtrahend: str


Measure = Count | Sum | Avg | Quantile | DistinctCount | Difference


@dataclass(frozen=True, kw_only=True)
class Rollup:
    """A family of tables `analytics.<name>_<hourly|daily|weekly>`.

    The first grain reads the source's raw rows; each further grain merges the one before.
    What makes one valid is in `catalog.rules`, checked when the rollups in force are loaded.
    """

    name: str
    source: Source
    measures: tuple[Measure, ...]
    dimensions: tuple[str, ...] = ("workspace_id",)
    grains: tuple[Grain, ...] = (Grain.HOUR, Grain.DAY, Grain.WEEK)
    schema: str = "analytics"
    description: str = field(default="", compare=False)
    # The tables' name before _<grain>, when not the rollup's name: a version being rebuilt
    # has its own name (its engine state's key) and the live version's table names.
    table_prefix: str | None = None

    @property
    def further_dimensions(self) -> tuple[str, ...]:
        """The dimensions after the key column (e.g. the agent): they may be NULL."""
        return self.dimensions[1:]

    def table(self, grain: Grain) -> str:
        return f"{self.table_prefix or self.name}_{grain.table_suffix}"

    def finer(self, grain: Grain) -> Grain | None:
        i = self.grains.index(grain)
        return self.grains[i - 1] if i else None

    def coarser(self, grain: Grain) -> Grain | None:
        i = self.grains.index(grain)
        return self.grains[i + 1] if i + 1 < len(self.grains) else None
