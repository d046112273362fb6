"""Rollup definitions that evolve (issue 15), as the platform lives them: its writes, migrates
of a changed declaration, refreshes in small steps and workers killed mid-rebuild
interleaved in any order; readers of the tables and of views over them while a rebuilt
version is swapped in; and a real `aggjobs refresh` process killed (SIGKILL) mid-rebuild.

Whatever happened, once caught up every table of the declared rollup equals a recomputation
from the raw rows under the declared definition (written here in plain SQL, independent of
the engine's generator), and the built-in rollups are untouched by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

import aggjobs.catalog.declared
import aggjobs.settings
from aggjobs.catalog import (
    AGENT_RUNS,
    BUILTIN_ROLLUPS,
    Count,
    Filter,
    Grain,
    Quantile,
    Rollup,
    Sum,
    get_rollup,
)
from aggjobs.catalog.definition import describe, fingerprint
from aggjobs.db.definitions import NeedsForce
from aggjobs.db.migrate import migrate
from aggjobs.engine.refresh import refresh
from aggjobs.errors import DefinitionsChanged
from aggjobs.settings import Settings
from tests import platform as p
from tests.conftest import create_database, drop_database
from tests.reference import assert_all_match

pytestmark = pytest.mark.slow
SEEN: Counter[str] = Counter()  # what the state machine's examples went through

ROLLUP = "run_stats"
T0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday, in the past
END = T0 + timedelta(days=9)  # after every row the tests write: every bucket complete
AGGJOBS = Path(sys.executable).parent / "aggjobs"

# ------------------------------------------------------------------------------ declarations


@dataclass(frozen=True)
class Variant:
    """One declaration of the user rollup ROLLUP over agent_runs, among a few that differ by
    what a platform changes: a measure added or removed, a filter's value, a quantile's q,
    a grain, a dimension."""

    flagged: str | None = "failed"  # Count "flagged" of runs with this status (None: absent)
    credits: bool = False  # Sum "credits" of credits_consumed
    q: float = 0.9  # Quantile "p_runtime" of runtime_seconds
    grains: int = 2  # hour; hour, day; hour, day, week
    by_agent: bool = False  # dimension agent_id after workspace_id

    @property
    def module(self) -> str:
        key = f"{self.flagged}-{self.credits}-{self.q}-{self.grains}-{self.by_agent}"
        return "t15_declared_" + hashlib.sha256(key.encode()).hexdigest()[:12]

    def rollup(self) -> Rollup:
        measures: list = [Count(name="total")]
        if self.flagged:
            measures.append(Count(name="flagged",
                                  where=Filter(column="status", value=self.flagged)))
        if self.credits:
            measures.append(Sum(name="credits", column="credits_consumed"))
        measures.append(Quantile(name="p_runtime", column="runtime_seconds", q=self.q))
        return Rollup(
            name=ROLLUP, source=AGENT_RUNS, measures=tuple(measures),
            dimensions=("workspace_id", "agent_id") if self.by_agent else ("workspace_id",),
            grains=(Grain.HOUR, Grain.DAY, Grain.WEEK)[: self.grains])

    def source(self) -> str:
        """The module a platform would write: the public declaration API, nothing else."""
        measures = ['Count(name="total")']
        if self.flagged:
            measures.append(f'Count(name="flagged", where=Filter(column="status", '
                            f'value="{self.flagged}"))')
        if self.credits:
            measures.append('Sum(name="credits", column="credits_consumed")')
        measures.append(f'Quantile(name="p_runtime", column="runtime_seconds", q={self.q!r})')
        grains = ", ".join(f"Grain.{g.name}" for g in (Grain.HOUR, Grain.DAY,
                                                        Grain.WEEK)[: self.grains])
        dims = '"workspace_id", "agent_id"' if self.by_agent else '"workspace_id",'
        return (
            "from aggjobs.catalog import AGENT_RUNS, Count, Filter, Grain, Quantile, Rollup, Sum\n"
            f"ROLLUPS = [Rollup(name={ROLLUP!r}, source=AGENT_RUNS, dimensions=({dims}),\n"
            f"                  grains=({grains},),\n"
            f"                  measures=({', '.join(measures)},))]\n")


VARIANTS = st.builds(
    Variant,
    flagged=st.sampled_from(["failed", "failed", "cancelled", None]),
    credits=st.booleans(),
    q=st.sampled_from([0.9, 0.99]),
    grains=st.sampled_from([1, 2, 2, 3]),
    by_agent=st.sampled_from([False, False, True]),
)


def reload_catalog() -> None:
    aggjobs.catalog.declared.load.cache_clear()
    aggjobs.settings.get_settings.cache_clear()


class Declarations:
    """Switches the declared rollups in this process as a deploy does: the module named by
    AGGJOBS_ROLLUPS (one per variant, in a directory on sys.path), the caches cleared."""

    def __init__(self, directory: Path):
        self.directory = directory

    def declare(self, variant: Variant) -> Rollup:
        path = self.directory / f"{variant.module}.py"
        if not path.exists():
            path.write_text(variant.source())
        os.environ["AGGJOBS_ROLLUPS"] = variant.module
        reload_catalog()
        declared = get_rollup(ROLLUP)
        assert declared == variant.rollup()
        return declared


@pytest.fixture
def declarations(tmp_path: Path) -> Iterator[Declarations]:
    before_env, before_path = os.environ.get("AGGJOBS_ROLLUPS"), list(sys.path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield Declarations(tmp_path)
    finally:
        sys.path[:] = before_path
        if before_env is None:
            os.environ.pop("AGGJOBS_ROLLUPS", None)
        else:
            os.environ["AGGJOBS_ROLLUPS"] = before_env
        reload_catalog()


# ------------------------------------------------------------------------------ the reference

BUCKET = {
    Grain.HOUR: "date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    Grain.DAY: "(started_at AT TIME ZONE 'UTC')::date",
    Grain.WEEK: "date_trunc('week', started_at AT TIME ZONE 'UTC')::date",
}


def aggregate(m) -> str:
    """A measure as a plain SQL aggregate over agent_runs (the documented meaning)."""
    where = f" FILTER (WHERE {m.where.column} = '{m.where.value}')" if getattr(
        m, "where", None) else ""
    match m:
        case Count():
            return "count(*)" + where
        case Sum():
            s = f"sum({m.column})" + where
            return f"coalesce({s}, 0)" if m.zero_if_empty else s
        case Quantile():
            return f"percentile_cont({m.q}) WITHIN GROUP (ORDER BY {m.column})"
    raise AssertionError(m)


def expected(conn: psycopg.Connection, rollup: Rollup, grain: Grain, below: datetime) -> dict:
    """(dimensions..., bucket) -> outputs, from the raw rows of buckets before `below`."""
    dims = ", ".join(rollup.dimensions)
    rows = conn.execute(
        f"SELECT {dims}, {BUCKET[grain]}, {', '.join(aggregate(m) for m in rollup.measures)}"
        f" FROM public.agent_runs WHERE started_at < %s GROUP BY {dims}, {BUCKET[grain]}",
        (below,)).fetchall()
    n = len(rollup.dimensions) + 1
    return {r[:n]: r[n:] for r in rows}


def stored(conn: psycopg.Connection, rollup: Rollup, grain: Grain, below: datetime,
           schema: str = "analytics") -> dict:
    col = grain.column
    cols = ", ".join([*rollup.dimensions, col, *(m.name for m in rollup.measures)])
    bound = below if grain is Grain.HOUR else below.date()
    rows = conn.execute(f"SELECT {cols} FROM {schema}.{rollup.table(grain)} WHERE {col} < %s",
                        (bound,)).fetchall()
    n = len(rollup.dimensions) + 1
    return {r[:n]: r[n:] for r in rows}


def same(m, grain: Grain, a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(m, Quantile):
        # exact at the hour (percentile_cont); from the sketch at merged grains: 1% allowed
        rel = 1e-9 if grain is Grain.HOUR else 0.01
        return abs(float(a) - float(b)) <= rel * max(abs(float(a)), abs(float(b))) + 1e-12
    return Decimal(a) == Decimal(b)


def assert_equals_raw(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                      below: datetime, schema: str = "analytics", what: str = "") -> int:
    want = expected(conn, rollup, grain, below)
    have = stored(conn, rollup, grain, below, schema)
    label = f"{what}{schema}.{rollup.table(grain)} below {below:%Y-%m-%d %H:%M}"
    assert have.keys() == want.keys(), (
        f"{label}: missing {sorted(want.keys() - have.keys(), key=str)[:5]}, "
        f"extra {sorted(have.keys() - want.keys(), key=str)[:5]}")
    for key, exp in want.items():
        for m, a, b in zip(rollup.measures, have[key], exp, strict=True):
            assert same(m, grain, a, b), f"{label} {key} {m.name}: stored {a}, raw rows {b}"
    return len(want)


def marks(conn: psycopg.Connection, key: str) -> dict[Grain, datetime | None]:
    return {Grain(g): wm for g, wm in conn.execute(
        "SELECT grain, watermark FROM aggjobs.watermarks WHERE rollup = %s", (key,))}


def definitions_of(conn: psycopg.Connection) -> dict[str, tuple[int, str, dict]]:
    """state -> (version, fingerprint, definition) of ROLLUP's live and building rows."""
    return {state: (v, f, d) for v, state, f, d in conn.execute(
        "SELECT version, state, fingerprint, definition FROM aggjobs.rollup_definitions"
        " WHERE rollup = %s AND state IN ('live', 'building')", (ROLLUP,))}


