"""Property: after any sequence of platform writes and refreshes, every rollup at every grain
equals the hand-written recomputation from the raw rows, for every bucket behind its watermark.

Each hypothesis example runs in a fresh database copied from the migrated template (hypothesis
cannot use function-scoped fixtures), with a session TimeZone drawn among zones that must not
change any bucket, and engine settings drawn so that batching and coalescing paths all run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain, get_rollup
from aggjobs.settings import Settings
from tests import platform as p
from tests.conftest import create_database, drop_database
from tests.reference import COLUMNS, assert_all_match, assert_matches, close, expected, stored

pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday; no DST change of the zones below nearby
SPAN_MIN = 3 * 24 * 60  # the ~3 days most rows fall in
WORKSPACES = st.integers(1, 4)
USERS = st.integers(1, 5)
# Zones that must not move a UTC bucket: UTC, half- and quarter-hour offsets, west of UTC, and
# two DST zones (their transitions are weeks away from the window).
ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "Etc/GMT+11", "Europe/Berlin",
         "America/New_York"]

TABLES = {
    "agent_runs": "started_at",
    "user_events": "occurred_at",
    "credit_transactions": "created_at",
}

# ------------------------------------------------------------------------------ strategies

# When a row is written, resolved against the refresh clock when the operation runs:
#   ("in", m)     T0 + m minutes, m within the ~3 days (behind the watermark once refreshed),
#   ("past", m)   T0 - m minutes, up to 10 days before: far behind, before the first bucket,
#   ("now", m)    minute m of the clock's current hour (an incomplete bucket),
#   ("behind", m) m minutes before the clock: just behind the watermark.
WHEN = st.one_of(
    st.tuples(st.just("in"), st.integers(0, SPAN_MIN - 1)),
    st.tuples(st.just("past"), st.integers(1, 10 * 24 * 60)),
    st.tuples(st.just("now"), st.integers(0, 59)),
    st.tuples(st.just("behind"), st.integers(1, 6 * 60)),
)
RUNTIME = st.one_of(
    st.none(),
    st.sampled_from([0.5, 10.0, 10.0, 60.0, 3600.0]),
    st.floats(1e-3, 1e5, allow_nan=False, allow_infinity=False),
)
MONEY = st.decimals(min_value=0, max_value=Decimal("9999.9999"), places=4)
CREDITS = st.one_of(st.none(), MONEY)
AMOUNT = st.decimals(min_value=Decimal("-999.9999"), max_value=Decimal("9999.9999"), places=4)
TABLE = st.sampled_from(sorted(TABLES))
PICK = st.integers(0, 10_000)  # index (mod the number of candidate rows) of the row touched


def agent_of(user: int) -> int | None:
    """A run's agent, from its drawn user: three agents, and runs without one (NULL)."""
    return None if user == 5 else user % 3


OP = st.one_of(
    st.tuples(st.just("run"), WORKSPACES, WHEN,
              st.sampled_from(["running", "running", "completed", "failed", "cancelled"]),
              RUNTIME, CREDITS, USERS),
    st.tuples(st.just("event"), WORKSPACES, USERS, WHEN),
    st.tuples(st.just("credit"), WORKSPACES,
              st.sampled_from(["usage", "refund", "grant", "adjustment"]), AMOUNT, WHEN),
    # a running run ends: status, runtime and credits set
    st.tuples(st.just("finish"), PICK, st.sampled_from(["completed", "failed"]), RUNTIME,
              CREDITS),
    # a row's values change in place (same workspace, same hour)
    st.tuples(st.just("touch"), TABLE, PICK, RUNTIME, AMOUNT, USERS),
    st.tuples(st.just("move_time"), TABLE, PICK, WHEN),
    st.tuples(st.just("move_ws"), TABLE, PICK, WORKSPACES),
    st.tuples(st.just("delete"), TABLE, PICK),
    # every row of one workspace-hour goes: its groups must vanish
    st.tuples(st.just("delete_group"), TABLE, PICK),
    st.tuples(st.just("refresh"), st.integers(0, 20 * 60),
              st.one_of(st.none(), st.none(), st.integers(1, 4)),
              st.sampled_from([None, None, None, "hour"])),
)
OPS = st.lists(OP, min_size=1, max_size=40)
SETTINGS = st.fixed_dictionaries({
    "hours_per_transaction": st.sampled_from([1, 6]),
    "dirty_groups_per_transaction": st.sampled_from([1, 3, 20_000]),
    "coalesce_fraction": st.sampled_from([0.01, 0.5, 1.0]),
    "scan_groups": st.sampled_from([1, 2, 8]),
})

