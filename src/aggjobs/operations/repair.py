"""Repair (`aggjobs verify --repair`): recompute the groups a verification found wrong,
audited (`repair`) in the repair's own transaction."""

from __future__ import annotations

import psycopg

from .. import audit
from ..catalog import Grain, Rollup
from ..engine.recompute import Written
from ..engine.verify import Mismatch, repair
from .backfill import Requester


def audited_repair(conn: psycopg.Connection, rollup: Rollup, grain: Grain,
                   mismatches: list[Mismatch], *, who: Requester) -> Written:
    """Recompute the groups behind `mismatches` under the rollup's lock; the audit row is
    written in the same transaction, so a repair is never unrecorded."""

    def record(params: dict) -> None:
        audit.write(conn, actor=who.actor, action="repair", target=rollup.name, params=params,
                    outcome="succeeded", source=who.source)

    return repair(conn, rollup, grain, mismatches, audit=record)
