"""CPU time of the hourly and daily steps with the C functions and with the portable SQL,
alternated on the same database (issue 20): a figure a shared machine's load disturbs less
than wall time.

    python bench/paths_cpu.py [--data-dir bench/results/embedded] [--db aggjobs_bench]
                              [--repeat 5]

Runs on the embedded server and database `bench/suite.py --embedded` loaded (its hours rolled
up by the daily section). Per round, for each path: `migrate` installs or drops the C
functions, then the execution-metrics hourly step of the data's last hour, the seed's SQL of
the same hour and the daily step of the last day, each in a rolled-back transaction (the first
round also once untimed, to warm). The CPU is the server's: the postmaster's live children and
those it reaped (a parallel plan's workers count), from /proc; the server must be this
benchmark's alone. Prints medians; leaves the C functions installed and stops the server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from suite import RESULTS, SEED_HOURLY, SEED_TABLE  # noqa: E402

from aggjobs.catalog import Grain, get_rollup  # noqa: E402
from aggjobs.db.embedded import embedded_pid, embedded_url, stop_embedded  # noqa: E402
from aggjobs.db.migrate import migrate  # noqa: E402
from aggjobs.engine.recompute import native_installed, recompute_range  # noqa: E402

EM = get_rollup("execution_metrics")
TICK = os.sysconf("SC_CLK_TCK")


class Rollback(Exception):
    pass


def stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def server_cpu_s(postmaster: int) -> float:
    """utime + stime of every live child of the postmaster, plus those of its reaped ones."""
    fields = stat(postmaster)
    ticks = int(fields[13]) + int(fields[14])  # cutime, cstime
    for child in psutil.Process(postmaster).children():
        try:
            f = stat(child.pid)
        except FileNotFoundError:
            continue  # exited meanwhile: counted in cutime from now on
        ticks += int(f[11]) + int(f[12])
    return ticks / TICK


def measure(conn: psycopg.Connection, postmaster: int, fn: Callable[[], object]
            ) -> tuple[float, float]:
    """CPU and wall milliseconds of `fn` in a transaction rolled back."""
    cpu, wall = server_cpu_s(postmaster), time.perf_counter()
    try:
        with conn.transaction():
            fn()
            raise Rollback
    except Rollback:
        pass
    return (server_cpu_s(postmaster) - cpu) * 1000, (time.perf_counter() - wall) * 1000


def statements(conn: psycopg.Connection) -> dict[str, Callable[[], object]]:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lo, day = end - timedelta(hours=1), end - timedelta(days=1)
    return {"hourly step": lambda: recompute_range(conn, EM, Grain.HOUR, lo, end),
            "seed's hourly SQL": lambda: conn.execute(SEED_HOURLY, {"lo": lo, "hi": end}),
            "daily step": lambda: recompute_range(conn, EM, Grain.DAY, day, end)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=RESULTS / "embedded")
    ap.add_argument("--db", default="aggjobs_bench")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    url = psycopg.conninfo.make_conninfo(embedded_url(args.data_dir), dbname=args.db)
    postmaster = embedded_pid(args.data_dir)
    assert postmaster is not None
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with psycopg.connect(url, autocommit=True, application_name="aggjobs:bench",
                         options="-c work_mem=64MB -c jit=off") as conn:
        conn.execute(SEED_TABLE)
        for round_ in range(args.repeat):
            for path in ("C functions", "portable SQL"):
                migrate(conn, native=path == "C functions")
                assert native_installed(conn) == (path == "C functions"), path
                conn.execute("VACUUM public.bench_seed")
                for name, fn in statements(conn).items():
                    if round_ == 0:
                        measure(conn, postmaster, fn)
                    samples.setdefault((name, path), []).append(measure(conn, postmaster, fn))
        migrate(conn, native=True)
    stop_embedded(args.data_dir)
    for (name, path), xs in samples.items():
        print(f"{name:<18} {path:<13} CPU {statistics.median(x[0] for x in xs):>6,.0f} ms"
              f"   wall {statistics.median(x[1] for x in xs):>6,.0f} ms   (medians of {len(xs)})")


if __name__ == "__main__":
    main()