def live_rollup(conn: psycopg.Connection) -> Rollup:
    from aggjobs.catalog.definition import rollup_from
    return rollup_from(definitions_of(conn)["live"][2])


def assert_live_matches(conn: psycopg.Connection) -> None:
    """The live tables, under the definition they were built with, equal the raw rows below
    their watermarks."""
    live = live_rollup(conn)
    wm = marks(conn, ROLLUP)
    for grain in live.grains:
        if wm.get(grain) is not None:
            assert_equals_raw(conn, live, grain, wm[grain], what="live ")


def catch_up(conn: psycopg.Connection, declared: Rollup, settings: Settings) -> None:
    """Refresh at END until nothing is being rebuilt; then every table of the declared
    definition equals the raw rows, every bucket holding a row included."""
    for _ in range(4):
        report = refresh(conn, declared, as_of=END, settings=settings)
        if report.rebuild is None:
            break
        note(f"catch-up: {report.rebuild}")
    # A first refresh of a new version (of a rollup declared anew between examples, or of a
    # rebuild) has no watermark yet: it leaves the changes logged before it existed pending,
    # for hours before its first row (nothing to recompute there); the next one takes them.
    refresh(conn, declared, as_of=END, settings=settings)
    defs = definitions_of(conn)
    assert "building" not in defs, f"still rebuilding after the catch-up: {report.rebuild}"
    assert defs["live"][1] == fingerprint(describe(declared))
    pending = conn.execute("SELECT rollup, grain, workspace_id, bucket"
                           " FROM aggjobs.pending_groups WHERE rollup LIKE %s",
                           (ROLLUP + "%",)).fetchall()
    assert pending == [], (pending, marks(conn, ROLLUP))
    wm = marks(conn, ROLLUP)
    assert set(wm) == set(declared.grains)
    latest = conn.execute("SELECT max(started_at) FROM agent_runs").fetchone()[0]
    for grain in declared.grains:
        assert wm[grain] == grain.floor(END), (grain, wm[grain])
        assert latest is None or wm[grain] > latest
        assert_equals_raw(conn, declared, grain, wm[grain])
    # nothing of a rebuild is left over, and no table of the rollup outside these
    assert conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'aggjobs_build'").fetchone()[0] == 0
    assert conn.execute(
        "SELECT count(*) FROM aggjobs.watermarks WHERE rollup LIKE %s",
        (ROLLUP + "@%",)).fetchone()[0] == 0
    tables = {t for (t,) in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'analytics' AND tablename LIKE %s",
        (ROLLUP + "\\_%",))}
    assert tables == {declared.table(g) for g in declared.grains}
    retired = {t for (t,) in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'aggjobs_retired'")}
    listed = {t for (t,) in conn.execute("SELECT table_name FROM aggjobs.retired_tables")}
    assert retired == listed


# ------------------------------------------------------------------------------ helpers


@contextmanager
def fresh_database(server_url: str, template_db: str) -> Iterator[str]:
    name = f"aggjobs_d_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=template_db)
    try:
        yield url
    finally:
        drop_database(server_url, name)


def wait_gone(conn: psycopg.Connection, pid: int, timeout: float = 60.0) -> None:
    """Until the backend `pid` has exited (its transaction rolled back, its locks freed)."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
        assert time.monotonic() < deadline, f"backend {pid} still alive after {timeout} s"
        time.sleep(0.02)


def migrate_declared(conn: psycopg.Connection):
    """`aggjobs migrate`; with --force only when the plan says why it needs it."""
    try:
        return migrate(conn)
    except NeedsForce as exc:
        assert "--force" in str(exc), exc
        done = migrate(conn, force=True)
        assert any(rp.needs_force for rp in done.plan.rollups), exc
        return done


# ------------------------------------------------------------------------------ 1. any history
#
# The platform's writes (late inserts, updates, deletes, rows moved to another hour or
# workspace), declarations changed and migrated, refreshes in small steps, and refreshes
# killed mid-rebuild, in any order. After each complete refresh the live tables equal the raw
# rows under the definition they were built with (and the hours of a version being rebuilt,
# under its own); at the end, caught up, every table of the declared rollup equals the raw
# rows under the declared definition.

WORKSPACES = st.integers(1, 3)
# ("in", m): T0 + m minutes, within the first 2 days; ("late", m): T0 - m minutes, up to 12
# hours before every other row (a late row behind the watermarks, before the first hour).
# Rows are within a few hours that a rebuild in small steps takes several steps over: a write
# often lands behind a partly done rebuild.
WHEN = st.one_of(st.tuples(st.just("in"), st.integers(0, 2 * 24 * 60 - 1)),
                 st.tuples(st.just("late"), st.integers(1, 12 * 60)))
STATUS = st.sampled_from(["completed", "completed", "failed", "cancelled", "running"])
RUNTIME = st.one_of(st.none(), st.sampled_from([0.5, 10.0, 60.0]), st.floats(0.01, 5000))
CREDITS = st.one_of(st.none(), st.decimals(min_value=0, max_value=Decimal("99.9999"),
                                           places=4))
AGENTS = st.sampled_from([1, 2, None])
PICK = st.integers(0, 10_000)  # index (mod the number of rows) of the row written
WRITE = st.one_of(
    st.tuples(st.just("insert"), WORKSPACES, WHEN, STATUS, RUNTIME, CREDITS, AGENTS),
    st.tuples(st.just("update"), PICK, STATUS, RUNTIME, CREDITS),
    st.tuples(st.just("delete"), PICK),
    st.tuples(st.just("move_time"), PICK, WHEN),
    st.tuples(st.just("move_workspace"), PICK, WORKSPACES, AGENTS),
)


def at(when: tuple[str, int]) -> datetime:
    kind, minutes = when
    return T0 + timedelta(minutes=minutes if kind == "in" else -minutes)


def rebuilds(old: Variant, new: Variant) -> bool:
    """Whether going from `old` to `new` needs the raw rows read again (the documented rule:
    anything but measures removed and grains added or removed)."""
    return (old.by_agent != new.by_agent or old.q != new.q
            or (new.credits and not old.credits)
            or (new.flagged is not None and new.flagged != old.flagged))


class DefinitionChanges(RuleBasedStateMachine):
    def __init__(self, url: str, declarations: Declarations):
        super().__init__()
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True, application_name="aggjobs:tests")
        self.declarations = declarations
        forget_the_rollup(self.conn)
        self.ids: list[int] = []
        self.clock = T0 + timedelta(days=1)
        self.live, self.building = Variant(), None
        self.declared = declarations.declare(self.live)
        self.since_declared = 3

    def settings(self, **kw) -> Settings:
        kw.setdefault("hours_per_transaction", 12)
        return Settings(database_url=self.url, rebuild_check=self.check, **kw)

    @initialize(rows=st.integers(10, 60), seed=st.integers(0, 2**16),
                check=st.sampled_from(["sample", "full"]))
    def start(self, rows: int, seed: int, check: str) -> None:
        self.check = check
        rng = random.Random(seed)
        for _ in range(rows):
            status = rng.choice(["completed", "completed", "failed", "cancelled", "running"])
            self.ids.append(p.run(
                self.conn, ws=rng.randint(1, 3), status=status,
                at=T0 + timedelta(minutes=rng.randrange(2 * 24 * 60)),
                runtime=round(rng.uniform(0.1, 900), 3), credits=str(rng.randint(0, 40) / 4),
                agent=rng.choice([1, 2, None])))
        done = migrate_declared(self.conn)
        plan = {rp.rollup: rp for rp in done.plan.rollups}
        assert plan[ROLLUP].action == "new", plan[ROLLUP].line()
        assert definitions_of(self.conn)["live"][1] == fingerprint(describe(self.declared))

    # -- the platform's writes

    @rule(op=WRITE)
    def write(self, op: tuple) -> None:
        self.since_declared += 1
        kind, *args = op
        if self.building is not None:
            v = definitions_of(self.conn)["building"][0]
            wm = marks(self.conn, f"{ROLLUP}@v{v}").get(Grain.HOUR)
            if wm is not None and wm > T0 - timedelta(hours=12):
                SEEN["write while a rebuild is part way"] += 1
        if kind == "insert":
            ws, when, status, runtime, credits, agent = args
            self.ids.append(p.run(self.conn, ws=ws, at=at(when), status=status,
                                  runtime=runtime, credits=credits, agent=agent))
            return
        rid = self.ids[args[0] % len(self.ids)] if self.ids else None
        if rid is None:
            return
        if kind == "update":
            self.conn.execute("UPDATE agent_runs SET status = %s, runtime_seconds = %s,"
                              " credits_consumed = %s WHERE id = %s", (*args[1:], rid))
        elif kind == "delete":
            self.conn.execute("DELETE FROM agent_runs WHERE id = %s", (rid,))
            self.ids.remove(rid)
        elif kind == "move_time":
            self.conn.execute("UPDATE agent_runs SET started_at = %s WHERE id = %s",
                              (at(args[1]), rid))
        elif kind == "move_workspace":
            self.conn.execute("UPDATE agent_runs SET workspace_id = %s, agent_id = %s"
                              " WHERE id = %s", (*args[1:], rid))
        SEEN[f"write {kind}"] += 1

    # -- the declaration changes, and `aggjobs migrate`

    # a few other steps after each change (writes while a rebuild is part way, its steps,
    # kills), else most rebuilds would be cancelled by the next change at once; on the steps
    # alone (a precondition on the database's state would depend on when kills land)
    @precondition(lambda self: self.since_declared >= 3)
    @rule(variant=VARIANTS, look_first=st.booleans())
    def redeclare(self, variant: Variant, look_first: bool) -> None:
        self.since_declared = 0
        declared = self.declarations.declare(variant)
        if look_first and variant not in (self.live, self.building):
            # refresh refuses a declaration migrate has not seen, before any work
            with pytest.raises(DefinitionsChanged, match="run `aggjobs migrate`"):
                refresh(self.conn, declared, as_of=self.clock, settings=self.settings())
        before = definitions_of(self.conn)
        done = migrate_declared(self.conn)
        plan = {rp.rollup: rp for rp in done.plan.rollups}
        rp = plan[ROLLUP]
        note(f"migrate: {rp.line()}")
        SEEN[f"migrate {rp.action}" + (" (rebuild)" if rp.rebuilds else "")] += 1
        assert all(plan[r.name].action == "unchanged" for r in BUILTIN_ROLLUPS)
        assert rp.needs_force is None  # nothing was cut by retention: no history is lost
        after = definitions_of(self.conn)
        if variant == self.building:
            assert rp.action == "rebuilding", rp.line()
            assert after == before
        elif variant == self.live:
            assert rp.action == ("cancelled" if self.building else "unchanged"), rp.line()
            assert after["live"] == before["live"] and "building" not in after
            self.building = None
        else:
            assert rp.action == "changed", rp.line()
            assert rp.rebuilds == rebuilds(self.live, variant), rp.line()
            last = max(v for (v,) in self.conn.execute(
                "SELECT version FROM aggjobs.rollup_definitions WHERE rollup = %s",
                (ROLLUP,)))
            if rp.rebuilds:
                assert "rebuilt from the raw rows" in rp.line(), rp.line()
                assert after["live"] == before["live"]
                assert after["building"][:2] == (last, fingerprint(describe(declared)))
                assert marks(self.conn, f"{ROLLUP}@v{last}").keys() == set(declared.grains)
                self.building = variant
            else:
                assert "made in place" in rp.line(), rp.line()
                assert "building" not in after
                assert after["live"][:2] == (last, fingerprint(describe(declared)))
                self.live, self.building = variant, None
        self.declared = declared
        if "building" in before and before.get("building") != after.get("building"):
            # a rebuild given up: its tables and state are gone
            gone = before["building"][0]
            assert not marks(self.conn, f"{ROLLUP}@v{gone}")
            assert self.conn.execute(
                "SELECT state FROM aggjobs.rollup_definitions WHERE rollup = %s AND"
                " version = %s", (ROLLUP, gone)).fetchone()[0] == "cancelled"

    # -- refreshes

    @rule(hours=st.sampled_from([0, 1, 6, 24, 48]))
    def advance(self, hours: int) -> None:
        self.clock = min(END, self.clock + timedelta(hours=hours))

    @rule(max_buckets=st.sampled_from([None, 1, 5, 30]),
          budget=st.sampled_from([0.0, 0.0, 0.0, 0.02, None]),
          hours=st.sampled_from([1, 6, 12]))
    def refresh_step(self, max_buckets, budget, hours) -> None:
        self.since_declared += 1
        report = refresh(self.conn, self.declared, as_of=self.clock,
                         settings=self.settings(hours_per_transaction=hours),
                         max_buckets=max_buckets, rebuild_budget_s=budget)
        note(f"refresh at {self.clock:%m-%d %H:%M}: rebuild {report.rebuild}")
        self.after_refresh()
        if report.rebuild is not None:
            assert report.rebuild.version == definitions_of(self.conn).get(
                "live" if report.rebuild.swapped else "building", (None,))[0]
            assert report.rebuild.mismatches == []
            if budget is not None:  # the hourly job's: the check and swap are left to others
                assert not report.rebuild.swapped, report.rebuild
            elif report.rebuild.caught_up:
                assert report.rebuild.swapped or report.rebuild.note, report.rebuild
        assert_live_matches(self.conn)
        defs = definitions_of(self.conn)
        if "building" in defs:  # the rebuilt hours so far equal the raw rows, too
            v = defs["building"][0]
            wm = marks(self.conn, f"{ROLLUP}@v{v}").get(Grain.HOUR)
            if wm is not None:
                assert_equals_raw(self.conn, self.declared, Grain.HOUR, wm,
                                  schema="aggjobs_build", what=f"v{v} being rebuilt: ")

    @rule(delay=st.floats(0.0, 0.3), hours=st.sampled_from([1, 6]))
    def refresh_killed(self, delay: float, hours: int) -> None:
        """A worker refreshing (and rebuilding) on its own connection, terminated after
        `delay` seconds: as the database sees a kill -9, its transaction rolls back and its
        session locks go."""
        self.since_declared += 1
        errors: list[BaseException] = []
        building = definitions_of(self.conn).get("building")
        victim = psycopg.connect(self.url, autocommit=True,
                                 application_name="aggjobs:tests-victim")
        pid = victim.info.backend_pid
        declared, settings = self.declared, self.settings(hours_per_transaction=hours)

        def work() -> None:
            try:
                refresh(victim, declared, as_of=self.clock, settings=settings)
            except psycopg.OperationalError:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        worker = threading.Thread(target=work)
        worker.start()
        time.sleep(delay)
        killed = self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        worker.join(120)
        victim.close()
        assert not worker.is_alive()
        assert not errors, errors
        wait_gone(self.conn, pid)
        note(f"refresh killed after {delay:.3f} s: {killed}")
        SEEN["refresh killed" if killed else "refresh not killed (done first)"] += 1
        if killed and building and definitions_of(self.conn).get("building") == building:
            SEEN["rebuild interrupted"] += 1
            if marks(self.conn, f"{ROLLUP}@v{building[0]}").get(Grain.HOUR):
                SEEN["rebuild interrupted after some hours"] += 1
        self.after_refresh()

    def after_refresh(self) -> None:
        """A rebuild swapped in by the refresh: its version is live."""
        defs = definitions_of(self.conn)
        if self.building is not None and "building" not in defs:
            assert defs["live"][1] == fingerprint(describe(self.building.rollup()))
            self.live, self.building = self.building, None
            SEEN["swapped"] += 1
        if self.building is not None:
            assert defs["building"][1] == fingerprint(describe(self.building.rollup()))
        assert defs["live"][1] == fingerprint(describe(self.live.rollup()))

    def teardown(self) -> None:
        try:
            if self.ids:  # initialized: catch up, then everything equals the raw rows
                catch_up(self.conn, self.declared, self.settings())
                p.refresh_all(self.conn, Settings(database_url=self.url), END)
                assert_all_match(self.conn)
        finally:
            self.conn.close()


def forget_the_rollup(conn: psycopg.Connection) -> None:
    """Between examples (one database for all: dropping one costs a checkpoint): the rows
    deleted as the platform deletes them (the built-in rollups catch up at the end), and the
    rollup no longer declared: `aggjobs migrate --prune` removes it, tables and state."""
    conn.execute("DELETE FROM agent_runs")
    os.environ.pop("AGGJOBS_ROLLUPS", None)
    reload_catalog()
    done = migrate(conn, prune=True)
    assert {rp.action for rp in done.plan.rollups if rp.rollup == ROLLUP} <= {"removed"}
    assert definitions_of(conn) == {}
    assert conn.execute(
        "SELECT (SELECT count(*) FROM pg_tables WHERE tablename LIKE 'run\\_stats%')"
        " + (SELECT count(*) FROM aggjobs.watermarks WHERE rollup LIKE 'run\\_stats%')"
        " + (SELECT count(*) FROM aggjobs.pending_groups WHERE rollup LIKE 'run\\_stats%')"
        " + (SELECT count(*) FROM aggjobs.retired_tables)").fetchone()[0] == 0


def test_any_history_of_writes_changes_refreshes_and_kills_ends_exact(
        db_url: str, declarations: Declarations) -> None:
    run_state_machine_as_test(
        lambda: DefinitionChanges(db_url, declarations),
        settings=hsettings(max_examples=20, stateful_step_count=25, deadline=None,
                           database=None, suppress_health_check=list(HealthCheck)))
    print(dict(SEEN))


# ------------------------------------------------------------------------------ shared setup

V1 = Variant(flagged="failed")
# the filter's value changed and a measure added: a rebuild whose values differ from v1's
V2 = Variant(flagged="cancelled", credits=True)


def load_runs(conn: psycopg.Connection, n: int, days: int, start: datetime = T0) -> None:
    """n agent_runs spread over `days` days from `start` in 3 workspaces and 3 agents (and none),
    every status, set-based."""
    conn.execute(
        """
        INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,
                                runtime_seconds, credits_consumed)
        SELECT 5000000 + g, 1 + g %% 3, 1, nullif(g %% 4, 0), s.status,
               %(t0)s::timestamptz + (g - 1) * (%(span)s::interval / %(n)s),
               CASE WHEN s.status = 'running' THEN NULL
                    ELSE 0.5 + (g::bigint * 7919 %% 10007) / 100.0 END,
               CASE WHEN s.status = 'running' THEN NULL ELSE (g %% 1000) / 100.0 END
        FROM generate_series(1, %(n)s) AS g,
             LATERAL (SELECT (ARRAY['completed', 'failed', 'running', 'cancelled'])
                             [1 + (g / 3) %% 4] AS status) AS s
        """, {"t0": start, "span": timedelta(days=days), "n": n})
    conn.execute("ANALYZE agent_runs")


def start_with(conn: psycopg.Connection, declarations: Declarations, settings: Settings,
               *, as_of: datetime) -> Rollup:
    """V1 declared, migrated and refreshed up to `as_of`; then V2 declared and migrated: its
    rebuild has started (nothing rebuilt yet)."""
    v1 = declarations.declare(V1)
    migrate_declared(conn)
    refresh(conn, v1, as_of=as_of, settings=settings)
    assert_equals_raw(conn, v1, Grain.HOUR, as_of)
    v2 = declarations.declare(V2)
    rp = next(r for r in migrate_declared(conn).plan.rollups if r.rollup == ROLLUP)
    assert (rp.action, rp.version, rp.next_version, rp.rebuilds) == ("changed", 1, 2, True)
    assert "filter" in rp.line() and "credits" in rp.line(), rp.line()
    assert definitions_of(conn)["building"][0] == 2
    return v2


# ------------------------------------------------------------------------------ 2. readers
#
# Readers of the live tables, of a view and of a materialized view over them, as the role
# aggjobs_reader, query without pause while v2 is rebuilt and swapped in: none gets an error,
# each result is all v1's or all v2's, and the views keep their grants, owner, comment and
# index, reading v2's tables after the swap.

READS = {
    "hourly": "SELECT * FROM analytics.run_stats_hourly ORDER BY workspace_id, hour",
    "daily": "SELECT * FROM analytics.run_stats_daily ORDER BY workspace_id, day",
    "view": "SELECT * FROM analytics.run_stats_view ORDER BY workspace_id, hour",
    "matview": "SELECT * FROM analytics.run_stats_days ORDER BY workspace_id, day",
    # prepared on the server (psycopg prepares from the first execution): its plan is
    # invalidated by the swap and made again over the new table
    "prepared": "SELECT workspace_id, hour, total, flagged FROM analytics.run_stats_hourly"
                " ORDER BY workspace_id, hour",
}
VIEWS_SQL = """
CREATE VIEW analytics.run_stats_view AS SELECT * FROM analytics.run_stats_hourly;
GRANT SELECT ON analytics.run_stats_view TO aggjobs_reader;
CREATE MATERIALIZED VIEW analytics.run_stats_days AS
    SELECT workspace_id, day, total, flagged FROM analytics.run_stats_daily;
