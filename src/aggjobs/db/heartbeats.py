"""The heartbeats of workers and schedulers (aggjobs.heartbeats, migration 0016): written by
each process (aggjobs.jobs.liveness), read by `aggjobs status`, the dashboard and /metrics
(aggjobs.monitor.liveness), trimmed by the cleanup job (jobs/cleanup.py). Plain functions
of a connection."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg.rows import dict_row

from .. import __version__
from ..sql import query

Kind = Literal["worker", "scheduler"]


@dataclass(frozen=True)
class Process:
    """Who sends a heartbeat: a worker (its Celery node name) or a scheduler."""

    kind: Kind
    name: str
    queues: list[str] = field(default_factory=list)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = __version__

    def params(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "host": self.host, "pid": self.pid,
                "queues": self.queues, "version": self.version}


def beat(conn: psycopg.Connection, process: Process, *, first: bool = False) -> None:
    """Record that `process` is alive now (`first`: it has just started)."""
    conn.execute(query("heartbeat"), {**process.params(), "first": first})


def stopped(conn: psycopg.Connection, process: Process) -> None:
    """Record `process`'s clean shutdown."""
    conn.execute(query("heartbeat_stopped"), process.params())


def read(conn: psycopg.Connection) -> list[dict]:
    """Every process seen, with `age_seconds` (since its last heartbeat), `down_seconds`
    (since it was last alive: its stop, else its last heartbeat) and `checked_at`."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("heartbeats")).fetchall()

