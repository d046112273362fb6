"""When the jobs run: their cron schedules (defaults overridable by AGGJOBS_SCHEDULE), the
slot a scheduled run belongs to, the next firing. No Celery app is built here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery.schedules import crontab

from ..errors import ConfigError
from ..settings import Settings
from .registry import JOBS, Job


def cron(job: Job, settings: Settings) -> crontab | None:
    text = settings.schedule.get(job.name, job.cron)
    if text.strip() == "off":
        return None
    fields = text.split()
    if len(fields) != 5:
        raise ConfigError(f"schedule of {job.name}: {text!r} is not a 5-field cron expression")
    minute, hour, day_of_month, month, day_of_week = fields
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                   month_of_year=month, day_of_week=day_of_week)


def beat_schedule(settings: Settings) -> dict:
    entries = {}
    for job in JOBS.values():
        schedule = cron(job, settings)
        if schedule is not None:
            # the queue is also in the app's task_routes; said here too, so that any beat
            # (even one built from this dict alone) sends the job to its own queue
            entries[job.name] = {"task": job.name, "schedule": schedule,
                                 "kwargs": {"trigger": "schedule"},
                                 "options": {"queue": settings.queue_of(job.heavy)}}
    return entries


def slot_of(schedule: crontab, now: datetime) -> datetime:
    """The minute the schedule last fired at or before `now`: what identifies a scheduled
    run, whichever beat sent it and whenever a worker took it."""
    t = now.astimezone(UTC).replace(second=0, microsecond=0)
    for _ in range(60 * 24 * 366):
        if fires_at(schedule, t):
            return t
        t -= timedelta(minutes=1)
    raise ConfigError(f"schedule {schedule} never fires")


def fires_at(schedule: crontab, t: datetime) -> bool:
    return (t.minute in schedule.minute and t.hour in schedule.hour
            and t.isoweekday() % 7 in schedule.day_of_week
            and t.day in schedule.day_of_month and t.month in schedule.month_of_year)


def next_run(job: Job, settings: Settings, now: datetime) -> datetime | None:
    """The next minute the job's schedule fires after `now` (None: not scheduled)."""
    schedule = cron(job, settings)
    if schedule is None:
        return None
    t = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(60 * 24 * 366):
        if fires_at(schedule, t):
            return t
        t += timedelta(minutes=1)
    return None