# ------------------------------------------------------------------------------ the runner


@contextmanager
def fresh_database(server_url: str, template_db: str, zone: str
                   ) -> Iterator[tuple[psycopg.Connection, str]]:
    name = f"aggjobs_p_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=template_db)
    try:
        with psycopg.connect(url, autocommit=True, application_name="aggjobs:tests",
                             options=f"-c TimeZone={zone}") as conn:
            assert conn.execute("SHOW TimeZone").fetchone()[0] == zone
            yield conn, url
    finally:
        drop_database(server_url, name)


def assert_stale_only_where_pending(conn: psycopg.Connection, grains: list[Grain]) -> None:
    """For grains the last refresh skipped: a group may differ from the raw rows only while
    it, or a finer group in it, waits in pending_groups (docs/contract.md#exactness: equal
    once the pending groups are recomputed)."""
    marks = p.watermarks(conn)
    for rollup in BUILTIN_ROLLUPS:
        for grain in (g for g in grains if g in rollup.grains):
            below = marks[(rollup.name, grain.value)]
            want, have = (f(conn, rollup.name, grain, below) for f in (expected, stored))
            # a group pending at this grain, or holding a group pending at a finer one (that
            # one marks it when it is recomputed)
            finer = [g.value for g in rollup.grains[: rollup.grains.index(grain) + 1]]
            pending = set()
            for ws, b in conn.execute(
                    "SELECT workspace_id, bucket FROM aggjobs.pending_groups"
                    " WHERE rollup = %s AND grain = ANY(%s)", (rollup.name, finer)):
                start = grain.floor(b)
                pending.add((ws, start if grain is Grain.HOUR else start.date()))
            for key in want.keys() | have.keys():
                a, b = have.get(key), want.get(key)
                same = a is not None and b is not None and all(
                    close(x, y, 0.01 if name == "p95_runtime" else 1e-9)
                    for name, x, y in zip(COLUMNS[rollup.name], a, b, strict=True))
                assert same or key[:2] in pending, (rollup.name, grain.value, key, a, b)


def pending_behind_watermarks(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) FROM aggjobs.pending_groups AS pg JOIN aggjobs.watermarks AS w"
        " USING (rollup, grain) WHERE pg.bucket < w.watermark"
    ).fetchone()[0]


@contextmanager
def played(server_url: str, template_db: str, ops: list[tuple], engine: dict, zone: str
           ) -> Iterator[World]:
    """A fresh database in which the drawn operations have been applied, each noted."""
    with fresh_database(server_url, template_db, zone) as (conn, url):
        world = World(conn, Settings(database_url=url, **engine))
        for i, op in enumerate(ops):
            note(f"op {i}: {op} (clock {world.clock.isoformat()})")
            world.apply(op)
        yield world


