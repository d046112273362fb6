"""When the jobs run, for Celery beat: their cron schedules (defaults overridable by
AGGJOBS_SCHEDULE) as Celery `crontab`s, and beat's schedule. The time math (the slot a
scheduled run belongs to, the next firing) is aggjobs.catalog.cron, which imports no Celery.
No Celery app is built here."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from ..catalog.cron import fires_at, slot_of
from ..catalog.jobs import JOB_SPECS, JobSpec
from ..errors import ConfigError
from ..settings import Settings

__all__ = ["beat_schedule", "cron", "fires_at", "slot_of"]


def cron(job: JobSpec, settings: Settings) -> crontab | None:
    text = job.schedule(settings)
    if text.strip() == "off":
        return None
    fields = text.split()
    if len(fields) != 5:
        raise ConfigError(f"schedule of {job.name}: {text!r} is not a 5-field cron expression")
    minute, hour, day_of_month, month, day_of_week = fields
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                   month_of_year=month, day_of_week=day_of_week)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    entries = {}
    for job in JOB_SPECS.values():
        schedule = cron(job, settings)
        if schedule is not None:
            # the queue is also in the app's task_routes; said here too, so that any beat
            # (even one built from this dict alone) sends the job to its own queue
            entries[job.name] = {"task": job.name, "schedule": schedule,
                                 "kwargs": {"trigger": "schedule"},
                                 "options": {"queue": settings.queue_of(job.heavy)}}
    return entries
