"""Backfills as the front ends start and stop them.

The audited backfill itself (`audited_backfill`, jobs/backfill.py) is what `aggjobs
backfill` runs in the terminal and what a worker's `backfill` task runs. The API and the
dashboard do not run it inside the HTTP request: `queue_backfill` writes the rows as
`queued` and sends the task, which claims them (docs/api.md). `cancel_backfill` stops a
queued or running one, whoever runs it, before its next chunk.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from .. import audit
from ..catalog import Rollup
from ..db.connect import first_line, scalar
from ..engine.backfill import BackfillBusy, busy
from ..errors import AggjobsError, NotCancellable, UnknownBackfill
from ..jobs.backfill import Queued, Requester, audited_backfill, span_refusal
from ..safety import span_days
from ..settings import Settings
from ..sql import query

__all__ = ["Requester", "audited_backfill", "cancel_backfill", "queue_backfill"]


class BrokerUnavailable(AggjobsError):
    """The backfill could not be sent to the workers."""


def queue_backfill(conn: psycopg.Connection, rollups: list[Rollup], lo: datetime,
                   hi: datetime, *, settings: Settings, who: Requester) -> list[dict]:
    """Queue a backfill of each rollup over [lo, hi) for a worker; the rows (id, rollup).
    Refused, audited, when over the span cap (SpanTooLong) or when one of the ranges is
    queued or running already (BackfillBusy): then nothing is queued. A failed or cancelled
    backfill of the same range is queued again, to resume where it stopped."""
    names = [r.name for r in rollups]
    params = {"rollups": names, "from": lo.isoformat(), "to": hi.isoformat(),
              "days": span_days(lo, hi)}

    def record(outcome: str, **extra: object) -> None:
        audit.write(conn, actor=who.actor, action="backfill", target=",".join(names),
                    params={**params, **extra}, outcome=outcome, source=who.source)

    refused = span_refusal(lo, hi, settings, None)
    if refused:
        record(f"refused: {refused}")
        raise refused
    # The task's id is chosen here, so that the rows and their `queued` audit row commit
    # together before the task is sent: a worker's `started` row always comes after it.
    task_id = str(uuid.uuid4())
    try:
        with conn.transaction():
            rows = queue_rows(conn, rollups, lo, hi, who)
            ids = [r["id"] for r in rows]
            conn.execute(query("backfill_task"), {"task_id": task_id, "ids": ids})
            record("queued", backfills=ids, task_id=task_id)
    except BackfillBusy as exc:
        record(f"refused: {first_line(exc)}")
        raise
    from ..jobs.app import send_backfill  # Celery, only for what sends a task

    try:
        send_backfill(settings, Queued(rows, lo.isoformat(), hi.isoformat(), who), task_id)
    except Exception as exc:  # noqa: BLE001  (any broker error: the rows must not stay queued)
        conn.execute(query("fail_still_queued"), {
            "ids": ids, "error": f"not sent to the workers: {exc}"[:500]})
        record(f"failed: the broker refused it: {first_line(exc)}")
        raise BrokerUnavailable(f"the backfill could not be sent to the workers' broker: "
                                f"{first_line(exc)}") from None
    return rows


def queue_rows(conn: psycopg.Connection, rollups: list[Rollup], lo: datetime, hi: datetime,
               who: Requester) -> list[dict]:
    """The queued rows, all or none (one transaction)."""
    rows = []
    try:
        with conn.transaction():
            for rollup in rollups:
                rows.append({"id": queue_one(conn, rollup, lo, hi, who),
                             "rollup": rollup.name})
    except pg_errors.UniqueViolation:  # queued by another request between our look and insert
        raise queued_already(conn, rollups, lo, hi) from None
    return rows


def queued_already(conn: psycopg.Connection, rollups: list[Rollup], lo: datetime,
                   hi: datetime) -> BackfillBusy:
    """The refusal of a request that lost the race to queue a range: naming the winner."""
    for rollup in rollups:
        row = conn.execute(query("running_backfill"),
                           {"rollup": rollup.name, "lo": lo, "hi": hi}).fetchone()
        if row is not None:
            return busy_queued(rollup, lo, hi, row[0])
    return BackfillBusy(f"a backfill of the range [{lo.isoformat()}, {hi.isoformat()}) was "
                        "queued by another request just now")


def busy_queued(rollup: Rollup, lo: datetime, hi: datetime, backfill_id: int) -> BackfillBusy:
    return BackfillBusy(f"backfill {backfill_id} of {rollup.name} over [{lo.isoformat()}, "
                        f"{hi.isoformat()}) is queued already: wait for a worker to run it "
                        "(the dashboard shows its progress), or cancel it")


def queue_one(conn: psycopg.Connection, rollup: Rollup, lo: datetime, hi: datetime,
              who: Requester) -> int:
    params = {"rollup": rollup.name, "lo": lo, "hi": hi, "who": who.actor}
    row = conn.execute(query("find_open_backfill"), params).fetchone()
    if row is None:
        return int(scalar(conn, query("queue_backfill"), params))
    if row[6] == "queued":
        raise busy_queued(rollup, lo, hi, row[0])
    if row[5]:
        raise busy(rollup, lo, hi, row)
    return int(scalar(conn, query("requeue_backfill"), {**params, "id": row[0]}))


def cancel_backfill(conn: psycopg.Connection, backfill_id: int, *, who: Requester) -> dict:
    """Cancel a queued backfill at once, or ask a running one to stop before its next chunk
    (what it recomputed stays). Audited (`backfill.cancel`). UnknownBackfill if there is
    no such backfill, NotCancellable if it has ended."""
    with conn.cursor(row_factory=dict_row) as cur:
        done = cur.execute(query("cancel_backfill"), {"id": backfill_id, "who": who.actor}
                           ).fetchone()
        if done is None:
            found = cur.execute(query("backfill_by_id"), {"id": backfill_id}).fetchone()
            if found is None:
                raise UnknownBackfill(f"no backfill {backfill_id}")
            raise NotCancellable(f"backfill {backfill_id} of {found['rollup']} is "
                                 f"{found['status']}: only a queued or running one is "
                                 "cancelled")
    outcome = "cancelled" if done["status"] == "cancelled" else "requested"
    audit.write(conn, actor=who.actor, action="backfill.cancel", target=done["rollup"],
                params={"backfill": backfill_id, "was": done["was"]}, outcome=outcome,
                source=who.source)
    return {"id": backfill_id, "rollup": done["rollup"], "cancelled": True,
            "status": done["status"], "was": done["was"]}
