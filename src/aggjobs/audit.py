"""aggjobs.audit_log: who did what, when, with which parameters, how it ended, and from where
(docs/contract.md#audit-log; docs/security.md).

`source` is the client address for what came over HTTP (aggjobs.api), and
`<kind>:<user>@<host>` for what a local process did: `cli:` the `aggjobs` command, `worker:`
a job run in a Celery worker (or anything else not started from the command line).
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .sql import query


def local_source(kind: str) -> str:
    """`<kind>:<user>@<host>` of this process (also the actor of what the command line
    does)."""
    return f"{kind}:{local_user()}@{socket.gethostname()}"


def local_user() -> str:
    """This process's user: $LOGNAME or $USER, else the name of its uid (so the same under
    cron, systemd or a container without USER), else the uid itself."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def write(conn: psycopg.Connection, *, actor: str, action: str, target: str | None,
          params: dict, outcome: str, source: str | None) -> None:
    """One audit row (in the caller's transaction, if any)."""
    conn.execute(query("audit"), {"actor": actor, "action": action, "target": target,
                                  "params": Jsonb(params), "outcome": outcome,
                                  "source": source})


def entries(conn: psycopg.Connection, *, since: datetime | None, limit: int) -> list[dict]:
    """The audit log, newest first: at most `limit` entries, those at or after `since` if
    given."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("audit_entries"), {"since": since, "limit": limit}).fetchall()
