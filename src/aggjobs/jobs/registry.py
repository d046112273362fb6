"""The five jobs (docs/contract.md#jobs): their metadata (aggjobs.catalog.jobs) wired to
their steps."""

from __future__ import annotations

from ..catalog import Grain, rollups, sources
from ..catalog.jobs import JOB_SPECS
from ..errors import UnknownJob
from ..settings import Settings
from . import cleanup, steps
from .model import Job, Step


def hourly_steps(settings: Settings) -> list[Step]:
    return ([steps.rollup_step(r, [Grain.HOUR], light=True) for r in rollups()]
            + steps.view_steps())


def daily_steps(settings: Settings) -> list[Step]:
    # Hours first, so that no day is built from incomplete hours; a day still waiting for
    # its hours is deferred and the reason kept in the step's detail.
    return [steps.rollup_step(r, [Grain.HOUR, Grain.DAY]) for r in rollups()] + [
        steps.health_step(),
        steps.reports_step(),
    ]


def weekly_steps(settings: Settings) -> list[Step]:
    # A rollup without weeks (agent_executions) is brought up to its days.
    return [steps.rollup_step(r, list(r.grains)) for r in rollups()]


def cleanup_steps(settings: Settings) -> list[Step]:
    return (
        [cleanup.raw_step(source) for source in sources()]
        + [cleanup.rollup_step(r, g) for r in rollups() for g in r.grains]
        + [cleanup.job_history_step(), cleanup.heartbeats_step(), cleanup.retired_step()]
    )


def view_steps(settings: Settings) -> list[Step]:
    return steps.view_steps()


BUILDS = {
    "hourly_rollup": hourly_steps,
    "daily_rollup": daily_steps,
    "weekly_rollup": weekly_steps,
    "cleanup_old_data": cleanup_steps,
    "refresh_materialized_views": view_steps,
}

JOBS: dict[str, Job] = {name: Job.of(spec, BUILDS[name]) for name, spec in JOB_SPECS.items()}


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise UnknownJob(f"unknown job {name!r}; jobs are: {', '.join(JOBS)}") from None
