"""Repair (`aggjobs verify --repair`): recompute the groups a verification found wrong,
audited (`repair`) in the repair's own transaction."""

from __future__ import annotations

from datetime import datetime

import psycopg

from .. import audit
from ..catalog import Grain, Rollup
from ..engine.recompute import Written
from ..engine.verify import Mismatch, VerifyReport, repair, verify_grain
from .backfill import Requester


def audited_repair(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                   mismatches: list[Mismatch], *, who: Requester) -> Written:
    """Recompute the groups behind `mismatches` under the rollup's lock; the audit row is
    written in the same transaction, so a repair is never unrecorded."""

    def record(params: dict) -> None:
        audit.write(conn, actor=who.actor, action="repair", target=rollup.name, params=params,
                    outcome="succeeded", source=who.source)

    return repair(conn, rollup, grain, mismatches, audit=record)


def verify_and_repair(conn: psycopg.Connection, rollup: Rollup, grain: Grain, lo: datetime,
                      hi: datetime, *, repair_as: Requester | None
                      ) -> tuple[VerifyReport, VerifyReport | None]:
    """Verify `grain` of `rollup` over [lo, hi). With `repair_as`, repair the mismatches
    found (audited as that requester) and verify again. Returns the first report and the one
    after the repair (None when nothing was repaired)."""
    report = verify_grain(conn, rollup, grain, lo, hi)
    if not (report.mismatches and repair_as):
        return report, None
    audited_repair(conn, rollup, grain, report.mismatches, who=repair_as)
    return report, verify_grain(conn, rollup, grain, lo, hi)
