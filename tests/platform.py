"""Writes to the source tables the way the platform does: plain SQL from another program."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from aggjobs.catalog import BUILTIN_ROLLUPS
from aggjobs.engine.refresh import refresh
from aggjobs.settings import Settings

_ids = itertools.count(1)


def run(conn: psycopg.Connection, *, ws: int, at: datetime, status: str = "completed",
        runtime: float | None = 10.0, credits: str | None = "1.5", user: int = 1,
        agent: int | None = 1) -> int:
    rid = next(_ids)
    if status == "running":
        runtime, credits = None, None
    conn.execute(
        "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,"
        " runtime_seconds, credits_consumed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (rid, ws, user, agent, status, at, runtime, credits),
    )
    return rid


def event(conn: psycopg.Connection, *, ws: int, user: int, at: datetime) -> int:
    eid = next(_ids)
    conn.execute(
        "INSERT INTO user_events (id, workspace_id, user_id, event_type, occurred_at)"
        " VALUES (%s, %s, %s, 'login', %s)", (eid, ws, user, at),
    )
    return eid


def credit(conn: psycopg.Connection, *, ws: int, kind: str, amount: str, at: datetime) -> int:
    cid = next(_ids)
    conn.execute(
        "INSERT INTO credit_transactions (id, workspace_id, user_id, kind, amount, created_at)"
        " VALUES (%s, %s, 1, %s, %s, %s)", (cid, ws, kind, amount, at),
    )
    return cid


def refresh_all(conn: psycopg.Connection, settings: Settings, as_of: datetime, **kw) -> dict:
    return {r.name: refresh(conn, r, as_of=as_of, settings=settings, **kw) for r in BUILTIN_ROLLUPS}


def watermarks(conn: psycopg.Connection) -> dict:
    rows = conn.execute("SELECT rollup, grain, watermark FROM aggjobs.watermarks").fetchall()
    return {(r, g): wm for r, g, wm in rows}


def seed_runs(conn: psycopg.Connection, start: datetime, *, rows: int, every: timedelta
              ) -> None:
    """`rows` agent_runs, one per `every` from `start`, over workspaces 1-3, with every
    status, set-based (seed_sources's runs)."""
    conn.execute(
        """
        INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,
                                runtime_seconds, credits_consumed)
        SELECT 1000000 + g, 1 + g %% 3, 1 + g %% 7, 1,
               (ARRAY['completed', 'failed', 'running', 'cancelled'])[1 + (g / 3) %% 4],
               %(t0)s::timestamptz + g * %(every)s::interval,
               CASE WHEN (g / 3) %% 4 = 2 THEN NULL ELSE 1 + (g * 37 %% 101) * 0.25 END,
               CASE WHEN (g / 3) %% 4 = 2 THEN NULL ELSE (g %% 13) * 0.5 END
        FROM generate_series(0, %(n)s - 1) AS g
        """, {"t0": start, "n": rows, "every": every})


def seed_sources(conn: psycopg.Connection, start: datetime, *, rows: int, every: timedelta,
                 event_offset: timedelta = timedelta()) -> None:
    """`rows` rows in each source, one per `every` from `start`, over workspaces 1-3, with
    every status and ledger kind, set-based."""
    params = {"t0": start, "n": rows, "every": every, "offset": event_offset}
    seed_runs(conn, start, rows=rows, every=every)
    conn.execute(
        """
        INSERT INTO user_events (id, workspace_id, user_id, event_type, occurred_at)
        SELECT 2000000 + g, 1 + g %% 3, g %% 11, 'login',
               %(t0)s::timestamptz + g * %(every)s::interval + %(offset)s::interval
        FROM generate_series(0, %(n)s - 1) AS g
        """, params)
    conn.execute(
        """
        INSERT INTO credit_transactions (id, workspace_id, user_id, kind, amount, created_at)
        SELECT 3000000 + g, 1 + g %% 3, 1,
               (ARRAY['usage', 'refund', 'grant', 'adjustment'])[1 + (g / 3) %% 4],
               1 + (g %% 9) * 0.25, %(t0)s::timestamptz + g * %(every)s::interval
        FROM generate_series(0, %(n)s - 1) AS g
        """, params)


# -- sources as tables partitioned by day (docs/rollups.md, "Partitioned sources") -----------
PARTITIONED_DDL = {
    "agent_runs": """
        CREATE TABLE public.agent_runs (
            id bigint NOT NULL, workspace_id bigint NOT NULL, user_id bigint, agent_id bigint,
            status text NOT NULL, started_at timestamptz NOT NULL, completed_at timestamptz,
            runtime_seconds double precision, credits_consumed numeric(14,4),
            PRIMARY KEY (id, started_at)
        ) PARTITION BY RANGE (started_at)""",
    "user_events": """
        CREATE TABLE public.user_events (
            id bigint NOT NULL, workspace_id bigint NOT NULL, user_id bigint NOT NULL,
            event_type text NOT NULL, occurred_at timestamptz NOT NULL,
            PRIMARY KEY (id, occurred_at)
        ) PARTITION BY RANGE (occurred_at)""",
    "credit_transactions": """
        CREATE TABLE public.credit_transactions (
            id bigint NOT NULL, workspace_id bigint NOT NULL, user_id bigint,
            kind text NOT NULL, amount numeric(14,4) NOT NULL, created_at timestamptz NOT NULL,
            PRIMARY KEY (id, created_at)
        ) PARTITION BY RANGE (created_at)""",
}


def partition_name(table: str, day: datetime) -> str:
    return f"{table}_p{day:%Y%m%d}"


def add_daily_partitions(conn: psycopg.Connection, first: datetime, days: int) -> None:
    """One partition per UTC day [first, first + days) of each source (`first` a UTC
    midnight), as the platform (or pg_partman) makes them."""
    for table in PARTITIONED_DDL:
        for d in range(days):
            lo = first + timedelta(days=d)
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                         .format(sql.Identifier("public", partition_name(table, lo)),
                                 sql.Identifier("public", table), sql.Literal(lo),
                                 sql.Literal(lo + timedelta(days=1))))


def create_partitioned_sources(conn: psycopg.Connection, first: datetime, days: int) -> None:
    """The three sources partitioned by range of their time column: a partition per UTC day
    from `first`, and a default partition for every other time (created before `aggjobs
    migrate`, which keeps them)."""
    for table, ddl in PARTITIONED_DDL.items():
        conn.execute(ddl)
        conn.execute(f"CREATE TABLE public.{table}_default PARTITION OF public.{table} DEFAULT")
    add_daily_partitions(conn, first, days)
