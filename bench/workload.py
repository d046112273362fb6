"""The reference workload of the benchmarks, generated set-based inside PostgreSQL.

Shape (../shared/PERF-NOTES.md): `workspaces` workspaces with skewed sizes (workspace
1 + floor(W * u^3): the largest holds ~6% of runs, most hold under a hundred runs an hour),
`runs_per_hour` runs in every hour (90% completed, 8% failed, 1% cancelled, 1% still
running), log-normal runtimes (median 20 s), credits proportional to runtime; user events at
`events_per_run` and one ledger 'usage' row per finished run with credits, plus a 'refund'
for 1% of failed runs. Each hour's rows are written in random order (the heap is shuffled
within the hour, as when many writers insert concurrently), hours in time order.

Secondary indexes are dropped during the load and rebuilt after it (what a bulk load does);
the tracking triggers are disabled during it, so the load itself logs no invalidations.

Two layouts of the sources: `plain` tables (what `aggjobs migrate` creates when they are
missing) or `partitioned` by UTC day (created before the migration, as the platform would:
tests/platform.py holds their DDL), with a partition for every day the load writes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.platform import (  # noqa: E402  the platform's DDL, shared with the tests
    add_daily_partitions,
    create_partitioned_sources,
    partition_name,
)

SOURCES = ("agent_runs", "user_events", "credit_transactions")

RUNS = """
INSERT INTO public.agent_runs (id, workspace_id, user_id, agent_id, status, started_at,
                               completed_at, runtime_seconds, credits_consumed)
SELECT %(first_id)s + g, ws, ws * 100 + (g %% 37), ws * 10 + (g %% 7), st, t,
       CASE WHEN st <> 'running' THEN t + make_interval(secs => rt) END,
       rt, CASE WHEN st = 'running' THEN NULL ELSE round((rt / 20)::numeric, 4) END
FROM (
    SELECT g, ws, st, %(hour)s::timestamptz + u * interval '1 hour' AS t,
           CASE WHEN st <> 'running'
                THEN exp(3 + sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())) END AS rt
    FROM (
        SELECT g, random() AS u,
               1 + floor(%(ws)s * power(random(), 3))::bigint AS ws,
               CASE WHEN r < 0.90 THEN 'completed' WHEN r < 0.98 THEN 'failed'
                    WHEN r < 0.99 THEN 'cancelled' ELSE 'running' END AS st
        FROM (SELECT g, random() AS r FROM generate_series(1, %(n)s) AS g) AS x
    ) AS y
) AS z
ORDER BY random()
"""

# Events and ledger rows are derived from the hour's runs (same workspaces, same skew).
EVENTS = """
INSERT INTO public.user_events (id, workspace_id, user_id, event_type, occurred_at)
SELECT id, workspace_id, user_id, 'run_started', started_at
FROM public.agent_runs
WHERE started_at >= %(hour)s AND started_at < %(hour)s::timestamptz + interval '1 hour'
  AND user_id IS NOT NULL AND random() < %(rate)s
"""
LEDGER = """
INSERT INTO public.credit_transactions (id, workspace_id, user_id, kind, amount, created_at)
SELECT id, workspace_id, user_id, 'usage', credits_consumed, completed_at
FROM public.agent_runs
WHERE started_at >= %(hour)s AND started_at < %(hour)s::timestamptz + interval '1 hour'
  AND credits_consumed > 0
UNION ALL
SELECT id + %(refund_ids)s, workspace_id, user_id, 'refund', credits_consumed, completed_at
FROM public.agent_runs
WHERE started_at >= %(hour)s AND started_at < %(hour)s::timestamptz + interval '1 hour'
  AND status = 'failed' AND credits_consumed > 0 AND id %% 100 = 0
"""


@dataclass(frozen=True)
class Workload:
    start: datetime  # first hour (UTC, whole hour)
    hours: int
    runs_per_hour: int
    workspaces: int
    events_per_run: float = 0.5

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.hours)

    def days(self) -> list[datetime]:
        """The UTC days it writes into, and the next one (the writes of the ingest figures)."""
        first = self.start.replace(hour=0)
        return [first + timedelta(days=d)
                for d in range((self.end - first + timedelta(days=1)).days + 1)]


def create_partitioned(conn: psycopg.Connection, w: Workload) -> None:
    """The sources partitioned by day, before `aggjobs migrate` (which keeps them)."""
    create_partitioned_sources(conn, w.days()[0], len(w.days()))


def add_partitions(conn: psycopg.Connection, w: Workload) -> None:
    """A partition for each day of `w` that has none, if the sources are partitioned (rows
    of other days would land in the default partition)."""
    if conn.execute("SELECT relkind FROM pg_class WHERE oid = 'public.agent_runs'::regclass"
                    ).fetchone()[0] != "p":
        return
    for day in w.days():
        exists = conn.execute("SELECT to_regclass(%s)",
                              (f"public.{partition_name('agent_runs', day)}",)).fetchone()[0]
        if exists is None:
            add_daily_partitions(conn, day, 1)


def secondary_indexes(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(name, definition) of the non-unique indexes on the sources."""
    return conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " AND tablename = ANY(%s) AND indexdef NOT LIKE 'CREATE UNIQUE%%'",
        (list(SOURCES),),
    ).fetchall()


def load(conn: psycopg.Connection, w: Workload, *, progress: bool = True) -> dict:
    """Append `w` to the sources (ids continue after the current maximum); returns figures."""
    started = time.perf_counter()
    add_partitions(conn, w)
    indexes = secondary_indexes(conn)
    for name, _ in indexes:
        conn.execute(f'DROP INDEX public."{name}"')
    for table in SOURCES:
        conn.execute(f"ALTER TABLE public.{table} DISABLE TRIGGER USER")
    first_id = conn.execute("SELECT coalesce(max(id), 0) FROM public.agent_runs").fetchone()[0]
    refund_ids = 10 ** 12
    for h in range(w.hours):
        hour = w.start + timedelta(hours=h)
        conn.execute(RUNS, {"first_id": first_id + h * w.runs_per_hour, "hour": hour,
                            "ws": w.workspaces, "n": w.runs_per_hour})
        conn.execute(EVENTS, {"hour": hour, "rate": w.events_per_run})
        conn.execute(LEDGER, {"hour": hour, "refund_ids": refund_ids})
        if progress:
            print(f"  loaded hour {h + 1}/{w.hours} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    for table in SOURCES:
        conn.execute(f"ALTER TABLE public.{table} ENABLE TRIGGER USER")
    loaded = time.perf_counter() - started
    for _, definition in indexes:  # a partitioned table's reads "ON ONLY": all partitions
        conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
    conn.execute("VACUUM ANALYZE public.agent_runs, public.user_events,"
                 " public.credit_transactions")
    return {"runs": w.hours * w.runs_per_hour, "load_s": loaded,
            "index_and_vacuum_s": time.perf_counter() - started - loaded}
