"""Synthetic but realistic data for the three source tables, loaded with set-based SQL.

One transaction per day of data: the day's runs are drawn into a temp table by a single
INSERT ... SELECT over generate_series, and the events and ledger rows are derived from
them, again set-based. Nothing is sent row by row from Python. The statements are the
`demo_*` named queries of sql/demo.sql.

Shape of the data:
- workspace k has weight ~ 1/k^1.1 (a few huge, many tiny); users and agents per workspace
  grow with the weight;
- runs per hour follow a daily curve (1x at 02 UTC, 3x at 14 UTC) and a weekly one
  (weekends 0.4x), normalized so that the average over whole weeks is `runs_per_hour`;
- runtime is log-normal (Box-Muller from random()), credits proportional to runtime;
- the ledger agrees with the runs: one 'usage' row per finished run with credits, same
  amount, workspace and user; plus weekly 'grant's, some 'refund's of failed runs and rare
  'adjustment's;
- about 0.5% of a day's runs are inserted with the next day (late arrivals).

Reproducibility: each chunk calls setseed() with a value derived from (seed, chunk), and
every random() is evaluated over rows in an explicit ORDER BY (inside MATERIALIZED CTEs,
which PostgreSQL evaluates once and in order), so the same spec, end and starting ids give
the same rows whatever the plan or the session's TimeZone. Times are computed only with
epoch arithmetic, 'UTC' conversions and intervals without a day part (which, unlike
'1 day', do not depend on the session TimeZone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from .sql import query

Progress = Callable[[int, int], None]

HOURS_PER_CHUNK = 24
LATE_SHARE = 0.005
# Mean of the seasonal factor over a whole week: daily curve 2 - cos(.) averages 2, the
# weekly one (5 weekdays at 1, 2 weekend days at 0.4) averages 5.8/7.
SEASON_MEAN = 2 * 5.8 / 7
# Ids of users and agents are workspace_id * ID_STRIDE + n, so pools never overlap.
ID_STRIDE = 100_000


@dataclass(frozen=True, kw_only=True)
class DemoSpec:
    days: int = 7
    workspaces: int = 50
    runs_per_hour: int = 2000  # platform-wide average over whole weeks
    seed: int = 42
    end: datetime | None = None  # exclusive end, default now (UTC); data covers [end - days, end)


@dataclass(frozen=True)
class DemoResult:
    runs: int
    events: int
    transactions: int
    start: datetime
    end: datetime


@dataclass(frozen=True)
class _Chunk:
    index: int
    start: datetime
    end: datetime
    grants: list[datetime]  # instants of the weekly grants falling in this chunk
    last: bool


@dataclass
class _Ids:
    """The next free id of each table (ids continue after what is already there)."""
    run: int
    event: int
    transaction: int


# --- planning ------------------------------------------------------------------------------

def _resolve_end(spec: DemoSpec) -> datetime:
    if spec.end is None:
        return datetime.now(UTC)
    if spec.end.tzinfo is None or spec.end.utcoffset() is None:
        raise ValueError("DemoSpec.end must be timezone-aware")  # a naive time is ambiguous
    return spec.end.astimezone(UTC)


def _validate(spec: DemoSpec) -> None:
    if spec.days < 1 or spec.workspaces < 1 or spec.runs_per_hour < 0:
        raise ValueError("DemoSpec needs days >= 1, workspaces >= 1 and runs_per_hour >= 0")
    if spec.workspaces >= ID_STRIDE:
        raise ValueError(f"at most {ID_STRIDE - 1} workspaces")


def _grant_instants(start: datetime, end: datetime) -> list[datetime]:
    """Monday 00:00 UTC of each week in [start, end), and `start` itself as the opening
    grant of the first (partial) week."""
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    monday = midnight - timedelta(days=midnight.weekday())
    instants = [start]
    week = monday + timedelta(days=7)
    while week < end:
        if week > start:
            instants.append(week)
        week += timedelta(days=7)
    return instants


def _plan(spec: DemoSpec, start: datetime, end: datetime) -> list[_Chunk]:
    """Whole days from `start`; each grant goes to the chunk that contains it."""
    grants = _grant_instants(start, end)
    chunks = []
    for i in range(spec.days):
        lo, hi = start + timedelta(days=i), start + timedelta(days=i + 1)
        mine = [g for g in grants if lo <= g < hi]
        chunks.append(_Chunk(i, lo, hi, mine, last=i == spec.days - 1))
    return chunks


def _chunk_seed(seed: int, index: int) -> float:
    """A setseed() argument in [-1, 1) for (seed, chunk): chunks get unrelated sequences."""
    digest = hashlib.blake2b(f"aggjobs-demo:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1


# --- loading -------------------------------------------------------------------------------

def _next_ids(conn: psycopg.Connection) -> _Ids:
    row = conn.execute(query("demo_next_ids")).fetchone()
    assert row is not None
    return _Ids(row[0] + 1, row[1] + 1, row[2] + 1)


def _create_staging(conn: psycopg.Connection, spec: DemoSpec) -> None:
    with conn.transaction():
        conn.execute(query("demo_staging"))
        conn.execute(query("demo_workspaces"),
                     {"rph": spec.runs_per_hour, "workspaces": spec.workspaces})


def _drop_staging(conn: psycopg.Connection) -> None:
    if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.execute(query("demo_drop_staging"))


def _load_chunk(conn: psycopg.Connection, spec: DemoSpec, chunk: _Chunk, ids: _Ids,
                start: datetime, end: datetime) -> tuple[int, int, int]:
    """One day in one transaction; returns the (runs, events, transactions) inserted."""
    common: dict[str, Any] = {
        "chunk_start": chunk.start, "hours": HOURS_PER_CHUNK, "start": start, "end": end,
    }
    conn.execute(query("demo_chunk_settings"))  # no JIT, a larger work_mem (demo.sql)
    conn.execute(query("demo_setseed"), (_chunk_seed(spec.seed, chunk.index),))
    conn.execute(query("demo_empty_runs"))
    conn.execute(query("demo_take_late"))
    generated = conn.execute(query("demo_generate_runs"), {
        **common, "rph": spec.runs_per_hour, "season_mean": SEASON_MEAN, "stride": ID_STRIDE,
        "first_id": ids.run - 1, "late_share": LATE_SHARE, "last": chunk.last,
    }).rowcount
    ids.run += generated
    conn.execute(query("demo_hold_late"))
    runs = conn.execute(query("demo_insert_runs")).rowcount
    events = conn.execute(
        query("demo_insert_events"), {**common, "first_id": ids.event - 1}).rowcount
    ids.event += events
    transactions = conn.execute(query("demo_insert_transactions"), {
        **common, "first_id": ids.transaction - 1, "grants": chunk.grants,
    }).rowcount
    ids.transaction += transactions
    return runs, events, transactions


def load_demo(conn: psycopg.Connection, spec: DemoSpec, *,
              progress: Progress | None = None) -> DemoResult:
    """Load `spec.days` days of demo data ending at `spec.end`, one transaction per day.

    `conn` should be in autocommit mode; ids continue after the tables' current max(id).
    """
    _validate(spec)
    if not conn.autocommit:
        raise ValueError("load_demo needs an autocommit connection (it commits per day)")
    end = _resolve_end(spec)
    start = end - timedelta(days=spec.days)
    chunks = _plan(spec, start, end)
    ids = _next_ids(conn)
    totals = [0, 0, 0]
    _create_staging(conn, spec)
    try:
        for chunk in chunks:
            with conn.transaction():
                counts = _load_chunk(conn, spec, chunk, ids, start, end)
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
            if progress is not None:
                progress(chunk.index + 1, len(chunks))
    finally:
        _drop_staging(conn)
    return DemoResult(runs=totals[0], events=totals[1], transactions=totals[2],
                      start=start, end=end)
