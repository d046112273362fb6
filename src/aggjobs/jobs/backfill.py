"""The audited backfill, run by `aggjobs backfill` in the terminal and by the worker's
`backfill` task for the backfills queued by `POST /api/backfills` (and the dashboard); it
lives here, below the front ends' `operations`, so that the task runs the very same code.

A backfill's audit rows (docs/security.md, "Backfill audit rows"): a refused one (over the
span cap) writes one row, `refused: ...`. One that starts writes a row `started` at once,
in its own transaction, naming its database session (params.session_pid); when it ends, a
second row with the same parameters and `started_id` says how: `succeeded`, `failed: ...`,
`cancelled: ...` (aggjobs.backfills.cancel_requested, read before each chunk) or
`refused: ...` (the range is being backfilled by another session). If the process dies
first, the start stays alone until someone notices that its session is gone (the next
backfill, or the next job run) and writes `abandoned: ...` for it, as job runs are marked
abandoned. The audit log is append-only, hence a second row rather than an update of the
first; a unique index keeps it to one outcome per start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .. import audit
from ..catalog import Rollup, get_rollup
from ..catalog.grains import parse_timestamp
from ..db.connect import connect, first_line, scalar
from ..engine.abandoned import sweep_abandoned
from ..engine.backfill import BackfillBusy, BackfillCancelled, BackfillReport, Progress
from ..engine.backfill import backfill as run_backfill
from ..errors import AggjobsError, SpanTooLong
from ..safety import check_backfill_span, span_days
from ..settings import Settings
from ..sql import query


@dataclass(frozen=True)
class Requester:
    """Who asks (`cli:<user>`, `api:<token>`) and from where (audit.py's `source`)."""

    actor: str
    source: str


@dataclass(frozen=True)
class Audited:
    """One backfill's audit identity: who, what, with which parameters, which start row."""

    who: Requester
    target: str
    params: dict[str, Any]
    started_id: int | None = None

    def row(self, outcome: str) -> dict[str, Any]:
        params = self.params if self.started_id is None else {
            **self.params, "started_id": self.started_id}
        return {"actor": self.who.actor, "target": self.target, "params": Jsonb(params),
                "outcome": outcome, "source": self.who.source}


def audited_backfill(conn: psycopg.Connection, rollups: list[Rollup], lo: datetime,
                     hi: datetime, *, settings: Settings, who: Requester,
                     force: bool = False, override: str | None = None,
                     progress: Callable[[Rollup], Progress | None] | None = None,
                     done: Callable[[BackfillReport], None] | None = None,
                     queued: bool = False) -> list[BackfillReport]:
    """Backfill each rollup over [lo, hi) in `conn`, audited. A range over the span cap is
    refused (SpanTooLong) unless `force`, which only a front end with an `override` (the
    CLI's --force) offers. `progress(rollup)` gives a rollup's progress callback; `done` is
    called with each rollup's report as it finishes. `queued`: a worker runs the rows
    queued by the API (engine/backfill.py)."""
    refused = span_refusal(lo, hi, settings, override)
    names = [r.name for r in rollups]
    params = {"rollups": names, "from": lo.isoformat(), "to": hi.isoformat(),
              "days": span_days(lo, hi), "sessions": settings.backfill_sessions,
              "forced": bool(refused and force)}
    entry = Audited(who, ",".join(names), params)
    if refused and not force:
        audit.write(conn, actor=who.actor, action="backfill", target=entry.target,
                    params=params, outcome=f"refused: {refused}", source=who.source)
        raise refused
    sweep_abandoned(conn, noticed_by=who.source)
    entry = start(conn, entry)
    reports = []
    try:
        for rollup in rollups:
            reports.append(run_backfill(conn, rollup, lo, hi, settings=settings,
                                        progress=progress(rollup) if progress else None,
                                        queued=queued))
            if done:
                done(reports[-1])
    except BaseException as exc:
        finish(conn, settings, entry, outcome_of(exc))
        raise
    finish(conn, settings, entry, "succeeded")
    return reports


def span_refusal(lo: datetime, hi: datetime, settings: Settings,
                 override: str | None) -> SpanTooLong | None:
    try:
        check_backfill_span(lo, hi, settings, override=override)
    except SpanTooLong as exc:
        return exc
    return None


def start(conn: psycopg.Connection, entry: Audited) -> Audited:
    """The `started` row, committed at once (the connection is in autocommit mode), naming
    the session whose end, without an outcome, means the backfill was abandoned."""
    params = {**entry.params, "session_pid": conn.info.backend_pid}
    started = Audited(entry.who, entry.target, params)
    row = started.row("started")
    started_id = scalar(conn, query("audit_backfill_started"), row)
    return Audited(entry.who, entry.target, params, started_id)


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, BackfillCancelled):
        return f"cancelled: {first_line(exc)}"
    if isinstance(exc, BackfillBusy):
        return f"refused: {first_line(exc)}"
    return f"failed: {type(exc).__name__}: {first_line(exc)}"


