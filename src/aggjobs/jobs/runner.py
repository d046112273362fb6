"""The runner as its callers use it (the Celery task, `aggjobs run`, the API's run route): one
run of one job (aggjobs.jobs.run: its guarantees are there), then the alerts evaluated on the
run's session (aggjobs.monitor.alerts): each problem of `aggjobs status` that started or
cleared is announced, so at least every 15 minutes while a worker runs."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from ..monitor import alerts
from ..settings import Settings
from .run import AfterRun, LostJobLock, RunRequest, RunResult, StepOutcome, run

__all__ = ["AfterRun", "LostJobLock", "RunRequest", "RunResult", "StepOutcome", "alerts_hook",
           "run_job"]


def alerts_hook(settings: Settings) -> AfterRun:
    def evaluate(conn: psycopg.Connection, result: RunResult) -> None:
        alerts.evaluate(conn, settings)

    return evaluate


def run_job(request: RunRequest, settings: Settings,
            should_stop: Callable[[BaseException], bool] = lambda exc: False) -> RunResult:
    """Run `request.job` (aggjobs.jobs.run.run), then evaluate the alerts."""
    return run(request, settings, should_stop, after_run=alerts_hook(settings))
