"""Quick benchmark: one hour's execution-metrics refresh beside the seed's SQL, same data.

    python bench/hourly.py [--runs 1000000] [--workspaces 5000] [--repeat 3] [--url URL]

Creates (and drops) a database `aggjobs_bench` on the server of --url (default: the
machine's PostgreSQL at 127.0.0.1:5432), loads one hour of runs with skewed workspace sizes
and log-normal runtimes (heap shuffled within the hour), then measures, each --repeat times,
median and spread, in the same run:

- floor: `SELECT workspace_id, count(*) ... GROUP BY` of the hour;
- seed: the seed's INSERT ... ON CONFLICT for the hour, into an empty table;
- ours: the engine's recompute of the hour (exact p95 plus the mergeable sketch), empty table;
- late row: refresh after one late run in one workspace of that hour;
- 1,000 late updates: refresh after 1,000 runs of the hour changed status.

Prints a table with ratios and writes bench/results/hourly.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from aggjobs.catalog import Grain, get_rollup
from aggjobs.db.migrate import migrate
from aggjobs.engine.recompute import recompute_range
from aggjobs.engine.refresh import refresh
from aggjobs.settings import Settings

HOUR = datetime(2026, 11, 2, 14, tzinfo=UTC)
DB = "aggjobs_bench"

LOAD = """
INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at, completed_at,
                        runtime_seconds, credits_consumed)
SELECT g, ws, ws * 100 + (g %% 37), ws * 10 + (g %% 7), st,
       %(hour)s::timestamptz + random() * interval '1 hour',
       NULL, rt, CASE WHEN st = 'running' THEN NULL ELSE round((rt / 20)::numeric, 4) END
FROM (
    SELECT g,
           1 + floor(%(ws)s * power(random(), 3))::bigint AS ws,
           CASE WHEN r < 0.90 THEN 'completed' WHEN r < 0.98 THEN 'failed'
                WHEN r < 0.99 THEN 'cancelled' ELSE 'running' END AS st,
           CASE WHEN r < 0.99 THEN exp(3 + sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
           END AS rt
    FROM (SELECT g, random() AS r FROM generate_series(1, %(n)s) AS g) AS x
) AS y
ORDER BY random()
"""
SEED = """
INSERT INTO bench_seed (workspace_id, hour, total_executions, successful_executions,
    failed_executions, avg_runtime, p95_runtime, total_credits)
SELECT workspace_id, DATE_TRUNC('hour', started_at) AS hour, COUNT(*),
    COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FILTER (WHERE status = 'failed'),
    AVG(runtime_seconds), PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY runtime_seconds),
    SUM(credits_consumed)
FROM public.agent_runs WHERE started_at >= %(lo)s AND started_at < %(hi)s
GROUP BY workspace_id, DATE_TRUNC('hour', started_at)
ON CONFLICT (workspace_id, hour) DO UPDATE SET total_executions = EXCLUDED.total_executions,
    successful_executions = EXCLUDED.successful_executions,
    failed_executions = EXCLUDED.failed_executions, avg_runtime = EXCLUDED.avg_runtime,
    p95_runtime = EXCLUDED.p95_runtime, total_credits = EXCLUDED.total_credits
"""
FLOOR = """
SELECT workspace_id, count(*) FROM public.agent_runs
WHERE started_at >= %(lo)s AND started_at < %(hi)s GROUP BY workspace_id
"""


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], object] | None = None
          ) -> dict:
    samples = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "max_ms": max(samples), "samples_ms": samples}


def setup(admin_url: str, n: int, workspaces: int) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=DB)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("""CREATE TABLE bench_seed (workspace_id bigint, hour timestamptz,
            total_executions bigint, successful_executions bigint, failed_executions bigint,
            avg_runtime float8, p95_runtime float8, total_credits numeric,
            UNIQUE (workspace_id, hour))""")
        started = time.perf_counter()
        conn.execute(LOAD, {"hour": HOUR, "ws": workspaces, "n": n})
        conn.execute("VACUUM ANALYZE agent_runs")
        print(f"loaded {n:,} runs in {time.perf_counter() - started:.1f} s")
    return url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--workspaces", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()

    url = setup(args.url, args.runs, args.workspaces)
    settings = Settings(database_url=url, statement_timeout_ms=0)
    em = get_rollup("execution_metrics")
    window = {"lo": HOUR, "hi": HOUR + timedelta(hours=1)}
    conn = psycopg.connect(url, autocommit=True, options="-c work_mem=64MB")
    conn.execute(FLOOR, window).fetchall()  # warm the cache

    def ours() -> None:
        with conn.transaction():
            recompute_range(conn, em, Grain.HOUR, HOUR, HOUR + timedelta(hours=1))

    results = {
        "floor": timed(lambda: conn.execute(FLOOR, window).fetchall(), args.repeat),
        "seed": timed(lambda: conn.execute(SEED, window), args.repeat,
                      before=lambda: conn.execute("TRUNCATE bench_seed")),
        "ours": timed(ours, args.repeat,
                      before=lambda: conn.execute("TRUNCATE analytics.execution_metrics_hourly")),
    }
    as_of = HOUR + timedelta(hours=1)
    refresh(conn, em, as_of=as_of, settings=settings)
    next_id = conn.execute("SELECT max(id) + 1 FROM agent_runs").fetchone()[0]

    def late_row() -> None:
        conn.execute("INSERT INTO agent_runs (id, workspace_id, status, started_at, runtime_seconds)"
                     " VALUES (%s, 7, 'completed', %s, 12.5)", (next_id + late_row.n, HOUR))
        late_row.n += 1

    late_row.n = 0
    results["late_row_refresh"] = timed(
        lambda: refresh(conn, em, as_of=as_of, settings=settings), args.repeat, before=late_row)

    def late_updates() -> None:
        conn.execute("UPDATE agent_runs SET status = CASE status WHEN 'failed' THEN 'completed'"
                     " ELSE 'failed' END WHERE id IN (SELECT id FROM agent_runs"
                     " ORDER BY random() LIMIT 1000)")

    results["late_1000_updates_refresh"] = timed(
        lambda: refresh(conn, em, as_of=as_of, settings=settings), args.repeat,
        before=late_updates)
    conn.close()

    seed = results["seed"]["median_ms"]
    print(f"\n{args.runs:,} runs in one hour, {args.workspaces:,} workspaces, "
          f"medians of {args.repeat}")
    print(f"{'measure':<28}{'median ms':>12}{'min':>10}{'max':>10}{'/ seed':>9}")
    for name, r in results.items():
        print(f"{name:<28}{r['median_ms']:>12,.0f}{r['min_ms']:>10,.0f}{r['max_ms']:>10,.0f}"
              f"{r['median_ms'] / seed:>9.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "hourly.json").write_text(json.dumps(
        {"runs": args.runs, "workspaces": args.workspaces, "results": results}, indent=2))
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))


if __name__ == "__main__":
    main()
