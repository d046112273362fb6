"""`/api/rollups` and `/api/backfills`: rollup state; backfills queued, listed, cancelled."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request

from ...catalog import Grain, get_rollup, select_rollups
from ...catalog.grains import parse_timestamp
from ...engine.rows import default_range, read_rows
from ...engine.status import rollup_status
from ...errors import InvalidRange, InvalidTimestamp, UnknownBackfill, UnknownRollup
from ...operations.backfill import Requester, cancel_backfill, queue_backfill
from .. import dashboard as dashboard_page
from ..auth import AppSettings, Conn, Operator, ReadConn, Viewer, client_address
from ..schemas import BackfillBody, time_range
from ..statuses import answers

router = APIRouter(tags=["rollups"])


@router.get("/api/rollups")
def rollups(_: Viewer, conn: ReadConn) -> list[dict]:
    """Per rollup and grain: watermark, lag, pending dirty groups, quarantined buckets."""
    return rollup_status(conn, now=datetime.now(UTC))


@router.get("/api/rollups/{rollup}/{grain}/rows")
def rows(_: Viewer, conn: ReadConn, settings: AppSettings, rollup: str, grain: str,
         workspace: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
         from_: Annotated[str | None, Query(alias="from", max_length=64)] = None,
         to: Annotated[str | None, Query(max_length=64)] = None,
         live: bool = False,
         limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
         offset: Annotated[int, Query(ge=0)] = 0) -> dict:
    """A page of a rollup's rows at one grain (hour, day, week): buckets starting in
    [from, to) (default: to now, from a day, a week or four weeks before it), one workspace
    or all. `live=true` reads `analytics.<rollup>_<grain>_live`, exact at this instant
    (the open bucket and changes not yet refreshed included); `live=false` reads the table.
    The outputs only (no sketch nor set). `next_offset` is where the next page starts, or
    null. A range longer than AGGJOBS_MAX_ROWS_DAYS (default 31) is 422 naming it; so is an
    unknown rollup or grain, a bad workspace or time."""
    if grain not in {g.value for g in Grain}:
        raise HTTPException(422, f"unknown grain {grain[:20]!r}: hour, day or week")
    try:
        chosen, g = get_rollup(rollup), Grain(grain)
        lo, hi = default_range(g, parse_timestamp(from_) if from_ else None,
                               parse_timestamp(to) if to else None, datetime.now(UTC))
        page = read_rows(conn, chosen, g, lo=lo, hi=hi, workspace=workspace, live_view=live,
                         limit=limit, offset=offset, max_days=settings.max_rows_days)
    except (UnknownRollup, InvalidRange, InvalidTimestamp) as exc:
        raise HTTPException(422, str(exc)[:1000]) from None
    return {"rollup": page.rollup, "grain": page.grain, "live": page.live,
            "from": page.from_, "to": page.to, "workspace": page.workspace,
            "columns": page.columns, "rows": page.rows, "next_offset": page.next_offset}


BackfillId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A backfill's id.")]


@router.post("/api/backfills", status_code=202, responses=answers(400, 409, 503))
def backfills(request: Request, conn: Conn, who: Operator, settings: AppSettings,
              body: BackfillBody) -> dict:
    """Queue a backfill of the rollups (default: all) over a range, every grain (operator):
    a worker's task recomputes the materialized buckets chunk by chunk, resumable and
    cancellable, with the very code of `aggjobs backfill`. Answers at once, 202, with one
    backfill per rollup (`id`, `url`); `GET /api/backfills/{id}` and the dashboard show its
    progress and outcome. A range longer than AGGJOBS_MAX_BACKFILL_DAYS is refused (422),
    so is one queued or running already (409); a failed or cancelled one is queued again and
    resumes. Audited: `queued` (or `refused: ...`) here, `started` and its outcome by the
    worker."""
    chosen = select_rollups(body.rollups)
    lo, hi = time_range(body.from_, body.to)
    rows = queue_backfill(conn, chosen, lo, hi, settings=settings,
                          who=Requester(f"api:{who.name}", client_address(request)))
    return {"status": "queued", "from": lo, "to": hi,
            "backfills": [{**r, "url": f"/api/backfills/{r['id']}"} for r in rows]}


@router.get("/api/backfills")
def backfill_list(_: Viewer, conn: ReadConn,
                  status: Annotated[str | None, Query(
                      pattern="^(queued|running|succeeded|failed|cancelled)$")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
    """Backfills (aggjobs.backfills), running first, then queued, then newest, each with
    `progress`: the fraction of its range done (done_until between range_start and
    range_end); who asked (`requested_by`), whether a cancel was asked and by whom."""
    return dashboard_page.backfills(conn, status=status, limit=limit)


@router.get("/api/backfills/{backfill_id}", responses=answers(404))
def backfill_one(_: Viewer, conn: ReadConn, backfill_id: BackfillId) -> dict:
    """One backfill, as `GET /api/backfills` lists them."""
    found = dashboard_page.backfill(conn, backfill_id)
    if found is None:
        raise UnknownBackfill(f"no backfill {backfill_id}")
    return found


@router.post("/api/backfills/{backfill_id}/cancel", responses=answers(404, 409))
def backfill_cancel(request: Request, conn: Conn, who: Operator,
                    backfill_id: BackfillId) -> dict:
    """Cancel a backfill (operator): a queued one at once; a running one, whoever runs it
    (a worker, `aggjobs backfill`), stops before its next chunk, `cancelled`, keeping what
    it recomputed (queuing the range again resumes it). Audited (`backfill.cancel`)."""
    return cancel_backfill(conn, backfill_id,
                           who=Requester(f"api:{who.name}", client_address(request)))