@dataclass
class World:
    conn: psycopg.Connection
    settings: Settings
    clock: datetime = T0
    refreshes: int = 0

    def at(self, when: tuple[str, int]) -> datetime:
        kind, m = when
        if kind == "in":
            return T0 + timedelta(minutes=m)
        if kind == "past":
            return T0 - timedelta(minutes=m)
        if kind == "now":
            return Grain.HOUR.floor(self.clock) + timedelta(minutes=m)
        return self.clock - timedelta(minutes=m)

    def pick(self, table: str, index: int, where: str = "true") -> int | None:
        ids = [i for (i,) in self.conn.execute(
            f"SELECT id FROM {table} WHERE {where} ORDER BY id").fetchall()]
        return ids[index % len(ids)] if ids else None

    def apply(self, op: tuple) -> None:
        conn, kind = self.conn, op[0]
        if kind == "run":
            _, ws, when, status, runtime, credits, user = op
            p.run(conn, ws=ws, at=self.at(when), status=status, runtime=runtime,
                  credits=credits, user=user, agent=agent_of(user))
        elif kind == "event":
            _, ws, user, when = op
            p.event(conn, ws=ws, user=user, at=self.at(when))
        elif kind == "credit":
            _, ws, kind_, amount, when = op
            p.credit(conn, ws=ws, kind=kind_, amount=amount, at=self.at(when))
        elif kind == "finish":
            _, index, status, runtime, credits = op
            rid = self.pick("agent_runs", index, "status = 'running'")
            if rid is not None:
                conn.execute(
                    "UPDATE agent_runs SET status = %s, runtime_seconds = %s,"
                    " credits_consumed = %s WHERE id = %s", (status, runtime, credits, rid))
        elif kind == "touch":
            _, table, index, runtime, amount, user = op
            rid = self.pick(table, index)
            if rid is None:
                return
            if table == "agent_runs":
                conn.execute("UPDATE agent_runs SET runtime_seconds = %s,"
                             " credits_consumed = %s WHERE id = %s",
                             (runtime, abs(amount), rid))
            elif table == "user_events":
                conn.execute("UPDATE user_events SET user_id = %s WHERE id = %s", (user, rid))
            else:
                conn.execute("UPDATE credit_transactions SET amount = %s,"
                             " kind = CASE kind WHEN 'usage' THEN 'refund' WHEN 'refund'"
                             " THEN 'grant' WHEN 'grant' THEN 'adjustment' ELSE 'usage' END"
                             " WHERE id = %s", (amount, rid))
        elif kind == "move_time":
            _, table, index, when = op
            rid = self.pick(table, index)
            if rid is not None:
                conn.execute(f"UPDATE {table} SET {TABLES[table]} = %s WHERE id = %s",
                             (self.at(when), rid))
        elif kind == "move_ws":
            _, table, index, ws = op
            rid = self.pick(table, index)
            if rid is not None:
                conn.execute(f"UPDATE {table} SET workspace_id = %s WHERE id = %s", (ws, rid))
        elif kind == "delete":
            _, table, index = op
            rid = self.pick(table, index)
            if rid is not None:
                conn.execute(f"DELETE FROM {table} WHERE id = %s", (rid,))
        elif kind == "delete_group":
            _, table, index = op
            rid = self.pick(table, index)
            if rid is not None:
                t = TABLES[table]
                conn.execute(
                    f"DELETE FROM {table} AS x USING {table} AS y WHERE y.id = %s"
                    f" AND x.workspace_id = y.workspace_id"
                    f" AND date_trunc('hour', x.{t}, 'UTC') = date_trunc('hour', y.{t}, 'UTC')",
                    (rid,))
                gone = conn.execute(f"SELECT count(*) FROM {table} AS x WHERE id = %s",
                                    (rid,)).fetchone()[0]
                assert gone == 0
        elif kind == "refresh":
            _, advance, max_buckets, only = op
            self.clock += timedelta(minutes=advance)
            grains = [Grain(only)] if only else None
            self.refresh(max_buckets=max_buckets, grains=grains)
        else:  # pragma: no cover - the strategy makes no other kind
            raise AssertionError(op)

    def refresh(self, *, max_buckets: int | None = None, grains: list[Grain] | None = None
                ) -> None:
        reports = p.refresh_all(self.conn, self.settings, self.clock, max_buckets=max_buckets,
                                grains=grains)
        self.refreshes += 1
        for report in reports.values():
            for g in report.grains:
                # watermarks only move forward and never past the refresh time
                if g.watermark_before is not None:
                    assert g.watermark_after >= g.watermark_before
                if g.watermark_after is not None:
                    assert g.watermark_after <= self.clock
                    assert g.watermark_after == g.grain.floor(g.watermark_after)
        if grains is None:  # every grain ran: nothing dirty may wait behind a watermark
            assert_all_match(self.conn)
            assert pending_behind_watermarks(self.conn) == 0
        else:
            marks = p.watermarks(self.conn)
            for rollup in BUILTIN_ROLLUPS:
                for grain in (g for g in grains if g in rollup.grains):
                    assert_matches(self.conn, rollup.name, grain,
                                   marks[(rollup.name, grain.value)])
            skipped = [g for g in Grain if g not in grains]
            assert_stale_only_where_pending(self.conn, skipped)

    def final(self) -> None:
        """Refresh far enough ahead that every week holding a row is complete, and check
        that every row is then covered by every grain."""
        latest = max(
            [self.clock, T0 + timedelta(days=3)]
            + [t for table, col in TABLES.items()
               for (t,) in [self.conn.execute(f"SELECT max({col}) FROM {table}").fetchone()]
               if t is not None]
        )
        self.clock = max(self.clock, Grain.WEEK.floor(latest) + timedelta(weeks=1))
        self.refresh()
        marks = p.watermarks(self.conn)
        for rollup in BUILTIN_ROLLUPS:
            for grain in rollup.grains:
                mark = marks[(rollup.name, grain.value)]
                assert mark == grain.floor(self.clock), (rollup.name, grain, mark)
                assert mark > latest
        # every raw row is counted once in every table of every grain
        totals = {
            "execution_metrics": ("agent_runs", "total_executions"),
            "user_activity": ("user_events", "total_events"),
            "credit_consumption": ("credit_transactions", "transactions"),
            "agent_executions": ("agent_runs", "total_executions"),
        }
        for rollup, (table, column) in totals.items():
            raw = self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for grain in get_rollup(rollup).grains:
                rolled = self.conn.execute(
                    f"SELECT coalesce(sum({column}), 0) FROM analytics.{rollup}_"
                    f"{grain.table_suffix}").fetchone()[0]
                assert rolled == raw, (rollup, grain, rolled, raw)


