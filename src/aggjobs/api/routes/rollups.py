"""`/api/rollups` and `/api/backfills`: rollup state, backfills started and listed."""

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from ...catalog import select_rollups
from ...db.connect import connect
from ...engine.status import rollup_status
from ...operations import Requester, audited_backfill
from .. import dashboard as dashboard_page
from ..auth import AppSettings, Operator, ReadConn, Viewer, client_address
from ..schemas import BackfillBody, time_range

router = APIRouter(tags=["rollups"])


@router.get("/api/rollups")
def rollups(_: Viewer, conn: ReadConn) -> list[dict]:
    """Per rollup and grain: watermark, lag, pending dirty groups, quarantined buckets."""
    return rollup_status(conn, now=datetime.now(UTC))


@router.post("/api/backfills")
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
