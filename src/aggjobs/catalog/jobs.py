"""The five jobs (docs/contract.md#jobs) as data: name, default schedule (UTC), whether it is
heavy, its time limit and what it does. What each job's steps are is wired in
aggjobs.jobs.registry; this module imports nothing above the catalog, so that whatever only
needs to know about the jobs (the monitor, the API's /api/jobs, the CLI's help) does not
import the steps, Celery, the reports or the health scores."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..errors import ConfigError, UnknownJob
from ..settings import Settings, get_settings, invalid
from .cron import Cron, next_after


@dataclass(frozen=True)
class JobSpec:
    name: str
    cron: str  # default schedule, UTC: minute hour day-of-month month day-of-week
    heavy: bool  # counts against AGGJOBS_HEAVY_JOBS_CONCURRENCY
    time_limit_s: int  # Celery hard limit by default; the soft one is 90% of it
    describe: str

    def time_limit(self, settings: Settings) -> int:
        """The hard time limit in force: AGGJOBS_JOB_TIME_LIMIT_S, else the default."""
        return settings.job_time_limit_s.get(self.name, self.time_limit_s)

    def schedule(self, settings: Settings) -> str:
        """The schedule in force: AGGJOBS_SCHEDULE's for this job, else the default."""
        return settings.schedule.get(self.name, self.cron)

    def cron_in_force(self, settings: Settings) -> Cron | None:
        """The schedule in force, parsed; None when it is "off"."""
        text = self.schedule(settings)
        if text.strip() == "off":
            return None
        try:
            return Cron.parse(text)
        except ValueError as exc:
            raise ConfigError(f"schedule of {self.name}: {exc}") from None

    def next_run(self, settings: Settings, now: datetime) -> datetime | None:
        """The next minute the job's schedule fires after `now` (None: not scheduled)."""
        schedule = self.cron_in_force(settings)
        return next_after(schedule, now) if schedule is not None else None


JOB_SPECS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(name="hourly_rollup", cron="5 * * * *", heavy=False, time_limit_s=30 * 60,
                describe="complete hours not yet materialized (catching up) and invalidated "
                         "groups, for every hourly rollup; then the views"),
        JobSpec(name="daily_rollup", cron="0 1 * * *", heavy=True, time_limit_s=2 * 3600,
                describe="hours caught up, then the daily grains; health scores and reports"),
        JobSpec(name="weekly_rollup", cron="0 2 * * 1", heavy=True, time_limit_s=2 * 3600,
                describe="hours and days caught up, then the weekly grains"),
        JobSpec(name="cleanup_old_data", cron="0 3 * * *", heavy=True, time_limit_s=2 * 3600,
                describe="retention: raw rows, rollups and job history past their age, "
                         "in batches"),
        JobSpec(name="refresh_materialized_views", cron="*/15 * * * *", heavy=False,
                time_limit_s=15 * 60, describe="both materialized views, concurrently"),
    )
}


def get_job_spec(name: str) -> JobSpec:
    try:
        return JOB_SPECS[name]
    except KeyError:
        raise UnknownJob(f"unknown job {name!r}; jobs are: {', '.join(JOB_SPECS)}") from None


# Settings keyed by job name: checked here, where the jobs are known (Settings cannot import
# the catalog).
JOB_KEYED_SETTINGS = ("schedule", "job_time_limit_s", "job_statement_timeout_ms")


def check_job_settings(settings: Settings) -> Settings:
    """`settings` if every job-keyed setting names jobs and every schedule parses, else
    ConfigError in one line naming the variable (rather than Celery's traceback at start)."""
    for name in JOB_KEYED_SETTINGS:
        unknown = sorted(set(getattr(settings, name)) - set(JOB_SPECS))
        if unknown:
            raise ConfigError(invalid(name, f"unknown job {unknown[0]!r}; jobs are: "
                                      + ", ".join(JOB_SPECS)))
    for job, text in settings.schedule.items():
        if text.strip() != "off":
            try:
                Cron.parse(text)
            except ValueError as exc:
                raise ConfigError(invalid("schedule", f"{job}: {exc}")) from None
    return settings


def checked_settings() -> Settings:
    """This process's settings, all of them checked (the command line's and the worker's
    first step)."""
    return check_job_settings(get_settings())
