"""Stored rollup definitions (migration 0014): what `aggjobs migrate` plans and does when the
declared rollups differ from those the tables were built with, and which version of each
rollup the engine works on (docs/rollups.md, "Changing a rollup").

Each rollup has one live definition, stored with its fingerprint: its tables are
analytics.<rollup>_<grain>. A migrate compares the declared definitions with the stored ones,
rollup by rollup: unchanged, new, recorded (tables made before 0014, adopted as they are),
changed (saying what differs), rebuilding, cancelled or removed.

- A change the tables can take as they are (a measure removed, a grain added or removed) is
  made in the migrate's transaction.
- Any other change starts a rebuild: the declared definition becomes version N+1, `building`,
  with tables in aggjobs_build and engine state under the key `<rollup>@v<N+1>`. The jobs
  and `aggjobs refresh` go on refreshing the live version under its stored definition and
  advance the rebuild (engine/rebuild.py), which is swapped in atomically once it has caught
  up and passed its check.
- Buckets before the retention cut of the raw rows cannot be rebuilt: the new version keeps
  the live version's values there, with the columns whose meaning changed NULL. When that is
  impossible (the dimensions or the source changed), the migrate refuses unless --force.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..catalog import Grain, Rollup
from ..catalog.definition import Change, Description, describe, differences, fingerprint
from ..catalog.definition import rollup_from as rollup_described
from ..catalog.grains import as_utc
from ..errors import DeclarationError, DefinitionsChanged
from ..sql import query
from ..sql import rollup as rollup_sql
from .connect import scalar

BUILD_SCHEMA, RETIRED_SCHEMA = "aggjobs_build", "aggjobs_retired"
# A rebuild cannot keep the buckets retention took the raw rows of when these change.
REGROUPS = frozenset({"dimensions", "source", "tables"})


@dataclass(frozen=True)
class Stored:
    """A rollup's live definition as stored."""

    rollup: str
    version: int
    fingerprint: str
    definition: Description
    last_version: int


@dataclass(frozen=True)
class Building:
    """A version being rebuilt beside the live one."""

    rollup: str
    version: int
    fingerprint: str
    definition: Description
    rebuild_from: datetime | None  # the first hour rebuilt (None: the first raw row's)
    check_error: str | None


@dataclass(frozen=True)
class Recorded:
    """What aggjobs.rollup_definitions holds, read at once: per rollup, its live definition,
    the version being rebuilt, if any, and the last version number it has had."""

    stored: dict[str, Stored] = field(default_factory=dict)
    building: dict[str, Building] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    exists: bool = True  # False: the database predates migration 0014


@dataclass(frozen=True)
class Versions:
    """What the engine works on for one declared rollup: the live version, under the
    definition its tables were built with, and the version being rebuilt, if any."""

    live: Rollup
    building: Rollup | None = None
    version: int | None = None  # the building version's number
    built: Building | None = None  # its stored row


def shadow_of(declared: Rollup, version: int) -> Rollup:
    """The declared rollup as the version being rebuilt: its own state key, its tables in
    aggjobs_build under the live tables' names."""
    return replace(declared, name=f"{declared.name}@v{version}", schema=BUILD_SCHEMA,
                   table_prefix=declared.name)


# ---------------------------------------------------------------------------- reading


def recorded(conn: psycopg.Connection) -> Recorded:
    """The stored definitions, in one read."""
    if scalar(conn, query("definitions_table")) is None:
        return Recorded(exists=False)
    stored, building, last = {}, {}, {}
    for (rollup, version, state, fp, definition, rebuild_from, check_error,
         last_version) in conn.execute(query("recorded_definitions")):
        last[rollup] = last_version
        if state == "live":
            stored[rollup] = Stored(rollup, version, fp, definition, last_version)
        elif state == "building":
            building[rollup] = Building(rollup, version, fp, definition,
                                        rebuild_from and as_utc(rebuild_from), check_error)
    return Recorded(stored, building, last)


def stored_definitions(conn: psycopg.Connection) -> dict[str, Stored]:
    return recorded(conn).stored