def finish(conn: psycopg.Connection, settings: Settings, entry: Audited, outcome: str) -> None:
    """The outcome row: in the backfill's session if it still works, else in a new one (its
    session was terminated, the process lives and knows why). If neither can be written the
    start stays alone, and the sweep marks it abandoned."""
    try:
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the backfill's session is gone")
        conn.execute(query("audit_backfill_outcome"), entry.row(outcome))
    except psycopg.Error:
        with contextlib.suppress(psycopg.Error, AggjobsError), \
                connect("backfill", settings=settings) as fresh:
            fresh.execute(query("audit_backfill_outcome"), entry.row(outcome))


# A queued backfill found so when its task comes is left alone. One found running is not:
# a redelivered task (its worker died) resumes it once its session is gone.
ENDED = ("cancelled", "succeeded")


@dataclass(frozen=True)
class Queued:
    """What a worker's `backfill` task is given: the rows the API queued (id, rollup), the
    range as ISO 8601 texts, and who asked from where."""

    backfills: list[dict[str, Any]]
    lo: str
    hi: str
    who: Requester


def run_queued(settings: Settings, queued: Queued) -> dict[str, str]:
    """Run the queued backfills one rollup after the other, each audited as the CLI's are
    (a `started` row, then its outcome). One cancelled or succeeded when the task comes is
    not run, nor audited again; one cancelled while it runs ends `cancelled`,
    and the others still run; whatever of them is still queued at the end (the task failed first) is
    marked failed, so that none stays queued forever."""
    lo, hi = parse_timestamp(queued.lo), parse_timestamp(queued.hi)
    outcomes: dict[str, str] = {}
    with connect("backfill", settings=settings) as conn:
        try:
            for row in queued.backfills:
                status = scalar(conn, query("backfill_status"), {"id": row["id"]})
                if status in ENDED:  # cancelled meanwhile, or run to its end by another
                    outcomes[row["rollup"]] = f"not run: {status}"
                    continue
                outcomes[row["rollup"]] = one_queued(conn, settings, row["rollup"], lo, hi,
                                                     queued.who)
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute(query("fail_still_queued"), {
                    "ids": [row["id"] for row in queued.backfills],
                    "error": "not run: its worker's task failed first (see its log)"})
    return outcomes


def one_queued(conn: psycopg.Connection, settings: Settings, rollup: str, lo: datetime,
               hi: datetime, who: Requester) -> str:
    """One rollup's backfill; its outcome as the audit log has it."""
    try:
        audited_backfill(conn, [get_rollup(rollup)], lo, hi, settings=settings, who=who,
                         force=True, queued=True)  # the span cap was checked when queued
    except (BackfillCancelled, BackfillBusy) as exc:
        return outcome_of(exc)
    return "succeeded"
