"""Property: hostile raw rows (infinite, BC and far-future times; NaN, +-Infinity, 1e308 sums,
subnormal and negative runtimes; NaN credits; NULLs where allowed) among normal ones never
make refresh, verify or status fail; every group, the normal ones included, equals the
hand-written recomputation under the documented rules (docs/rollups.md: "Supported times",
"Overflow, Infinity and NaN"); and deleting the hostile rows returns everything to clean."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from aggjobs.catalog import BUILTIN_ROLLUPS
from aggjobs.engine.verify import verify_grain
from aggjobs.monitor import overview
from aggjobs.settings import Settings
from tests import platform as p
from tests.integration.test_properties import fresh_database
from tests.reference import assert_all_match

pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday
MIDWAY = T0 + timedelta(days=1, hours=6)  # a refresh between the two batches of writes
FINAL = T0 + timedelta(days=7)  # the week of every supported row is complete
TIME_COLUMN = {"agent_runs": "started_at", "user_events": "occurred_at",
               "credit_transactions": "created_at"}
OUTSIDE = ["-infinity", "infinity", "0044-03-15 12:00:00+00 BC", "10000-01-01 00:00:00+00",
           "1969-12-31 23:30:00+00", "2200-01-01 00:00:00+00"]
HOSTILE_RUNTIMES = [math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-310, -5.0, 0.0]

WHEN = st.one_of(st.integers(0, 3 * 24 * 60 - 1).map(lambda m: ("in", m)),
                 st.sampled_from(OUTSIDE).map(lambda t: ("out", t)))
NORMAL_RUNTIME = st.one_of(st.none(), st.floats(0.5, 1e4, allow_nan=False))
RUNTIME = st.one_of(NORMAL_RUNTIME, st.sampled_from(HOSTILE_RUNTIMES).map(lambda v: ("bad", v)))
MONEY = st.decimals(min_value=0, max_value=Decimal("9999.9999"), places=4)
CREDITS = st.one_of(st.none(), MONEY, st.just(("bad", "NaN")))
WS = st.integers(1, 3)
ROW = st.one_of(
    st.tuples(st.just("agent_runs"), WS, WHEN, RUNTIME, CREDITS,
              st.sampled_from(["completed", "failed", "running"])),
    st.tuples(st.just("user_events"), WS, WHEN, st.integers(1, 4)),
    st.tuples(st.just("credit_transactions"), WS, WHEN,
              st.sampled_from(["usage", "refund", "grant"]),
              st.one_of(MONEY, st.just(("bad", "NaN")))),
)
BATCH = st.lists(ROW, min_size=1, max_size=15)


def is_bad(value: object) -> bool:
    return isinstance(value, tuple) and value[0] == "bad"


def plain(value: object) -> object:
    return value[1] if is_bad(value) else value


def insert(conn, i: int, row: tuple) -> bool:
    """Insert drawn row number `i`; returns whether it is hostile."""
    table, ws, (kind, when) = row[:3]
    at = T0 + timedelta(minutes=when) if kind == "in" else when
    hostile = kind == "out" or any(is_bad(v) for v in row[3:])
    rid = 5_000_000 + i
    if table == "agent_runs":
        runtime, credits, status = row[3:]
        conn.execute("INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status,"
                     " started_at, runtime_seconds, credits_consumed)"
                     " VALUES (%s, %s, 1, %s, %s, %s, %s, %s)",
                     (rid, ws, ws % 2, status, at, plain(runtime), plain(credits)))
    elif table == "user_events":
        conn.execute("INSERT INTO user_events (id, workspace_id, user_id, event_type,"
                     " occurred_at) VALUES (%s, %s, %s, 'login', %s)", (rid, ws, row[3], at))
    else:
        conn.execute("INSERT INTO credit_transactions (id, workspace_id, user_id, kind, amount,"
                     " created_at) VALUES (%s, %s, 1, %s, %s, %s)",
                     (rid, ws, row[3], plain(row[4]), at))
    return hostile


def check(conn, settings: Settings, clock: datetime) -> dict:
    """Refresh every rollup; then verify agrees, every group equals the reference, and
    status answers. Returns status's overview."""
    reports = p.refresh_all(conn, settings, clock)
    assert not [g.quarantined for r in reports.values() for g in r.grains if g.quarantined]
    for rollup in BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            found = verify_grain(conn, rollup, grain, T0 - timedelta(days=7), clock)
            assert found.mismatches == [] and found.quarantined == [], found
    assert_all_match(conn)
    return overview(conn, settings, now=clock).as_dict()


# Every kind at least once: each time outside, each hostile runtime in one workspace-hour, the
# issue's three 1e308 runs in one hour and one more in another hour of the same day and week
# as -Infinity, NaN credits and amounts; late hostile rows in the second batch.
EVERY_KIND = (
    [("agent_runs", 1, ("out", t), 5.0, None, "completed") for t in OUTSIDE]
    + [("user_events", 2, ("out", t), 1) for t in OUTSIDE[:3]]
    + [("credit_transactions", 3, ("out", t), "usage", Decimal(1)) for t in OUTSIDE[3:]]
    + [("agent_runs", 1, ("in", 70), ("bad", v), None, "completed") for v in HOSTILE_RUNTIMES]
    + [("agent_runs", 2, ("in", 130 + i), ("bad", 1e308), Decimal(1), "completed")
       for i in range(3)]
    + [("agent_runs", 2, ("in", 30), 2.0, ("bad", "NaN"), "failed"),
       ("agent_runs", 3, ("in", 200), 4.0, Decimal("2.5"), "completed"),
       ("user_events", 3, ("in", 200), 2),
       ("credit_transactions", 1, ("in", 90), "refund", ("bad", "NaN"))]
)
LATE = [("agent_runs", 2, ("in", 600), ("bad", -math.inf), None, "completed"),
        ("agent_runs", 2, ("in", 12 * 60), ("bad", 1e308), None, "completed"),
        ("credit_transactions", 2, ("out", "-infinity"), "grant", Decimal(3)),
        ("agent_runs", 3, ("in", 201), 1.0, None, "failed")]


@given(first=BATCH, second=BATCH)
@example(first=EVERY_KIND, second=LATE)
@hsettings(max_examples=8, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_hostile_rows_break_nothing_and_leave_nothing_behind(
        server_url: str, template_db: str, first: list, second: list) -> None:
    with fresh_database(server_url, template_db, "Asia/Kolkata") as (conn, url):
        settings = Settings(database_url=url, hours_per_transaction=24)
        hostile = [i for i, row in enumerate(first) if insert(conn, i, row)]
        check(conn, settings, MIDWAY)
        hostile += [len(first) + i for i, row in enumerate(second)
                    if insert(conn, len(first) + i, row)]  # late rows among them
        state = check(conn, settings, FINAL)
        outside = {}
        for row in first + second:
            if row[2][0] == "out":
                outside[row[0]] = outside.get(row[0], 0) + 1
        note(f"outside: {outside}, hostile: {len(hostile)}")
        assert {r["source"]: r["rows"] for r in state["unsupported_rows"]} == outside

        for table in TIME_COLUMN:  # the hostile rows go: everything is clean again
            conn.execute(f"DELETE FROM {table} WHERE id - 5000000 = ANY(%s)", (hostile,))
        state = check(conn, settings, FINAL)
        assert state["problems"] == [], state["problems"]
        leftover = conn.execute(
            "SELECT (SELECT count(*) FROM aggjobs.pending_groups)"
            " + (SELECT count(*) FROM aggjobs.invalidation_log)"
            " + (SELECT count(*) FROM aggjobs.quarantine)").fetchone()[0]
        assert leftover == 0