def live_rollup(s: Stored, declared: Rollup | None) -> Rollup:
    """The live version as a Rollup: the declared one when it is the same definition."""
    if declared is not None and fingerprint(describe(declared)) == s.fingerprint:
        return declared
    order = tuple(m.name for m in declared.measures) if declared else ()
    return rollup_described(s.definition, order=order)


def resolve(conn: psycopg.Connection, rollups: list[Rollup] | tuple[Rollup, ...]
            ) -> tuple[dict[str, Versions], list[tuple[str, str]]]:
    """Per declared rollup, the versions the engine works on; and (rollup, what differs)
    for each whose declaration is neither its live nor its building definition:
    `aggjobs migrate` has not run since it changed."""
    r = recorded(conn)
    if not r.exists:
        return {}, [(x.name, "the database predates stored definitions") for x in rollups]
    found: dict[str, Versions] = {}
    drifted = []
    for rollup in rollups:
        s, b = r.stored.get(rollup.name), r.building.get(rollup.name)
        d = describe(rollup)
        if s is None:
            drifted.append((rollup.name, "declared, but not created yet"))
        elif b is not None and b.fingerprint == fingerprint(d):
            found[rollup.name] = Versions(live_rollup(s, rollup), shadow_of(rollup, b.version),
                                          b.version, b)
        elif b is None and (s.fingerprint == fingerprint(d)
                            or not differences(s.definition, d)):
            found[rollup.name] = Versions(rollup)
        else:
            what = differences(s.definition, d) or [Change("", "the rebuild in progress "
                                                           "is of another definition")]
            drifted.append((rollup.name, "; ".join(c.text for c in what)))
    return found, drifted


def versions(conn: psycopg.Connection, rollup: Rollup) -> Versions:
    """The versions of one declared rollup; DefinitionsChanged if migrate has not run."""
    found, drifted = resolve(conn, [rollup])
    if drifted:
        raise changed_error(drifted)
    return found[rollup.name]


def changed_error(drifted: list[tuple[str, str]]) -> DefinitionsChanged:
    return DefinitionsChanged(
        "the declared rollups differ from what their tables were built with: "
        + "; ".join(f"{name} ({what})" for name, what in drifted)
        + ": run `aggjobs migrate` (`aggjobs migrate --plan` shows what it will do)")


def ensure_current(conn: psycopg.Connection, rollups: list[Rollup] | tuple[Rollup, ...]
                   ) -> dict[str, Versions]:
    """The versions of `rollups`; DefinitionsChanged, in one line, if any drifted."""
    found, drifted = resolve(conn, rollups)
    if drifted:
        raise changed_error(drifted)
    return found


def drift(conn: psycopg.Connection, rollups: list[Rollup] | tuple[Rollup, ...]
          ) -> list[tuple[str, str]]:
    return resolve(conn, rollups)[1]


def undeclared(conn: psycopg.Connection, rollups: list[Rollup] | tuple[Rollup, ...]
               ) -> list[str]:
    """Rollups with live tables that are not declared (any more): no job refreshes them."""
    names = {r.name for r in rollups}
    return [name for name in stored_definitions(conn) if name not in names]


def building_on(conn: psycopg.Connection, source: str) -> list[Rollup]:
    """The versions being rebuilt over `source` (cleanup keeps the raw rows they need)."""
    return [shadow_of(rollup_described(b.definition), b.version)
            for b in recorded(conn).building.values()
            if b.definition["source"]["name"] == source]


# ---------------------------------------------------------------------------- the plan


