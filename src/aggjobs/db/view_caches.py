"""The materialized views' caches: what the views read instead of merging sketches and user
sets on every refresh (docs/rollups.md, "Materialized views").

- analytics.platform_daily_stats: per UTC day of the last 90, p95 over the day's daily
  sketches merged and active users over the union of its daily user sets;
- analytics.workspace_window_stats: per workspace, the same over the last 7 complete UTC days.

`update_view_caches` recomputes only the values whose input rows changed since they were
computed (a stamp per value, see src/aggjobs/sql/view_caches.sql), and every window value
when the window moved to a new day. One transaction, under a transaction-level advisory lock
so that two jobs never do it at once; a killed process leaves the old caches.
"""

from __future__ import annotations

import time
from datetime import date

import psycopg

from ..sql import query
from .connect import scalar

# The rollups whose daily rows the caches merge.
READS = frozenset({"execution_metrics", "user_activity"})
STATEMENTS = ("platform_day_p95", "platform_day_users", "platform_days_outside",
              "window_p95", "window_users", "window_empty")


def utc_today(conn: psycopg.Connection) -> date:
    """The views' reference day: the database's now(), in UTC."""
    return scalar(conn, query("utc_today"))


def update_view_caches(conn: psycopg.Connection, today: date | None = None) -> dict:
    """Bring both caches up to date for `today` (default: the current UTC date); returns how
    many values each statement recomputed and how long it took."""
    detail: dict = {}
    with conn.transaction():
        conn.execute(query("view_caches_lock"))
        day = today or utc_today(conn)
        detail["today"] = day.isoformat()
        for name in STATEMENTS:
            started = time.perf_counter()
            n = len(conn.execute(query(name), {"today": day}).fetchall())
            detail[name] = {"rows": n, "ms": round((time.perf_counter() - started) * 1000, 1)}
    detail["rows"] = sum(v["rows"] for v in detail.values() if isinstance(v, dict))
    return detail


def forget_stamps(conn: psycopg.Connection) -> None:
    """Make the next update recompute every cached value (a rollup they read was swapped for
    a new version); in the caller's transaction, under the caches' lock."""
    conn.execute(query("view_caches_lock"))
    conn.execute(query("forget_view_cache_stamps"))
