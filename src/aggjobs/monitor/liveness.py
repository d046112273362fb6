"""Which workers and schedulers are alive, from their heartbeats (aggjobs.heartbeats, written
by aggjobs.jobs.liveness whatever the broker): shared by `aggjobs status`, the dashboard,
/metrics and the alerts (docs/jobs.md, "Liveness")."""

from __future__ import annotations

import psycopg

from ..db import heartbeats
from ..settings import Settings

HEARTBEAT_MAX_S = 15.0
# A process is up while its last heartbeat is at most this many intervals old: it may miss
# two (a slow database, a busy event loop) before it is counted as gone.
MISSED_BEATS = 3
# Rows of processes not alive for this long are deleted by the cleanup job.
KEEP_S = 86400.0
KINDS = (("worker", "workers"), ("scheduler", "schedulers"))


def heartbeat_interval(settings: Settings) -> float:
    """Seconds between two heartbeats: 15, or a quarter of AGGJOBS_LIVENESS_SECONDS when that
    is shorter, so that a process is seen gone well before the problem is raised."""
    if not settings.liveness_seconds:
        return HEARTBEAT_MAX_S
    return max(0.25, min(HEARTBEAT_MAX_S, settings.liveness_seconds / 4))


def state(conn: psycopg.Connection, settings: Settings) -> dict:
    """{"workers": [...], "schedulers": [...], "checked_at"}: each process seen, with `up`,
    `state` (up, stopped, silent), `age_seconds` since its last heartbeat and `down_seconds`
    since it was last alive."""
    rows = heartbeats.read(conn)
    window = MISSED_BEATS * heartbeat_interval(settings)
    out: dict = {plural: [] for _, plural in KINDS}
    out["checked_at"] = rows[0]["checked_at"] if rows else None
    for row in rows:
        row = {k: v for k, v in row.items() if k != "checked_at"}
        row["up"] = row["stopped_at"] is None and row["age_seconds"] <= window
        row["state"] = ("up" if row["up"] else "stopped" if row["stopped_at"] is not None
                        else "silent")
        out[dict(KINDS)[row["kind"]]].append(row)
    out["liveness_seconds"] = settings.liveness_seconds
    return out


def counts(live: dict) -> dict[str, int]:
    """How many workers and schedulers are up."""
    return {kind: sum(r["up"] for r in live[plural]) for kind, plural in KINDS}