@dataclass
class RollupPlan:
    """What a migrate does to one rollup."""

    rollup: str
    action: str  # unchanged | new | recorded | changed | rebuilding | cancelled | removed
    version: int | None  # live now
    next_version: int | None  # live, or being rebuilt, after the migrate (None: removed)
    changes: list[Change] = field(default_factory=list)
    declared: Rollup | None = None
    stored: Stored | None = None
    building: Building | None = None
    horizon: datetime | None = None  # retention's cut of the raw rows: history before it
    history_rows: int = 0  # live rows before the horizon
    needs_force: str | None = None  # why the migrate refuses without --force

    @property
    def rebuilds(self) -> bool:
        return any(c.rebuilds for c in self.changes)

    @property
    def regroups(self) -> bool:
        return any(c.kind in REGROUPS for c in self.changes)

    def line(self) -> str:
        return f"{self.rollup}: {self.what()}" + "".join(f"; {n}" for n in self.notes())

    def what(self) -> str:
        v, n = self.version, self.next_version
        changes = "; ".join(c.text for c in self.changes)
        match self.action:
            case "unchanged":
                return f"unchanged (v{v})"
            case "new":
                return f"new (v{n}): its tables are created and filled by the next refresh"
            case "recorded":
                return (f"recorded (v{n}): its tables, made before definitions were stored, "
                        "are kept as they are")
            case "removed":
                return (f"removed (v{v}): no longer declared; its tables move to schema "
                        f"{RETIRED_SCHEMA} until they are pruned")
            case "rebuilding":
                return f"unchanged (v{v} live, v{n} being rebuilt)"
            case "cancelled":
                b = self.building.version if self.building else None
                return f"changed back to v{v}: the rebuild of v{b} is cancelled"
        if self.stored is None:  # tables made before 0014
            return (f"changed: {changes}; with --force they retire and v{n} is built anew "
                    "from the raw rows")
        if self.rebuilds:
            return (f"changed (v{v} -> v{n}): {changes}: v{n} is rebuilt from the raw rows "
                    f"beside v{v}, which stays live until v{n} is swapped in")
        return f"changed (v{v} -> v{n}): {changes}: made in place"

    def notes(self) -> list[str]:
        out = []
        if self.building is not None and self.action == "changed":
            out.append(f"the rebuild of v{self.building.version} is cancelled")
        if self.rebuilds and self.history_rows:
            when = f"{self.horizon:%Y-%m-%d %H:%M} UTC"
            if self.regroups:
                out.append(f"{self.history_rows:,} rows of v{self.version} are before {when}, "
                           "whose raw rows retention deleted: they cannot be rebuilt nor kept "
                           f"(their groups change), so v{self.next_version} starts at {when}")
            else:
                nulled = ", ".join(nulled_columns(self)) or "no column"
                out.append(f"buckets before {when} (raw rows deleted by retention) keep "
                           f"v{self.version}'s values, with {nulled} NULL there")
        return out

    def as_json(self) -> dict[str, Any]:
        return {"rollup": self.rollup, "action": self.action, "version": self.version,
                "next_version": self.next_version, "rebuild": self.rebuilds,
                "changes": [{"kind": c.kind, "text": c.text} for c in self.changes],
                "history_before": self.horizon, "history_rows": self.history_rows,
                "needs_force": self.needs_force, "notes": self.notes()}


@dataclass
class Plan:
    rollups: list[RollupPlan]

    @property
    def changes_anything(self) -> bool:
        return any(p.action not in ("unchanged", "rebuilding") for p in self.rollups)

    def reshaped(self) -> list[str]:
        """The rollups whose live tables the plan changes in place, retires or removes
        (their live views, which read those tables' columns, are made again after)."""
        return [p.rollup for p in self.rollups
                if p.action == "removed" or (p.action == "changed" and not (
                    p.rebuilds and p.stored is not None))]


TYPE_NAMES = {"timestamptz": "timestamp with time zone"}  # format_type's spelling


def table_differences(conn: psycopg.Connection, rollup: Rollup) -> list[Change] | None:
    """How tables made before 0014 differ from the declaration (None: there are none)."""
    found: list[str] = []
    any_table = False
    for grain in rollup.grains:
        rows = conn.execute(query("table_columns"), {
            "schema": rollup.schema, "table": rollup.table(grain)}).fetchall()
        if not rows:
            continue
        any_table = True
        have = {name: typ for name, typ, _ in rows}
        want = {c.name: TYPE_NAMES.get(c.type, c.type)
                for c in rollup_sql.target_columns(rollup, grain)}
        missing = [n for n in want if have.get(n) != want[n]]
        extra = [n for n in have if n not in want]
        if missing or extra:
            found.append(f"{rollup.schema}.{rollup.table(grain)}"
                         + (f" lacks {', '.join(missing)}" if missing else "")
                         + (" and" if missing and extra else "")
                         + (f" has {', '.join(extra)} too" if extra else ""))
    if not any_table:
        return None
    return [Change("tables", "tables made before definitions were stored differ from the "
                   "declaration: " + "; ".join(found))] if found else []


