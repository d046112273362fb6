"""A job run at a person's request: `aggjobs run`, `aggjobs up`, `POST /api/jobs/{job}/run`
and `POST /api/cleanup`. The runner records it like a scheduled run and audits it (`run`)."""

from __future__ import annotations

from datetime import datetime

from ..jobs.runner import RunRequest, RunResult, run_job
from ..settings import Settings


def manual_run(job: str, settings: Settings, *, as_of: datetime | None = None,
               actor: str | None, source: str) -> RunResult:
    """Run `job` now and wait for its end, with the scheduled runs' guarantees (no overlap,
    history, retries). `actor` None: this process's `user@host`, as the runner writes it."""
    return run_job(RunRequest(job=job, as_of=as_of, trigger="manual", who=actor,
                              source=source), settings)
