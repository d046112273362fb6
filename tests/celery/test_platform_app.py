"""The five jobs on a platform's own Celery app (aggjobs.celery.register): a real worker with
beat on the real Redis runs the platform's task and, scheduled by beat, the five jobs; the
runs are in the ledger; `celery inspect registered` lists the six tasks; a beat entry of the
same name is refused; the platform's own settings are left as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

import aggjobs.celery
from aggjobs.catalog.jobs import JOB_SPECS
from aggjobs.settings import Settings
from tests.celery.conftest import job_runs, poll, queue_for

JOBS = sorted(JOB_SPECS)
EVERY_MINUTE = json.dumps(dict.fromkeys(JOBS, "* * * * *"))
PLATFORM = "tests.celery.platform_app"
ROOT = Path(__file__).resolve().parents[2]  # the repository: where `tests` is a package


def platform_app(**conf: object) -> Celery:
    app = Celery("platform", broker="memory://", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    task_routes={"platform.*": {"queue": "platform"}}, **conf)

    @app.task(name="platform.work", shared=False)
    def work() -> None:
        pass

    return app


def test_register_adds_the_jobs_per_task_and_leaves_the_app_alone(tmp_path) -> None:
    app = platform_app(beat_schedule={"platform-tick": {"task": "platform.work",
                                                          "schedule": 60.0}})
    settings = Settings(data_dir=tmp_path, job_time_limit_s={"daily_rollup": 1000})
    assert aggjobs.celery.register(app, settings=settings, queue="jobs") is app
    assert set(JOBS) | {"platform.work"} <= set(app.tasks)
    daily = app.tasks["daily_rollup"]
    assert (daily.acks_late, daily.reject_on_worker_lost) == (True, True)
    assert (daily.time_limit, daily.soft_time_limit) == (1000, 900)
    assert app.tasks["platform.work"].acks_late is False  # the platform's task as it was
    # the app's own settings untouched: no app-wide acks_late, limits or serializer; its
    # routes kept, a route added for each job (asked for: queue="jobs")
    assert app.conf.task_acks_late is False and app.conf.task_time_limit is None
    assert app.conf.task_routes == {"platform.*": {"queue": "platform"},
                                    **{job: {"queue": "jobs"} for job in JOBS}}
    assert app.amqp.router.route({}, "daily_rollup")["queue"].name == "jobs"
    assert app.amqp.router.route({}, "platform.work")["queue"].name == "platform"
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert sorted(app.conf.beat_schedule) == sorted([*JOBS, "platform-tick"])
    assert app.conf.beat_schedule["hourly_rollup"]["options"] == {"queue": "jobs"}


def test_a_task_of_the_same_name_is_refused(tmp_path) -> None:
    app = platform_app()

    @app.task(name="cleanup_old_data", shared=False)
    def theirs() -> str:
        return "the platform's cleanup"

    with pytest.raises(aggjobs.celery.TaskExists, match="'cleanup_old_data'"):
        aggjobs.celery.register(app, settings=Settings(data_dir=tmp_path))
    assert app.tasks["cleanup_old_data"].run() == "the platform's cleanup"
    assert "hourly_rollup" not in app.tasks and not app.conf.beat_schedule

    again = platform_app()
    aggjobs.celery.register(again, settings=Settings(data_dir=tmp_path), schedule=False)
    with pytest.raises(aggjobs.celery.TaskExists, match="already on this app"):
        aggjobs.celery.register(again, settings=Settings(data_dir=tmp_path))
    assert not again.conf.beat_schedule


def test_without_a_queue_the_apps_routing_decides(tmp_path) -> None:
    app = platform_app(task_default_queue="platform-default")
    aggjobs.celery.register(app, settings=Settings(data_dir=tmp_path))
    assert app.conf.task_routes == {"platform.*": {"queue": "platform"}}
    assert "options" not in app.conf.beat_schedule["daily_rollup"]
    assert app.amqp.router.route({}, "daily_rollup")["queue"].name == "platform-default"


def test_a_beat_entry_of_the_same_name_is_refused_changing_nothing(tmp_path) -> None:
    theirs = {"task": "platform.work", "schedule": 60.0}
    app = platform_app(beat_schedule={"hourly_rollup": theirs})
    with pytest.raises(aggjobs.celery.BeatEntryExists, match="'hourly_rollup'"):
        aggjobs.celery.register(app, settings=Settings(data_dir=tmp_path))
    assert app.conf.beat_schedule == {"hourly_rollup": theirs}
    assert not set(JOBS) & set(app.tasks)
    # without the schedule nothing clashes: the platform schedules the jobs itself
    aggjobs.celery.register(app, settings=Settings(data_dir=tmp_path), schedule=False)
    assert set(JOBS) <= set(app.tasks) and app.conf.beat_schedule == {"hourly_rollup": theirs}


@pytest.mark.slow
def test_a_platform_worker_with_beat_runs_its_task_and_the_five_jobs(
        workers, conn, db_url, broker_url, tmp_path) -> None:
    ticks = tmp_path / "ticks"
    env = {"PLATFORM_BROKER_URL": broker_url, "PLATFORM_QUEUE": queue_for(db_url),
           "PLATFORM_TICKS": str(ticks), "AGGJOBS_SCHEDULE": EVERY_MINUTE,
           # the platform's module is this repository's tests.celery.platform_app: Celery's
           # commands import it from their working directory, a temporary one here
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    worker = workers.start(beat=True, app=PLATFORM, **env)

    poll(lambda: ticks.exists() and ticks.read_text().count("tick") >= 2, 30,
         "the platform's own task, sent by beat, to run")
    registered = subprocess.run(
        [sys.executable, "-m", "celery", "-A", PLATFORM, "inspect", "registered", "-t", "10",
         "-d", f"{worker.name}@{run_host()}"],
        env=workers.env(**env), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    for task in [*JOBS, "platform.tick"]:
        assert f"* {task}" in registered.stdout, registered.stdout

    def all_five_ran() -> list[dict] | None:
        done = [r for r in job_runs(conn) if r["status"] != "running"]
        return done if {r["job"] for r in done} >= set(JOBS) else None

    # beat fires every job at the next minute (up to 60 s), then they run one by one
    runs = poll(all_five_ran, 180, "beat's runs of the five jobs")
    first = {job: next(r for r in runs if r["job"] == job) for job in JOBS}
    for job, run in first.items():
        assert run["status"] == "succeeded", (job, run["error"], worker.text()[-3000:])
        assert run["trigger"] == "schedule" and run["slot"] is not None, run
        assert run["who"].startswith(worker.name), run["who"]
    # the worker's heartbeat (aggjobs status's liveness) comes with the jobs
    beats = conn.execute("SELECT kind, name FROM aggjobs.heartbeats").fetchall()
    assert ("worker", f"{worker.name}@{run_host()}") in beats, beats


def run_host() -> str:
    import socket

    return socket.gethostname()
