"""Writes to the source tables the way the platform does: plain SQL from another program."""

from __future__ import annotations

import itertools
from datetime import datetime

import psycopg

from aggjobs.catalog import ROLLUPS
from aggjobs.engine.refresh import refresh
from aggjobs.settings import Settings

_ids = itertools.count(1)


def run(conn: psycopg.Connection, *, ws: int, at: datetime, status: str = "completed",
        runtime: float | None = 10.0, credits: str | None = "1.5", user: int = 1) -> int:
    rid = next(_ids)
    if status == "running":
        runtime, credits = None, None
    conn.execute(
        "INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status, started_at,"
        " runtime_seconds, credits_consumed) VALUES (%s, %s, %s, 1, %s, %s, %s, %s)",
        (rid, ws, user, status, at, runtime, credits),
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
    return {r.name: refresh(conn, r, as_of=as_of, settings=settings, **kw) for r in ROLLUPS}


def watermarks(conn: psycopg.Connection) -> dict:
    rows = conn.execute("SELECT rollup, grain, watermark FROM aggjobs.watermarks").fetchall()
    return {(r, g): wm for r, g, wm in rows}
