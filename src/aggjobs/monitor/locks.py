"""Foreign holders of aggjobs' advisory locks, as the monitor sees them: every one of them,
and what each stalls. The query and `Holder` are aggjobs.db.locks (the runner and the engine
use them too, to name a holder in a message)."""

from __future__ import annotations

import psycopg

from ..catalog import rollups
from ..catalog.jobs import JOB_SPECS
from ..db import locks
from ..db.locks import Holder, held_by

__all__ = ["EFFECTS", "Holder", "effect", "foreign_holders", "held_by"]

# What a held lock stops, by kind (the `kind` of query foreign_lock_holders).
EFFECTS = {
    "job": "runs of job {name} are skipped",
    "job steps": "runs of job {name} are skipped",
    "heavy-job slot": "heavy jobs (daily, weekly, cleanup) have one slot fewer",
    "rollup": "refreshes and backfills of rollup {name} wait, then fail",
    "view caches": "the view caches step waits",
    "alerts": "alert evaluation waits",
    "migrate": "`aggjobs migrate` waits",
}


def foreign_holders(conn: psycopg.Connection, kind: str | None = None,
                    name: str | None = None) -> list[Holder]:
    """Foreign sessions holding aggjobs' advisory locks (of `kind` and `name` if given)."""
    names = [*JOB_SPECS, *(r.name for r in rollups())]
    return locks.foreign_holders(conn, names, kind, name)


def effect(holder: Holder) -> str:
    return EFFECTS.get(holder.kind, "aggjobs waits for it").format(name=holder.name)