# ------------------------------------------------------------------------------ the tests

NULL_AND_VANISHING = [
    # ws 1, hour T0+2: one cancelled run with no runtime -> avg and p95 NULL at every grain
    ("run", 1, ("in", 125), "cancelled", None, None, 1),
    # ws 2, hour T0+3: two runs, later all deleted
    ("run", 2, ("in", 190), "completed", 5.0, Decimal("1.5"), 1),
    ("run", 2, ("in", 200), "failed", 7.0, Decimal("2.5"), 2),
    ("run", 3, ("in", 200), "completed", 9.0, Decimal("1"), 2),
    ("event", 2, 1, ("in", 195)),
    ("credit", 2, "usage", Decimal("3.25"), ("in", 230)),
    ("refresh", 30 * 60, None, None),
    ("delete_group", "agent_runs", 1),
    ("delete_group", "user_events", 0),
    ("delete_group", "credit_transactions", 0),
    ("refresh", 0, None, None),
]


@given(ops=OPS, engine=SETTINGS, zone=st.sampled_from(ZONES))
@example(ops=NULL_AND_VANISHING, engine={"hours_per_transaction": 6,
                                         "dirty_groups_per_transaction": 20_000,
                                         "coalesce_fraction": 0.5}, zone="Asia/Kolkata")