CREATE UNIQUE INDEX run_stats_days_key ON analytics.run_stats_days (workspace_id, day);
COMMENT ON MATERIALIZED VIEW analytics.run_stats_days IS 'flagged runs per day';
GRANT SELECT ON analytics.run_stats_days TO aggjobs_reader;
"""


def result_of(cur: psycopg.Cursor) -> tuple:
    """A query's result as (columns, rows) without updated_at (when a row was written)."""
    names = [c.name for c in cur.description]
    keep = [i for i, n in enumerate(names) if n != "updated_at"]
    return (tuple(names[i] for i in keep), tuple(
        tuple(tuple(row[i]) if isinstance(row[i], list) else row[i] for i in keep)
        for row in cur.fetchall()))


def read_all(conn: psycopg.Connection) -> dict[str, tuple]:
    return {name: result_of(conn.execute(text, prepare=False)) for name, text in READS.items()}


@dataclass
class Reader:
    name: str
    results: Counter = None  # type: ignore[assignment]
    errors: list = None  # type: ignore[assignment]

    def __post_init__(self):
        self.results, self.errors = Counter(), []


def read_loop(url: str, reader: Reader, stop: threading.Event) -> None:
    prepared = reader.name == "prepared"
    with psycopg.connect(url, autocommit=True, application_name="aggjobs:tests-reader",
                         prepare_threshold=0 if prepared else None) as conn:
        conn.execute("SET ROLE aggjobs_reader")
        while not stop.is_set():
            try:
                reader.results[result_of(conn.execute(READS[reader.name]))] += 1
            except psycopg.Error as exc:
                reader.errors.append(f"{type(exc).__name__}: {exc}")
                if conn.broken:
                    return