def plan(conn: psycopg.Connection, declared: tuple[Rollup, ...] | list[Rollup]) -> Plan:
    """What a migrate would do to each rollup; reads only."""
    r = recorded(conn)
    stored, building, lasts = r.stored, r.building, r.last
    out = [plan_one(conn, rollup, stored.get(rollup.name), building.get(rollup.name),
                    lasts.get(rollup.name, 0) + 1) for rollup in declared]
    names = {r.name for r in declared}
    out += [RollupPlan(name, "removed", s.version, None, stored=s,
                       building=building.get(name))
            for name, s in stored.items() if name not in names]
    return Plan(out)


def plan_one(conn: psycopg.Connection, rollup: Rollup, s: Stored | None, b: Building | None,
             after: int) -> RollupPlan:
    if s is None:
        tables = table_differences(conn, rollup)
        action = "new" if tables is None else "changed" if tables else "recorded"
        p = RollupPlan(rollup.name, action, None, after, tables or [], declared=rollup)
        return with_history(conn, p, None)
    d = describe(rollup)
    if b is not None and b.fingerprint == fingerprint(d):
        return RollupPlan(rollup.name, "rebuilding", s.version, b.version, declared=rollup,
                          stored=s, building=b)
    changes = differences(s.definition, d)
    if not changes:
        action = "cancelled" if b is not None else "unchanged"
        return RollupPlan(rollup.name, action, s.version, s.version, declared=rollup,
                          stored=s, building=b)
    p = RollupPlan(rollup.name, "changed", s.version, after, changes, declared=rollup,
                   stored=s, building=b)
    return with_history(conn, p, live_rollup(s, rollup))


def with_history(conn: psycopg.Connection, p: RollupPlan, live: Rollup | None) -> RollupPlan:
    """For a rebuild: where retention cut the raw rows, and the live rows before that cut."""
    if not p.rebuilds or live is None:
        if p.rebuilds and p.action == "changed":  # tables made before 0014 that differ
            p.needs_force = (f"{p.rollup}: its tables were made before definitions were stored "
                             "and differ from the declaration; --force retires them and "
                             "builds the rollup anew from the raw rows")
        return p
    horizon = conn.execute(query("raw_horizon"), {"rollup": live.name}).fetchone()
    p.horizon = horizon[0] and as_utc(horizon[0]) if horizon else None
    if p.horizon is None:
        return p
    p.history_rows = sum(scalar(conn, history_count(live, g, p.horizon))
                         for g in live.grains)
    if p.history_rows and p.regroups:
        p.needs_force = (f"{p.rollup}: {p.history_rows:,} rows of v{p.version} before "
                         f"{p.horizon:%Y-%m-%d %H:%M} UTC would be lost (their raw rows were "
                         "deleted by retention and their groups change); --force accepts that")
    return p


def history_count(rollup: Rollup, grain: Grain, horizon: datetime) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} WHERE {} < {}").format(
        rollup_sql.table_ident(rollup, grain), sql.Identifier(grain.column),
        history_end(grain, horizon))


def history_end(grain: Grain, horizon: datetime) -> sql.Literal:
    """Buckets starting before this hold rows retention has cut: kept, never rebuilt."""
    end = grain.ceil(horizon)
    return sql.Literal(end.date() if grain is not Grain.HOUR else end)


def nulled_columns(p: RollupPlan) -> list[str]:
    """The declared outputs that a kept bucket cannot have: new or changed measures."""
    if p.stored is None or p.declared is None:
        return []
    old = {m["name"]: m for m in p.stored.definition["measures"]}
    return [m["name"] for m in describe(p.declared)["measures"] if old.get(m["name"]) != m]


