"""`/api/rollups` and `/api/backfills`: rollup state, backfills started and listed."""

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from ...catalog import Grain, get_rollup, select_rollups
from ...catalog.grains import parse_timestamp
from ...db.connect import connect
from ...engine.rows import default_range, read_rows
from ...engine.status import rollup_status
from ...errors import InvalidRange, InvalidTimestamp, UnknownRollup
from ...operations import Requester, audited_backfill
from .. import dashboard as dashboard_page
from ..auth import AppSettings, Operator, ReadConn, Viewer, client_address
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


@router.post("/api/backfills", responses=answers(400, 409))
def backfills(request: Request, who: Operator, settings: AppSettings,
              body: BackfillBody) -> dict:
    """Recompute a range of materialized buckets of the rollups, all grains (operator).
    Chunked and resumable like `aggjobs backfill`; waits for its end; audited (a row
    when it starts, one when it ends). A range longer than AGGJOBS_MAX_BACKFILL_DAYS is
    refused (422, audited); so is one that another session is backfilling (409)."""
    chosen = select_rollups(body.rollups)
    lo, hi = time_range(body.from_, body.to)
    with connect("backfill", settings=settings) as work:
        reports = audited_backfill(
            work, chosen, lo, hi, settings=settings,
            who=Requester(f"api:{who.name}", client_address(request)))
    return {"rollups": [asdict(r) for r in reports]}


@router.get("/api/backfills")
def backfill_list(_: Viewer, conn: ReadConn,
                  status: Annotated[str | None, Query(
                      pattern="^(running|succeeded|failed)$")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
    """Backfills (aggjobs.backfills), running first then newest, each with `progress`:
    the fraction of its range done (done_until between range_start and range_end)."""
    return dashboard_page.backfills(conn, status=status, limit=limit)
