"""Two workers, each with an embedded beat, on one database and broker: every scheduled
slot runs once; the other beat's copy is recorded as skipped. Waits for a real minute
boundary (up to ~70 s), once."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from tests.celery.conftest import job_runs, poll

pytestmark = pytest.mark.slow

JOB = "refresh_materialized_views"
SCHEDULE = json.dumps({
    JOB: "* * * * *", "hourly_rollup": "off", "daily_rollup": "off", "weekly_rollup": "off",
    "cleanup_old_data": "off",
})


def by_slot(conn) -> dict:
    slots = defaultdict(list)
    for r in job_runs(conn):
        assert r["job"] == JOB and r["trigger"] == "schedule", r
        slots[r["slot"]].append(r)
    return slots


def test_two_beats_run_each_slot_once(workers, conn) -> None:
    first = workers.start(beat=True, AGGJOBS_SCHEDULE=SCHEDULE)
    second = workers.start(beat=True, AGGJOBS_SCHEDULE=SCHEDULE)

    def settled_pair():
        slots = by_slot(conn)
        done = {s: rows for s, rows in slots.items()
                if len(rows) >= 2 and all(r["status"] != "running" for r in rows)}
        return done or None

    poll(settled_pair, 150, "a slot with both beats' copies finished", every=0.5)
    for slot, rows in by_slot(conn).items():
        assert slot is not None and slot.second == 0 and slot.microsecond == 0, slot
        ran = [r for r in rows if r["status"] in ("running", "succeeded", "failed")]
        skipped = [r for r in rows if r["status"] == "skipped"]
        assert len(ran) == 1, (slot, rows)
        assert len(ran) + len(skipped) == len(rows), (slot, rows)
        assert len(rows) <= 2, (slot, rows)
        for r in skipped:
            assert "already" in r["error"], r["error"]
        if ran[0]["status"] != "running":
            assert ran[0]["status"] == "succeeded", ran[0]["error"]
    for worker in (first, second):
        assert worker.alive(), worker.text()[-3000:]
        assert "beat: Starting" in worker.text(), worker.text()[-3000:]
    assert (workers.tmp_path / "w1-beat-schedule").exists() or any(
        workers.tmp_path.glob("w1-beat-schedule*"))
