"""Hand-made platform data for the daily reports: six workspaces over ten days.

DAY (Tuesday 2026-03-10) is the report's day; PREV its previous day, WEEK the same weekday a
week before (both with data). Per workspace:
- 1: steady every day, one failed run a day, a 'running' and a 'cancelled' run on DAY;
- 2: busy and growing, a failure every fourth run; on DAY one run's 'usage' ledger row is
  missing (a ledger mismatch);
- 3: created mid-week: first activity on day 6 (Sunday 03-08), so no week-over-week;
- 4: on DAY every run failed;
- 5: on DAY user events only (active, no runs); runs on WEEK;
- 6: on DAY credit transactions only (not active; its usage has no runs: a ledger mismatch).
Every finished run with credits has a 'usage' row of the same amount at the same instant,
except the two above. Agents are ws*100 + 0..2.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from aggjobs.settings import Settings
from tests import platform as p
from tests.conftest import create_database, drop_database

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, in the past
DAYS = 10
DAY = (T0 + timedelta(days=8)).date()  # Tuesday 2026-03-10
PREV = DAY - timedelta(days=1)
WEEK = DAY - timedelta(days=7)
FIRST = T0.date()
AS_OF = T0 + timedelta(days=DAYS)  # every day of data complete
MISSING_USAGE = "2.7500"  # workspace 2's run on DAY whose usage row is missing
ORPHAN_USAGE = "4.0000"  # workspace 6's usage on DAY without any run

_ids = itertools.count(10_000_000)


@dataclass
class Loaded:
    url: str
    settings: Settings


def add_run(conn: psycopg.Connection, *, ws: int, at: datetime, agent: int, status: str,
            runtime: float | None, credits: str | None, user: int, usage: bool = True) -> None:
    rid = next(_ids)
    conn.execute(
        "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,"
        " completed_at, runtime_seconds, credits_consumed) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
        (rid, ws, user, agent, status, at,
         None if runtime is None else at + timedelta(seconds=runtime), runtime, credits))
    if usage and credits is not None:
        p.credit(conn, ws=ws, kind="usage", amount=credits, at=at)


def load(conn: psycopg.Connection) -> None:
    for d in range(DAYS):
        day0 = T0 + timedelta(days=d)
        is_day = day0.date() == DAY
        for ws, n in ((1, 4 + d % 3), (2, 10 + 2 * d), (3, 3 + d if d >= 6 else 0),
                      (4, 3 if is_day else 5), (5, 6 if d in (1, 7) else 0)):
            for i in range(n):
                at = day0 + timedelta(hours=(3 * i + d + ws) % 24, minutes=(7 * i) % 60)
                status = "completed"
                if (ws == 1 and i == 0) or (ws == 2 and i % 4 == 1) or (ws == 4 and is_day) \
                        or (ws == 3 and i == 2):
                    status = "failed"
                runtime = 5.0 + ((i * 37 + d * 11 + ws * 5) % 90) * 1.5
                credits = f"{0.25 * (1 + (i + d + ws) % 8):.4f}"
                missing = ws == 2 and is_day and i == 3
                if missing:
                    credits = MISSING_USAGE
                add_run(conn, ws=ws, at=at, agent=ws * 100 + i % 3, status=status,
                        runtime=runtime, credits=credits, user=ws * 1000 + i % (ws + 1),
                        usage=not missing)
            if ws in (1, 2, 4) or (ws == 3 and d >= 6) or (ws == 5 and d in (1, 7, 8)):
                for u in range(ws + 1):
                    for k in range(1 + u % 2):
                        p.event(conn, ws=ws, user=ws * 1000 + u,
                                at=day0 + timedelta(hours=2 + 5 * u + k, minutes=13))
        if d % 7 == 0:
            for ws in (1, 2, 4):
                p.credit(conn, ws=ws, kind="grant", amount="100", at=day0 + timedelta(hours=1))
        p.credit(conn, ws=2, kind="refund", amount="0.5000",
                 at=day0 + timedelta(hours=20))
    day_start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    add_run(conn, ws=1, at=day_start + timedelta(hours=22, minutes=30), agent=100,
            status="running", runtime=None, credits=None, user=1000)
    add_run(conn, ws=1, at=day_start + timedelta(hours=22, minutes=40), agent=101,
            status="cancelled", runtime=None, credits="0.1000", user=1001)
    p.credit(conn, ws=6, kind="usage", amount=ORPHAN_USAGE, at=day_start + timedelta(hours=9))
    p.credit(conn, ws=6, kind="grant", amount="50", at=day_start + timedelta(hours=9))


def load_and_refresh(url: str) -> Settings:
    settings = Settings(database_url=url)
    with psycopg.connect(url, autocommit=True) as conn:
        load(conn)
        p.refresh_all(conn, settings, AS_OF)
    return settings


@pytest.fixture
def loaded(db_url: str, settings: Settings) -> Settings:
    """A fresh database with the data above, rolled up (every grain) as of AS_OF."""
    load_and_refresh(db_url)
    return settings


@pytest.fixture(scope="package")
def shared(server_url: str, template_db: str) -> Iterator[Loaded]:
    """One loaded database for the tests that only read (the CLI without storing)."""
    name = f"aggjobs_rpt_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=template_db)
    try:
        yield Loaded(url, load_and_refresh(url))
    finally:
        drop_database(server_url, name)


def day_of(d: int) -> date:
    return (T0 + timedelta(days=d)).date()
