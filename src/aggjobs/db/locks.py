"""Foreign holders of aggjobs' advisory locks (docs/security.md, "Advisory locks"): the query,
here for the runner and the engine to name a holder in a message; aggjobs.monitor.locks lists
them all as problems.

The locks' keys are `hashtext` of public names, and pg_locks shows every held key to every
session, so any role that can connect can take one and stall the jobs that need it (a run
of the job is skipped, a refresh waits). That cannot be prevented in PostgreSQL; what can be
done is to name the holder: `aggjobs status` lists each one as a problem (so it is alerted
on), and a skipped run or a refresh giving up names it, with the statement that ends it.
A holder is foreign when its role is none aggjobs runs as: not a member of aggjobs_worker
nor of the migrating role (the owner of schema aggjobs; superusers count as members).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

from ..sql import query


@dataclass(frozen=True)
class Holder:
    kind: str
    name: str | None
    pid: int
    usename: str
    application_name: str | None
    client_addr: str | None
    backend_start: datetime | None

    @property
    def lock(self) -> str:
        return f"the {self.kind} lock" + (f" of {self.name}" if self.name else "")

    @property
    def who(self) -> str:
        """pid, role, application, address and session start (the last two are NULL to a
        role without pg_read_all_stats: said so)."""
        since = (self.backend_start.isoformat(timespec="seconds") if self.backend_start
                 else "unknown (needs pg_read_all_stats)")
        return (f"pid {self.pid}, user {self.usename}, application_name "
                f"{self.application_name or '-'!r}, client {self.client_addr or 'unknown'}, "
                f"session since {since}")

    @property
    def todo(self) -> str:
        return (f"find out why role {self.usename} holds it; to free it: "
                f"SELECT pg_terminate_backend({self.pid});")

    def __str__(self) -> str:
        return f"{self.lock} is held by a session aggjobs does not run as: {self.who}"


def foreign_holders(conn: psycopg.Connection, names: list[str], kind: str | None = None,
                    name: str | None = None) -> list[Holder]:
    """Foreign sessions holding aggjobs' advisory locks (of `kind` and `name` if given);
    `names` (jobs' and rollups') map a two-key lock's second key back to its name."""
    with conn.cursor(row_factory=class_row(Holder)) as cur:
        return cur.execute(query("foreign_lock_holders"),
                           {"names": names, "kind": kind, "name": name}).fetchall()


def held_by(conn: psycopg.Connection, kind: str, name: str | None = None) -> str:
    """For a message saying a lock was not free: '' when no foreign session holds it, else
    "held by a session aggjobs does not run as: <who>; free it with SELECT ..."."""
    try:
        with conn.transaction():  # a savepoint inside the caller's transaction, if any
            found = foreign_holders(conn, [name] if name else [], kind, name)
    except psycopg.Error:  # naming the holder must never hide the original message
        return ""
    return " and ".join(f"held by a session aggjobs does not run as: {h.who}; free it with "
                        f"SELECT pg_terminate_backend({h.pid})" for h in found)
