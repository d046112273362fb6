"""Ten identical concurrent `POST /api/backfills` to a real `aggjobs serve`: one runs, nine
are 409 naming it (issue 21 finding 5: one or two were a 500, a UniqueViolation of
backfills_one_open_per_range), and each of the ten has its start and its outcome audited."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from aggjobs.api import tokens
from aggjobs.catalog import get_rollup
from aggjobs.engine import state
from aggjobs.settings import Settings
from tests import platform as p
from tests.api.serve import serving

T0 = datetime(2026, 11, 2, tzinfo=UTC)
N = 10


def test_ten_identical_concurrent_backfills_one_runs_nine_are_409(conn, db_url,
                                                                  settings: Settings) -> None:
    p.seed_sources(conn, T0, rows=2 * 24 * 6, every=timedelta(minutes=10))
    p.refresh_all(conn, settings, T0 + timedelta(days=2))
    secret = tokens.create(conn, "op", "operator", actor="tests")[0]
    body = {"rollups": ["user_activity"], "from": T0.isoformat(),
            "to": (T0 + timedelta(days=1)).isoformat()}
    env = dict(os.environ, AGGJOBS_DATABASE_URL=db_url, AGGJOBS_API_RATE_LIMIT="off")
    lock = psycopg.connect(db_url, autocommit=True)
    with serving(env) as served, ThreadPoolExecutor(N) as pool:
        def post() -> httpx.Response:
            return httpx.post(f"{served.base}/api/backfills", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {secret}"})

        # The rollup's lock held here: the one that opens the backfill waits at its first
        # chunk until every other request has had its answer.
        with state.rollup_lock(lock, get_rollup("user_activity"), wait_s=10):
            futures = [pool.submit(post) for _ in range(N)]
            pending = set(futures)
            while len(pending) > 1:
                done, pending = wait(pending, timeout=90, return_when=FIRST_COMPLETED)
                assert done, "no answer within 90 s"
        answers = [f.result() for f in futures]
    lock.close()

    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * (N - 1), [(a.status_code, a.text) for a in answers]
    [winner] = [a for a in answers if a.status_code == 200]
    backfill_id = winner.json()["rollups"][0]["backfill_id"]
    for answer in answers:
        if answer.status_code == 409:
            detail = answer.json()["detail"]
            assert detail.startswith(f"backfill {backfill_id} of user_activity over [")
            assert "is running in another session" in detail and "\n" not in detail
    assert conn.execute("SELECT id, status FROM aggjobs.backfills").fetchall() == [
        (backfill_id, "succeeded")]

    rows = conn.execute("SELECT id, outcome, params->>'started_id' FROM aggjobs.audit_log"
                        " WHERE action = 'backfill' ORDER BY id").fetchall()
    starts = {row_id for row_id, outcome, _ in rows if outcome == "started"}
    ends = {int(ref): outcome.split(":")[0] for _, outcome, ref in rows if ref is not None}
    assert len(starts) == N and set(ends) == starts  # ten starts, each with its outcome
    assert sorted(ends.values()) == ["refused"] * (N - 1) + ["succeeded"]
    assert "Traceback" not in served.output and "UniqueViolation" not in served.output