# ---------------------------------------------------------------------------- applying


class NeedsForce(DeclarationError):
    """The plan would lose history: the migrate refuses unless --force."""


def apply(conn: psycopg.Connection, the_plan: Plan, *, force: bool = False) -> None:
    """Make the plan's changes, in the caller's transaction (migrate's): the live tables
    are then created or completed by `sync_catalog`. Refuses, before changing anything, a
    plan that would lose history, unless `force`."""
    if not force and (refused := [p.needs_force for p in the_plan.rollups if p.needs_force]):
        raise NeedsForce("; ".join(refused) + " (`aggjobs migrate --plan` shows the plan)")
    for p in the_plan.rollups:
        if p.building is not None and p.action in ("changed", "cancelled", "removed"):
            cancel_build(conn, p.building)
        if p.action == "removed":
            assert p.stored is not None
            old = live_rollup(p.stored, None)
            retire_grains(conn, old, p.stored.version, old.grains)
            conn.execute(query("end_definition"), {"rollup": p.rollup, "state": "removed"})
        elif p.action == "changed" and p.stored is None:  # tables before 0014: --force
            assert p.declared is not None
            retire_grains(conn, p.declared, 0, tuple(Grain))  # they start over, as new ones
            record(conn, p.declared, p.next_version)
        elif p.action == "changed" and p.rebuilds:
            assert p.stored is not None and p.declared is not None
            start_build(conn, p, live_rollup(p.stored, p.declared))
        elif p.action == "changed":
            assert p.stored is not None and p.declared is not None
            change_in_place(conn, live_rollup(p.stored, None), p.declared, p.stored.version)
            conn.execute(query("end_definition"), {"rollup": p.rollup, "state": "retired"})
            record(conn, p.declared, p.next_version)
        elif p.action in ("new", "recorded"):
            assert p.declared is not None
            record(conn, p.declared, p.next_version)
        elif p.action == "unchanged" and p.stored and p.declared and \
                p.stored.fingerprint != fingerprint(describe(p.declared)):
            # the same tables, described anew (a field added to the description's format)
            conn.execute(query("end_definition"), {"rollup": p.rollup, "state": "retired"})
            record(conn, p.declared, p.stored.last_version + 1)


def record(conn: psycopg.Connection, rollup: Rollup, version: int | None) -> None:
    d = describe(rollup)
    conn.execute(query("record_definition"), {
        "rollup": rollup.name, "version": version, "fingerprint": fingerprint(d),
        "definition": Jsonb(d)})


def bucket_index_include(conn: psycopg.Connection, live: Rollup, shadow: Rollup,
                         grain: Grain) -> list[str]:
    """The columns the live table's bucket index includes (views.sql's covering hourly
    ones) that the new version's table has: its index is made the same, so that the swap
    keeps every index as it was (the swap re-makes only the indexes it finds missing)."""
    if grain not in live.grains:
        return []
    include: list[str] = scalar(conn, query("bucket_index_include"), {
        "schema": live.schema, "index": rollup_sql.bucket_index_name(live, grain)})
    columns = {c.name for c in rollup_sql.target_columns(shadow, grain)}
    return [c for c in include if c in columns]


def start_build(conn: psycopg.Connection, p: RollupPlan, live: Rollup) -> None:
    """Create version N+1's tables in aggjobs_build, its watermarks and its row; buckets
    before retention's cut keep the live version's values (or, --force over changed groups,
    are left out)."""
    assert p.declared is not None and p.next_version is not None
    shadow = shadow_of(p.declared, p.next_version)
    keeps = p.horizon is not None and not p.regroups
    changed = set(nulled_columns(p)) if keeps else set()
    nullable = frozenset(c.name for m in p.declared.measures if m.name in changed
                         for c in rollup_sql.measure_columns(m))
    for grain in shadow.grains:
        conn.execute(rollup_sql.create_table(shadow, grain, nullable=nullable))
        conn.execute(rollup_sql.create_bucket_index(
            shadow, grain, bucket_index_include(conn, live, shadow, grain)))
        conn.execute(query("init_watermark"), {
            "rollup": shadow.name, "grain": grain.value,
            "watermark": grain.ceil(p.horizon) if p.horizon else None, "horizon": p.horizon})
    if keeps:
        for grain in (g for g in shadow.grains if g in live.grains):
            conn.execute(copy_history(live, shadow, grain, p))
    d = describe(p.declared)
    conn.execute(query("start_building"), {
        "rollup": p.rollup, "version": p.next_version, "fingerprint": fingerprint(d),
        "definition": Jsonb(d),
        "rebuild_from": Grain.HOUR.ceil(p.horizon) if p.horizon else None})