def test_readers_see_one_version_or_the_other_across_the_swap(
        conn: psycopg.Connection, db_url: str, declarations: Declarations) -> None:
    load_runs(conn, 3000, days=3)
    as_of = T0 + timedelta(days=4)
    settings = Settings(database_url=db_url, hours_per_transaction=2, rebuild_check="full")
    v2 = start_with(conn, declarations, settings, as_of=as_of)
    conn.execute(VIEWS_SQL)
    v1_results = read_all(conn)
    assert "credits" not in v1_results["hourly"][0]

    readers = [Reader(name) for name in READS for _ in range(2 if name == "hourly" else 1)]
    stop = threading.Event()
    threads = [threading.Thread(target=read_loop, args=(db_url, r, stop)) for r in readers]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        report = refresh(conn, v2, as_of=as_of, settings=settings)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert report.rebuild is not None and report.rebuild.swapped, report.rebuild
    assert report.rebuild.checked == "full" and report.rebuild.mismatches == []

    v2_results = read_all(conn)
    for r in readers:
        assert r.errors == [], (r.name, r.errors[:3])
        seen = set(r.results)
        assert v1_results[r.name] in seen and v2_results[r.name] in seen, (
            f"{r.name}: never read v1's or v2's result ({sum(r.results.values())} reads)")
        assert seen == {v1_results[r.name], v2_results[r.name]}, (
            f"{r.name}: {len(seen - {v1_results[r.name], v2_results[r.name]})} result(s) "
            "neither v1's nor v2's")
    for name in READS:  # the two versions differ (else the check above proves nothing)
        assert v1_results[name] != v2_results[name], name

    # v2's tables are live, equal to the raw rows under v2's definition
    assert definitions_of(conn)["live"][0] == 2
    for grain in v2.grains:
        assert_equals_raw(conn, v2, grain, as_of)
    assert "credits" in v2_results["hourly"][0]
    assert [c.name for c in conn.execute(
        "SELECT * FROM analytics.run_stats_hourly LIMIT 0").description] == [
        "workspace_id", "hour", "total", "flagged", "credits", "p_runtime",
        "p_runtime__keys", "p_runtime__counts", "updated_at"]
    # The view reads v2's table: its flagged counts are the cancelled runs now. Its columns
    # are those it was made with (PostgreSQL expands * when a view is created).
    view_cols, view_rows = v2_results["view"]
    hourly_cols, hourly_rows = v2_results["hourly"]
    assert view_cols == v1_results["view"][0]
    assert "credits" not in view_cols
    at_ = [hourly_cols.index(c) for c in view_cols]
    assert view_rows == tuple(tuple(row[i] for i in at_) for row in hourly_rows)
    cancelled = conn.execute(
        "SELECT count(*) FROM agent_runs WHERE status = 'cancelled' AND started_at < %s",
        (as_of,)).fetchone()[0]
    assert sum(row[view_cols.index("flagged")] for row in view_rows) == cancelled
    assert sum(row[3] for row in v2_results["matview"][1]) == cancelled
    # ... and they kept their grants, owner, comment and index
    for name in ("run_stats_view", "run_stats_days"):
        assert conn.execute("SELECT has_table_privilege('aggjobs_reader', %s, 'SELECT'),"
                            " pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass",
                            (f"analytics.{name}", f"analytics.{name}")).fetchone() == (
            True, "postgres")
    assert conn.execute("SELECT obj_description('analytics.run_stats_days'::regclass,"
                        " 'pg_class')").fetchone()[0] == "flagged runs per day"
    assert conn.execute("SELECT indexrelid::regclass::text FROM pg_index"
                        " WHERE indrelid = 'analytics.run_stats_days'::regclass").fetchall() == [
        ("analytics.run_stats_days_key",)]
    # v1's tables are retired, with their rows
    assert {t for (t,) in conn.execute("SELECT table_name FROM aggjobs.retired_tables")} == {
        "run_stats_hourly__v1", "run_stats_daily__v1"}
    retired = conn.execute("SELECT * FROM aggjobs_retired.run_stats_hourly__v1"
                           " ORDER BY workspace_id, hour")
    assert result_of(retired) == v1_results["hourly"]


