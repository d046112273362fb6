"""The five jobs as Celery tasks, added to a Celery app: aggjobs' own (aggjobs.jobs.app) or
a platform's (aggjobs.celery.register). This is the one place the tasks are defined.

Everything the runner needs from Celery is an option of each task, never of the app: late
acknowledgement and rejection when the worker process dies (so a killed worker's task is
delivered again), the soft and hard time limits, no result kept. A platform's own tasks,
routes, serializers and settings are left as they are: its beat schedule gains the five
entries (refusing to replace one of the same name), and, only when a queue is asked for,
its task_routes a route for each of the five names.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from ..catalog.grains import parse_timestamp
from ..catalog.jobs import JobSpec, check_job_settings
from ..db.retry import RetryPolicy
from ..errors import ConfigError
from ..settings import Settings, get_settings
from .liveness import SETTINGS_ATTRIBUTE, WorkerHeartbeat
from .model import Job
from .registry import JOBS
from .runner import RunRequest, run_job
from .schedule import beat_schedule, cron, slot_of

__all__ = ["HEAVY_SLOT_RETRY", "BeatEntryExists", "QueueOf", "TaskExists", "add_jobs",
           "register"]

# A heavy job skipped for want of a slot is sent again every 5 minutes, for up to two hours.
HEAVY_SLOT_RETRY = RetryPolicy(attempts=25, base_s=300, factor=1)

RunSummary = dict[str, int | str | None]  # what a task returns: run id, status, error
QueueOf = Callable[[JobSpec], str | None]  # a job's queue; None: the app's routing decides


class BeatEntryExists(ConfigError):
    """The app's beat schedule already has an entry named like one of the jobs."""


class TaskExists(ConfigError):
    """The app already has a task of its own named like one of the jobs."""


MARK = "aggjobs_job"  # an attribute of the jobs' tasks, set by add_job


def register(app: Celery, *, settings: Settings | None = None, schedule: bool = True,
             queue: str | None = None) -> Celery:
    """Add the five jobs to an existing Celery app `app`, under their exact names, with the
    runner's guarantees; with `schedule`, their beat entries too. `queue`: the one queue of
    the five (default: wherever the app routes a task it has no route for). `settings`:
    default, this process's AGGJOBS_* environment. Returns `app`."""
    chosen = check_job_settings(settings or get_settings())
    return add_jobs(app, chosen, schedule=schedule, queue_of=lambda job: queue)


def add_jobs(app: Celery, settings: Settings, *, schedule: bool, queue_of: QueueOf) -> Celery:
    """The five tasks (and, with `schedule`, their beat entries) on `app`, each sent to
    `queue_of(job)`. Refuses, changing nothing, when a task or a beat entry of the app's
    would be replaced."""
    refuse_to_replace_tasks(app)
    entries = jobs_schedule(settings, queue_of) if schedule else {}
    existing = dict(app.conf.beat_schedule or {})
    clashes = sorted(set(entries) & set(existing))
    if clashes:
        raise BeatEntryExists(
            f"the app's beat_schedule already has an entry named {clashes[0]!r}: aggjobs "
            "would replace it; rename that entry, or call register(app, schedule=False) "
            "and schedule the jobs yourself")
    for job in JOBS.values():
        add_job(app, job, settings)
    ours = {job.name: {"queue": queue} for job in JOBS.values()
            if (queue := queue_of(job)) is not None}
    if ours:
        app.conf.task_routes = routes_with(app.conf.task_routes, ours)
    if entries:
        app.conf.beat_schedule = {**existing, **entries}
    # The worker's heartbeat (docs/jobs.md, "Liveness"): a consumer bootstep, with the
    # settings it writes with; a bootstep adds to the worker, it changes no app setting.
    setattr(app, SETTINGS_ATTRIBUTE, settings)
    app.steps["consumer"].add(WorkerHeartbeat)
    return app