def copy_history(live: Rollup, shadow: Rollup, grain: Grain, p: RollupPlan) -> sql.Composed:
    """The live rows of buckets before retention's cut, into the new version: the columns of
    the measures that did not change, the others NULL."""
    assert p.horizon is not None
    changed = set(nulled_columns(p))
    keep = [m for m in shadow.measures if m.name not in changed]
    cols = [*shadow.dimensions, grain.column,
            *(c.name for m in keep for c in rollup_sql.measure_columns(m)), "updated_at"]
    names = sql.SQL(", ").join(map(sql.Identifier, cols))
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE {} < {}").format(
        rollup_sql.table_ident(shadow, grain), names, names,
        rollup_sql.table_ident(live, grain), sql.Identifier(grain.column),
        history_end(grain, p.horizon))


def cancel_build(conn: psycopg.Connection, b: Building) -> None:
    """Give up a rebuild: its tables dropped, its state forgotten, its row 'cancelled'."""
    shadow = shadow_of(rollup_described(b.definition), b.version)
    for grain in shadow.grains:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            rollup_sql.table_ident(shadow, grain)))
    conn.execute(query("forget_state"), {"key": shadow.name})
    conn.execute(query("cancel_building"), {"rollup": b.rollup})


def change_in_place(conn: psycopg.Connection, old: Rollup, new: Rollup, version: int) -> None:
    """The changes the tables take as they are: a removed measure's columns dropped, a
    removed grain's table retired (an added grain's table is created by sync_catalog and
    merged from the finer grain by the next refresh)."""
    retire_grains(conn, old, version, tuple(g for g in old.grains if g not in new.grains))
    kept = {m.name for m in new.measures}
    columns = [c for m in old.measures if m.name not in kept
               for c in rollup_sql.measure_columns(m)]
    if not columns:
        return
    for grain in (g for g in old.grains if g in new.grains):
        drop = sql.SQL(", ").join(sql.SQL("DROP COLUMN IF EXISTS {}").format(
            sql.Identifier(c.name)) for c in columns)
        try:
            with conn.transaction():
                conn.execute(sql.SQL("ALTER TABLE {} {}").format(
                    rollup_sql.table_ident(old, grain), drop))
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise DeclarationError(
                f"rollup {old.name!r}: measures: a removed measure's column is read by "
                f"another object: {str(exc).splitlines()[0]}") from None


def retire_grains(conn: psycopg.Connection, rollup: Rollup, version: int,
                  grains: tuple[Grain, ...]) -> None:
    """Move the grains' tables to aggjobs_retired as <table>__v<version> and forget their
    state: readers no longer see them; they are dropped after the grace period."""
    for grain in grains:
        conn.execute(query("retire_table"), {
            "schema": rollup.schema, "table": rollup.table(grain),
            "retired": f"{rollup.table(grain)}__v{version}", "rollup": rollup.name,
            "version": version, "grain": grain.value})
    if grains:
        conn.execute(query("forget_grains"), {
            "rollup": rollup.name, "grains": [g.value for g in grains]})


def drop_retired_tables(conn: psycopg.Connection, *, grace_s: float) -> list[str]:
    """Drop the retired tables kept longer than `grace_s` seconds; returns their names."""
    return [row[0] for row in conn.execute(query("drop_retired_tables"), {"grace_s": grace_s})]
