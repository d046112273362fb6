"""A heavy job skipped for want of a slot is sent again per aggjobs.jobs.tasks.HEAVY_SLOT_RETRY:
every 5 minutes, 24 times, then the task fails. Run eagerly (Task.apply runs each retry at
once, without its countdown), with the runner stubbed: no broker, no database."""

from __future__ import annotations

from celery.exceptions import MaxRetriesExceededError

from aggjobs.jobs import app as app_module
from aggjobs.jobs import tasks
from aggjobs.jobs.run import RunRequest, RunResult
from aggjobs.settings import Settings


def test_a_heavy_job_without_a_slot_is_sent_again_per_the_policy(monkeypatch) -> None:
    app = app_module.create_app(Settings(broker_url="memory://", schedule={}))
    runs: list[RunRequest] = []

    def no_slot(request: RunRequest, settings: Settings, should_stop) -> RunResult:
        runs.append(request)
        return RunResult(len(runs), request.job, "skipped", retry_later=True)

    monkeypatch.setattr(tasks, "run_job", no_slot)
    task = app.tasks["daily_rollup"]
    retries: list[dict] = []
    retry = task.retry
    monkeypatch.setattr(task, "retry", lambda **kw: retries.append(kw) or retry(**kw))
    try:
        result = task.apply()
    finally:
        app.close()
    assert isinstance(result.result, MaxRetriesExceededError)
    assert [(r.attempt, r.trigger) for r in runs] == [(1, "manual")] + [
        (n, "retry") for n in range(2, 26)]
    assert retries == [{"countdown": 300, "max_retries": 24}] * 24 + [
        {"countdown": None, "max_retries": 24}]