def refuse_to_replace_tasks(app: Celery) -> None:
    """TaskExists when the app has a task under a job's name: its own, or the job's, added
    before (Celery keeps the first task of a name). Reading the tasks finalizes the app, as
    a worker does: tasks defined later are registered at once."""
    present = [app.tasks[name] for name in JOBS if name in app.tasks]
    theirs = [task.name for task in present if not getattr(task, MARK, False)]
    if theirs:
        raise TaskExists(f"the app already has a task named {theirs[0]!r}: aggjobs' job of "
                         "that name would replace it; rename that task")
    if present:
        raise TaskExists("the jobs are already on this app: register it once")


def jobs_schedule(settings: Settings, queue_of: QueueOf) -> dict[str, dict[str, Any]]:
    """The jobs' beat entries, each naming its queue, or none (the app's routing)."""
    entries = beat_schedule(settings)
    for name, entry in entries.items():
        queue = queue_of(JOBS[name])
        entry.pop("options", None)
        if queue is not None:
            entry["options"] = {"queue": queue}
    return entries


def routes_with(existing: Any, ours: dict[str, dict[str, str]]) -> Any:
    """The app's task_routes plus a route for each job by its exact name (Celery's own
    `queue` task attribute is deprecated): the app's routes are kept, and win over ours for
    a name they give explicitly (a pattern of theirs does not match before an exact name)."""
    if not existing:
        return ours
    if isinstance(existing, dict):
        return {**ours, **existing}
    if isinstance(existing, list | tuple):
        return [ours, *existing]
    return [ours, existing]  # one router: a function, a class or its dotted name


def add_job(app: Celery, job: Job, settings: Settings) -> None:
    """`job` as a task of `app`; what the runner needs of Celery is an option of this task
    alone."""
    hard = job.time_limit(settings)

    # shared=False: a task of this app only (a shared one would be added to every app
    # created later in the process, e.g. tests' clients, and clash with theirs)
    @app.task(name=job.name, bind=True, shared=False,
              acks_late=True, reject_on_worker_lost=True,  # a dead worker's task comes back
              time_limit=hard, soft_time_limit=int(hard * 0.9),
              ignore_result=True,  # the run's history is aggjobs.job_runs
              aggjobs_job=True)  # MARK: a job's task, not the app's own
    def run(self: Task[..., RunSummary], as_of: str | None = None, trigger: str = "manual",
            who: str | None = None) -> RunSummary:
        return run_task(self, job, settings, as_of=as_of, trigger=trigger, who=who)


def run_task(task: Task[..., RunSummary], job: Job, settings: Settings, *,
             as_of: str | None, trigger: str, who: str | None) -> RunSummary:
    """One run of `job` for this delivery of its task; a heavy job that found no slot free
    is sent again later (HEAVY_SLOT_RETRY)."""
    now = datetime.now(UTC)
    schedule = cron(job, settings) if trigger == "schedule" else None
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    request = RunRequest(
        job=job.name,
        as_of=parse_timestamp(as_of) if as_of else now,
        trigger="retry" if task.request.retries else trigger,
        who=who or task.request.hostname or "celery",  # the node name: "name@host"
        # a crontab has the five expanded sets slot_of reads; celery-types declares none
        slot=slot_of(schedule, now) if schedule is not None else None,  # type: ignore[arg-type]
        attempt=task.request.retries + 1 + int(redelivered),
        task_id=task.request.id,
    )
    result = run_job(request, settings,
                     should_stop=lambda exc: isinstance(exc, SoftTimeLimitExceeded))
    if result.retry_later:  # the heavy-job cap was full: try again in a while
        # Past the policy's last try Celery raises MaxRetriesExceededError (no countdown).
        raise task.retry(countdown=HEAVY_SLOT_RETRY.delay(task.request.retries + 1),
                         max_retries=HEAVY_SLOT_RETRY.retries)
    return {"run": result.id, "status": result.status, "error": result.error}