@hsettings(max_examples=25, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_history_of_writes_and_refreshes_matches_the_raw_rows(
        server_url: str, template_db: str, ops: list[tuple], engine: dict, zone: str) -> None:
    with played(server_url, template_db, ops, engine, zone) as world:
        world.final()
        assert world.refreshes >= 1


def stored_row(conn: psycopg.Connection, table: str, column: str, ws: int, bucket) -> tuple | None:
    return conn.execute(
        f"SELECT avg_runtime, p95_runtime, total_executions FROM analytics.{table}"
        f" WHERE workspace_id = %s AND {column} = %s", (ws, bucket)).fetchone()


def test_null_runtime_hour_and_emptied_workspace_hour(server_url: str, template_db: str) -> None:
    """The fixed scenario of the @example above, with its specific outcomes spelled out."""
    with fresh_database(server_url, template_db, "Asia/Kolkata") as (conn, url):
        world = World(conn, Settings(database_url=url))
        for op in NULL_AND_VANISHING[:6]:
            world.apply(op)
        world.apply(NULL_AND_VANISHING[6])  # refresh at T0 + 30 h
        day = T0.date()
        for table, col, bucket in (("execution_metrics_hourly", "hour", T0 + timedelta(hours=3)),
                                   ("execution_metrics_daily", "day", day)):
            assert stored_row(conn, table, col, 2, bucket) == (6.0, pytest.approx(6.9, rel=0.01), 2)
        for table, col, bucket in (("execution_metrics_hourly", "hour", T0 + timedelta(hours=2)),
                                   ("execution_metrics_daily", "day", day)):
            # ws 1 has only the cancelled run: counted, but no runtime to average
            assert stored_row(conn, table, col, 1, bucket) == (None, None, 1)
        for op in NULL_AND_VANISHING[7:]:
            world.apply(op)
        assert conn.execute("SELECT count(*) FROM agent_runs WHERE workspace_id = 2"
                            ).fetchone()[0] == 0
        for rollup in BUILTIN_ROLLUPS:
            hourly = conn.execute(
                f"SELECT count(*) FROM analytics.{rollup.table(Grain.HOUR)}"
                " WHERE workspace_id = 2").fetchone()[0]
            daily = conn.execute(
                f"SELECT count(*) FROM analytics.{rollup.table(Grain.DAY)}"
                " WHERE workspace_id = 2").fetchone()[0]
            assert (rollup.name, hourly, daily) == (rollup.name, 0, 0)
        # ws 3 shared the emptied hour's bucket and is untouched
        assert stored_row(conn, "execution_metrics_hourly", "hour", 3,
                          T0 + timedelta(hours=3)) == (9.0, 9.0, 1)
        world.final()
        weekly = conn.execute("SELECT workspace_id, total_executions, avg_runtime, p95_runtime"
                              " FROM analytics.execution_metrics_weekly ORDER BY 1").fetchall()
        assert weekly == [(1, 1, None, None), (3, 1, 9.0, pytest.approx(9.0, rel=0.0075))]


# ------------------------------------------------------------------------------ DST
#
# psycopg returns timestamptz values in the session's TimeZone (a ZoneInfo), and Python adds a
# timedelta to such a datetime in wall-clock time: in Europe/Berlin, 2026-03-29 00:00Z + 1 day
# is 2026-03-29 23:00Z. The engine converts every time it reads back to UTC before stepping;
# these tests pin that around the spring-forward change.

SPRING_FORWARD = datetime(2026, 3, 29, tzinfo=UTC)  # Europe/Berlin: 01:00Z becomes 03:00 CEST


def berlin_runs(conn: psycopg.Connection, start: datetime, hours: int, workspaces) -> None:
    for h in range(hours):
        for ws in workspaces:
            p.run(conn, ws=ws, at=start + timedelta(hours=h, minutes=5), runtime=1.0 + h)


def test_dst_coalesced_dirty_day_on_the_change_day(server_url: str, template_db: str) -> None:
    """Recomputing the whole day 2026-03-29 deletes days in [Mar 29, Mar 29) (nothing) and
    inserts from 23 hours: the day's row is still there, so the refresh fails, every time."""
    with fresh_database(server_url, template_db, "Europe/Berlin") as (conn, url):
        world = World(conn, Settings(database_url=url))
        berlin_runs(conn, SPRING_FORWARD - timedelta(days=2), 96, (1, 2))
        world.clock = SPRING_FORWARD + timedelta(days=3)
        world.refresh()
        for ws in (1, 2):  # both groups of the day dirty: the bucket is recomputed whole
            p.run(conn, ws=ws, at=SPRING_FORWARD + timedelta(hours=12, minutes=30),
                  runtime=500.0)
        world.refresh()


def test_dst_coalesced_dirty_week_keeps_its_sunday(server_url: str, template_db: str) -> None:
    """Recomputing the whole week of 2026-03-23 reads days [Mar 23, Mar 29): Sunday Mar 29 is
    dropped from the week silently."""
    with fresh_database(server_url, template_db, "Europe/Berlin") as (conn, url):
        world = World(conn, Settings(database_url=url))
        monday = SPRING_FORWARD - timedelta(days=6)
        berlin_runs(conn, monday, 8 * 24, (1, 2))
        world.clock = monday + timedelta(weeks=2)
        world.refresh()
        for ws in (1, 2):  # a late run on Wednesday in both workspaces
            p.run(conn, ws=ws, at=monday + timedelta(days=2, hours=12, minutes=30))
        world.refresh()


def test_dst_daily_catch_up_across_the_change(server_url: str, template_db: str) -> None:
    """Days caught up 7 per transaction from a watermark read back in Europe/Berlin: the chunk
    ends at Mar 29 23:00Z, so the next chunk rebuilds Mar 29 from its last hour alone."""
    with fresh_database(server_url, template_db, "Europe/Berlin") as (conn, url):
        world = World(conn, Settings(database_url=url))
        berlin_runs(conn, SPRING_FORWARD - timedelta(days=9), 13 * 24, (1,))
        world.clock = SPRING_FORWARD - timedelta(days=6)
        world.refresh()
        world.clock = SPRING_FORWARD + timedelta(days=4)
        world.refresh()