# ------------------------------------------------------------------------------ 3. kill -9
#
# A real `aggjobs refresh` process rebuilding v2 is killed (SIGKILL) once some of v2's hours
# are committed: v1 stays live, and a second `aggjobs refresh` finishes the rebuild from
# there and swaps it in, exact.

KILL_START, KILL_DAYS = datetime(2026, 11, 2, tzinfo=UTC), 8  # a Monday, in the past


def cli_refresh(db_url: str, directory: Path, *more: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
    env.update(AGGJOBS_DATABASE_URL=db_url, AGGJOBS_ROLLUPS=V2.module,
               AGGJOBS_HOURS_PER_TRANSACTION="1", AGGJOBS_REBUILD_CHECK="full",
               PYTHONPATH=os.pathsep.join([str(directory), *sys.path]))
    return subprocess.Popen(
        [str(AGGJOBS), "refresh", ROLLUP, "--as-of",
         (KILL_START + timedelta(days=KILL_DAYS)).isoformat(), *more],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_refresh_killed_mid_rebuild_resumes_and_swaps_exact(
        conn: psycopg.Connection, db_url: str, declarations: Declarations) -> None:
    load_runs(conn, 16_000, days=KILL_DAYS, start=KILL_START)
    as_of = KILL_START + timedelta(days=KILL_DAYS)
    v2 = start_with(conn, declarations, Settings(database_url=db_url, hours_per_transaction=24),
                    as_of=as_of)
    key = f"{ROLLUP}@v2"
    first = KILL_START
    started = time.monotonic()
    proc = cli_refresh(db_url, declarations.directory)
    try:
        deadline = time.monotonic() + 60
        while True:
            wm = marks(conn, key).get(Grain.HOUR)
            if wm is not None and wm >= first + timedelta(hours=24):
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the rebuild did not start"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        print(f"killed at {time.monotonic() - started:.2f} s, v2 hours done up to {wm}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    pids = [pid for (pid,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'aggjobs:refresh'")]
    for pid in pids:
        wait_gone(conn, pid)
    # killed part way: v1 live, v2 still being rebuilt, its committed hours right
    defs = definitions_of(conn)
    assert (defs["live"][0], defs["building"][0]) == (1, 2)
    wm = marks(conn, key)[Grain.HOUR]
    assert first < wm < as_of, wm
    assert_equals_raw(conn, v2, Grain.HOUR, wm, schema="aggjobs_build")
    assert_equals_raw(conn, V1.rollup(), Grain.HOUR, as_of)

    started = time.monotonic()
    again = cli_refresh(db_url, declarations.directory, "--json")
    out, err = again.communicate(timeout=300)
    print(f"second refresh: {time.monotonic() - started:.2f} s")
    assert again.returncode == 0, err
    # it went on from the hours the killed one committed, and swapped v2 in
    rebuilt = json.loads(out)[0]["rebuild"]
    assert rebuilt["version"] == 2 and rebuilt["swapped"] is True, rebuilt
    assert rebuilt["new_hours"] == (as_of - wm) // timedelta(hours=1), rebuilt
    defs = definitions_of(conn)
    assert "building" not in defs and defs["live"][0] == 2
    assert dict(conn.execute("SELECT version, state FROM aggjobs.rollup_definitions"
                             " WHERE rollup = %s", (ROLLUP,)).fetchall()) == {
        1: "retired", 2: "live"}
    for grain in v2.grains:
        assert marks(conn, ROLLUP)[grain] == as_of
        assert_equals_raw(conn, v2, grain, as_of)
    assert not marks(conn, key)
    assert {t for (t,) in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'aggjobs_retired'")} == {
        "run_stats_hourly__v1", "run_stats_daily__v1"}
    # v1's rows, retired whole
    assert conn.execute("SELECT sum(total) FROM aggjobs_retired.run_stats_hourly__v1"
                        ).fetchone()[0] == 16_000


# ------------------------------------------------------------------------------ 4. late rows
#
# The platform's writes while v2 is part way rebuilt reach it: behind its watermark they are
# recomputed in v2's tables as in v1's, so that v2 passes its check and is swapped in exact.


def test_changes_during_a_rebuild_reach_the_new_version(
        conn: psycopg.Connection, db_url: str, declarations: Declarations) -> None:
    load_runs(conn, 500, days=3)
    as_of = T0 + timedelta(days=4)
    settings = Settings(database_url=db_url, hours_per_transaction=6, rebuild_check="full")
    v2 = start_with(conn, declarations, settings, as_of=as_of)
    report = refresh(conn, v2, as_of=as_of, settings=settings, rebuild_budget_s=0)
    assert report.rebuild is not None and not report.rebuild.caught_up
    assert marks(conn, f"{ROLLUP}@v2")[Grain.HOUR] == T0 + timedelta(hours=1)  # an hour a tx
    # behind v2's watermark: a cancelled run added, a run moved to another workspace and hour
    p.run(conn, ws=1, at=T0 + timedelta(minutes=30), status="cancelled", credits="2.5")
    conn.execute("UPDATE agent_runs SET workspace_id = 3, started_at = %s"
                 " WHERE id = (SELECT min(id) FROM agent_runs)", (T0 + timedelta(hours=2),))
    report = refresh(conn, v2, as_of=as_of, settings=settings)
    assert report.rebuild.swapped and report.rebuild.mismatches == [], report.rebuild
    for grain in v2.grains:
        assert_equals_raw(conn, v2, grain, as_of)


# ------------------------------------------------------------------------------ 5. NULL agent
#
# Found by the state machine on PostgreSQL 18 (no aggjobs_native there): with a further
# dimension, the portable SQL merges a Quantile of the group whose dimension is NULL (a run
# without an agent) to NULL at the day, while the hour and the C functions have it.


def test_quantile_of_a_null_dimension_group_merges_without_the_c_functions(
        conn: psycopg.Connection, db_url: str, declarations: Declarations) -> None:
    migrate(conn, native=False)  # the portable SQL, as on a server without aggjobs_native
    declared = declarations.declare(Variant(by_agent=True))
    migrate(conn, native=False)
    p.run(conn, ws=1, at=T0 + timedelta(hours=1), runtime=5.0, agent=None)
    p.run(conn, ws=1, at=T0 + timedelta(hours=2), runtime=7.0, agent=1)
    refresh(conn, declared, as_of=T0 + timedelta(days=2), settings=Settings(database_url=db_url))
    for grain in declared.grains:
        assert_equals_raw(conn, declared, grain, T0 + timedelta(days=2))


# -- verify across a swap: the definition it read at the start is checked in each snapshot, so a
# new version swapped in midway is reported as such, not as mismatches of every group.
def test_verify_begun_before_a_swap_says_the_definition_changed(
        conn: psycopg.Connection, db_url: str, declarations: Declarations) -> None:
    from aggjobs.db import definitions
    from aggjobs.engine.verify import verify_grain

    load_runs(conn, 600, days=2)
    as_of = T0 + timedelta(days=3)
    settings = Settings(database_url=db_url, hours_per_transaction=6, rebuild_check="full")
    v2 = start_with(conn, declarations, settings, as_of=as_of)
    v1_live = definitions.versions(conn, v2).live  # what a verify begun now compares with
    assert verify_grain(conn, v1_live, Grain.HOUR, T0, as_of).mismatches == []

    report = refresh(conn, v2, as_of=as_of, settings=settings)
    assert report.rebuild is not None and report.rebuild.swapped, report.rebuild
    with pytest.raises(DefinitionsChanged, match="changed while verify ran"):
        verify_grain(conn, v1_live, Grain.HOUR, T0, as_of)
    now_live = definitions.versions(conn, v2).live
    assert verify_grain(conn, now_live, Grain.HOUR, T0, as_of).mismatches == []
