"""The five jobs of PRODUCT.md section 4: names, default schedules (UTC), steps."""

from __future__ import annotations

from .. import health, reports
from ..catalog import ROLLUPS, SOURCES, Grain
from ..errors import UnknownJob
from ..settings import Settings
from . import cleanup, steps
from .model import Job, Step


def hourly_steps(settings: Settings) -> list[Step]:
    return [steps.rollup_step(r, [Grain.HOUR]) for r in ROLLUPS] + steps.view_steps()


def daily_steps(settings: Settings) -> list[Step]:
    # Hours first, so that no day is built from incomplete hours; a day still waiting for
    # its hours is deferred and the reason kept in the step's detail.
    return [steps.rollup_step(r, [Grain.HOUR, Grain.DAY]) for r in ROLLUPS] + [
        health.step(),
        reports.step(),
    ]


def weekly_steps(settings: Settings) -> list[Step]:
    # A rollup without weeks (agent_executions) is brought up to its days.
    return [steps.rollup_step(r, list(r.grains)) for r in ROLLUPS]


def cleanup_steps(settings: Settings) -> list[Step]:
    return (
        [cleanup.raw_step(source) for source in SOURCES]
        + [cleanup.rollup_step(r, g) for r in ROLLUPS for g in r.grains]
        + [cleanup.job_history_step()]
    )


def view_steps(settings: Settings) -> list[Step]:
    return steps.view_steps()


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("hourly_rollup", "5 * * * *", False, 30 * 60,
            "complete hours not yet materialized (catching up) and invalidated groups, "
            "for every hourly rollup; then the views", hourly_steps),
        Job("daily_rollup", "0 1 * * *", True, 2 * 3600,
            "hours caught up, then the daily grains; health scores and reports",
            daily_steps),
        Job("weekly_rollup", "0 2 * * 1", True, 2 * 3600,
            "hours and days caught up, then the weekly grains", weekly_steps),
        Job("cleanup_old_data", "0 3 * * *", True, 2 * 3600,
            "retention: raw rows, rollups and job history past their age, in batches",
            cleanup_steps),
        Job("refresh_materialized_views", "*/15 * * * *", False, 15 * 60,
            "both materialized views, concurrently", view_steps),
    )
}


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise UnknownJob(f"unknown job {name!r}; jobs are: {', '.join(JOBS)}") from None
