"""A job run at a person's request: `aggjobs run`, `aggjobs up`, `POST /api/jobs/{job}/run`
and `POST /api/cleanup`; a failed run retried (`POST /api/runs/{id}/retry`, the dashboard's
"retry" button). The runner records it like a scheduled run and audits it (`run`)."""

from __future__ import annotations

from datetime import datetime

import psycopg

from .. import audit
from ..errors import NotRetryable, UnknownRun
from ..jobs.runner import RunRequest, RunResult, run_job
from ..monitor import run_detail
from ..settings import Settings


def manual_run(job: str, settings: Settings, *, as_of: datetime | None = None,
               actor: str | None, source: str) -> RunResult:
    """Run `job` now and wait for its end, with the scheduled runs' guarantees (no overlap,
    history, retries). `actor` None: this process's `user@host`, as the runner writes it."""
    return run_job(RunRequest(job=job, as_of=as_of, trigger="manual", who=actor,
                              source=source), settings)


RETRYABLE = ("failed", "abandoned")


def retry_run(conn: psycopg.Connection, run_id: int, settings: Settings, *, actor: str,
              source: str) -> RunResult:
    """Run the job of a failed or abandoned run again, for that run's reference time
    (`as_of`), and wait for its end. Audited twice: the new run's own `run` row, and a
    `retry` row linking the two (params `retry_of`, `run`), which the run's page shows."""
    failed = run_detail(conn, run_id)
    if failed is None:
        raise UnknownRun(f"no run {run_id} (see `aggjobs runs`)")
    if failed["status"] not in RETRYABLE:
        raise NotRetryable(f"run {run_id} of {failed['job']} is {failed['status']}: only a "
                           "failed or abandoned run is retried (run the job instead)")
    result = manual_run(failed["job"], settings, as_of=failed["as_of"], actor=actor,
                        source=source)
    audit.write(conn, actor=actor, action="retry", target=failed["job"],
                params={"retry_of": run_id, "run": result.id,
                        "as_of": failed["as_of"].isoformat()},
                outcome=result.status, source=source)
    return result
