"""Backfills whose session ended without recording how (its process died): noticed by the
next audited backfill (operations/backfill.py) and by each job run (jobs/runner.py)."""

from __future__ import annotations

import logging

import psycopg

from ..sql import query

log = logging.getLogger(__name__)


def sweep_abandoned(conn: psycopg.Connection, *, noticed_by: str) -> list[int]:
    """Mark the backfills whose session is gone and that recorded no end: their rows of
    aggjobs.backfills failed, their audit starts given an `abandoned` outcome. Returns the
    ids of those starts. Run at each audited backfill and at each job run."""
    for job_id, rollup in conn.execute(query("mark_abandoned_backfills")).fetchall():
        log.warning("backfill %s of %s was abandoned: its session ended", job_id, rollup)
    starts = [row[0] for row in conn.execute(query("audit_abandoned_backfills"),
                                             {"noticed_by": noticed_by}).fetchall()]
    for started_id in starts:
        log.warning("audited backfill started as audit row %s was abandoned", started_id)
    return starts
