"""The `daily_rollup` job again and again on a loaded suite database, its day rolled up anew
each time: the rollups' day rows of the data's last day deleted and their day watermarks
moved back, so the job recomputes them, then scores and reports the day, as it does after
midnight (issue 20).

    python bench/daily_job.py --db aggjobs_bench_50k_24h [--runs 4]
                              [--order declared,history] [--step-concurrency 3]

Runs on a database `bench/suite.py --only daily` loaded (its hours rolled up). `--order`
alternates, run by run: `declared` forgets the job's earlier runs first, so the rollup steps
start in the job's order; `history` keeps them, so they start longest first (by the last
run's times, docs/jobs.md). Prints each run's time, the rollup steps' span (first start to
last end) and each step's seconds, then the medians by order. Tables are vacuumed (not
analyzed: their statistics stay as they were) after the deletes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).parent))
from suite import BUILTIN_ROLLUPS, daily_job_time, database  # noqa: E402

from aggjobs.catalog import Grain  # noqa: E402
from aggjobs.jobs.runner import RunRequest, RunResult, run_job  # noqa: E402
from aggjobs.settings import Settings  # noqa: E402
from aggjobs.sql.rollup import table_ident  # noqa: E402

DAILY = [r for r in BUILTIN_ROLLUPS if Grain.DAY in r.grains]
REWRITTEN = [sql.Identifier("analytics", "daily_reports"),
             sql.Identifier("analytics", "workspace_health_daily"),
             sql.Identifier("aggjobs", "pending_groups")]


def day_undone(conn: psycopg.Connection, *, forget_runs: bool) -> datetime:
    """The data's last day taken back out of the day grains; returns its start."""
    day = conn.execute("SELECT max(day) FROM analytics.execution_metrics_daily").fetchone()[0]
    start = conn.execute("SELECT %s::date::timestamp AT TIME ZONE 'UTC'", (day,)).fetchone()[0]
    with conn.transaction():
        for r in DAILY:
            conn.execute(sql.SQL("DELETE FROM {} WHERE day >= %s").format(
                table_ident(r, Grain.DAY)), (day,))
            conn.execute("UPDATE aggjobs.watermarks SET watermark = %s"
                         " WHERE rollup = %s AND grain = 'day'", (start, r.name))
        if forget_runs:
            conn.execute("DELETE FROM aggjobs.job_runs WHERE job = 'daily_rollup'")
    # and what the job rewrites besides, as autovacuum would (this machine's cluster runs
    # without it): each run left 50,000 dead reports and health rows behind
    for table in [*(table_ident(r, Grain.DAY) for r in DAILY), *REWRITTEN]:
        conn.execute(sql.SQL("VACUUM {}").format(table))
    return start


def rollup_span(result: RunResult) -> float:
    """Seconds from the first rollup step's start to the last one's end."""
    starts = [(s.started_at, s.seconds) for s in result.steps
              if s.name.endswith(".day") and s.started_at is not None]
    ends = [at + timedelta(seconds=seconds) for at, seconds in starts]
    return (max(ends) - min(at for at, _ in starts)).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="the server's URL; its database is replaced by --db")
    ap.add_argument("--db", default="aggjobs_bench_50k_24h")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--order", default="declared,history",
                    help="the orders to alternate, comma-separated: declared, history")
    ap.add_argument("--step-concurrency", type=int, default=Settings().step_concurrency)
    args = ap.parse_args()
    orders = args.order.split(",")
    if not set(orders) <= {"declared", "history"}:
        ap.error("--order takes declared and history")
    url = database(args.url, args.db, fresh=False)
    settings = Settings(database_url=url, statement_timeout_ms=0,
                        max_buckets_per_refresh=100_000,
                        step_concurrency=args.step_concurrency)
    samples: dict[str, list[tuple[float, float]]] = {o: [] for o in orders}
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(args.runs):
            order = orders[i % len(orders)]
            start = day_undone(conn, forget_runs=order == "declared")
            started = time.perf_counter()
            as_of = daily_job_time(start + timedelta(days=1))
            result = run_job(RunRequest(job="daily_rollup", as_of=as_of, trigger="manual",
                                        who="bench"), settings)
            seconds = time.perf_counter() - started
            if result.status != "succeeded":
                raise SystemExit(f"daily_rollup {result.status}: {result.error}")
            span = rollup_span(result)
            samples[order].append((seconds, span))
            print(f"{order:>8}: job {seconds:5.1f} s, rollup steps {span:4.1f} s  "
                  + "  ".join(f"{s.name} {s.seconds:.1f}" for s in result.steps), flush=True)
    for order, runs in samples.items():
        if runs:
            print(f"{order:>8}: median job {statistics.median(r[0] for r in runs):.1f} s, "
                  f"rollup steps {statistics.median(r[1] for r in runs):.1f} s "
                  f"({len(runs)} runs, {args.step_concurrency} sessions)")


if __name__ == "__main__":
    main()
