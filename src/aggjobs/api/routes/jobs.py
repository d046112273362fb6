"""`/api/jobs` and `/api/runs`: jobs, their run history, a run now; one run, its retry."""

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request

from ...catalog.grains import parse_timestamp, past
from ...catalog.jobs import get_job_spec as get_job
from ...errors import UnknownRun
from ...monitor import overview, run_detail, run_history
from ...operations.runs import manual_run, retry_run
from ...settings import Settings
from ..auth import AppSettings, Conn, Operator, ReadConn, Viewer, client_address, deny
from ..schemas import JobName, RunBody
from ..statuses import answers
from ..tokens import Principal

router = APIRouter(tags=["jobs"])

CLEANUP_JOB = "cleanup_old_data"  # retention: admin only, whichever route starts it


@router.get("/api/jobs")
def jobs(_: Viewer, conn: ReadConn, settings: AppSettings) -> dict:
    """Per job its latest run, next scheduled time and failures in a row; whether the
    installation is healthy and, if not, what to do."""
    state = overview(conn, settings).as_dict()
    return {k: state[k] for k in ("healthy", "checked_at", "problems", "jobs")}


@router.get("/api/jobs/{job}/runs", responses=answers(404))
def runs(_: Viewer, conn: ReadConn, job: JobName,
         since: Annotated[str | None, Query(max_length=64)] = None,
         limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
    """The job's run history, newest first, with each step's outcome and error."""
    get_job(job)
    start = parse_timestamp(since) if since else None
    return run_history(conn, job=job, since=start, limit=limit)


@router.post("/api/jobs/{job}/run", responses=answers(400, 404))
def run(request: Request, conn: Conn, who: Operator, settings: AppSettings,
        job: JobName, body: RunBody | None = None) -> dict:
    """Run the job now and wait for its end (operator; `cleanup_old_data` needs admin).
    Same guarantees as scheduled runs: no overlap (a busy job answers `skipped`),
    history, retries; audited."""
    get_job(job)
    cleanup_needs_admin(request, conn, who, job)
    return run_now(request, who, job, body, settings)


def cleanup_needs_admin(request: Request, conn: Conn, who: Principal, job: str) -> None:
    """Retention deletes data: whichever route starts it, an operator is refused (audited)."""
    if job == CLEANUP_JOB and not who.allows("admin"):
        deny(conn, request, who.name, "admin", f"role {who.role}", 403)
        raise HTTPException(403, f"{CLEANUP_JOB} deletes data: it needs a token with role "
                            f"admin; {who.name!r} is {who.role}")


def run_now(request: Request, who: Principal, job: str, body: RunBody | None,
            settings: Settings) -> dict:
    """Run `job` for the token `who` (shared with `POST /api/cleanup`), as the API answers."""
    ref = past(body.as_of, "as_of") if body and body.as_of else None
    result = manual_run(job, settings, as_of=ref, actor=f"api:{who.name}",
                        source=client_address(request))
    return {"id": result.id, "job": result.job, "status": result.status,
            "error": result.error, "steps": [asdict(s) for s in result.steps]}


RunId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A run's id (aggjobs.job_runs).")]
@router.get("/api/runs/{run_id}", responses=answers(404))
def run_page_data(_: Viewer, conn: ReadConn, run_id: RunId) -> dict:
    """One run: job, trigger and who asked, `as_of`, status, timings, each step's outcome
    (rows, seconds, attempts, error), the worker (host, pid, task id), its database session
    and the audit rows naming it (its own, and a retry's). What `/runs/{id}` shows."""
    found = run_detail(conn, run_id)
    if found is None:
        raise UnknownRun(f"no run {run_id}")
    return {**found, "seconds": None if found["seconds"] is None else float(found["seconds"])}


@router.post("/api/runs/{run_id}/retry", responses=answers(404, 409))
def retry(request: Request, conn: Conn, who: Operator, settings: AppSettings,
          run_id: RunId) -> dict:
    """Run a failed or abandoned run's job again for the same reference time (`as_of`)
    and wait for its end (operator; `cleanup_old_data` needs admin). Audited: the new
    run's `run` row and a `retry` row naming both runs."""
    failed = run_detail(conn, run_id)
    if failed is not None:
        cleanup_needs_admin(request, conn, who, failed["job"])
    result = retry_run(conn, run_id, settings, actor=f"api:{who.name}",
                       source=client_address(request))
    return {"id": result.id, "job": result.job, "status": result.status, "retry_of": run_id,
            "error": result.error, "steps": [asdict(s) for s in result.steps]}
