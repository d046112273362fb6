"""Separate queues for light and heavy jobs (docs/scaling.md).

Light jobs (hourly_rollup, refresh_materialized_views) go to AGGJOBS_QUEUE, heavy ones
(daily_rollup, weekly_rollup, cleanup_old_data) to AGGJOBS_HEAVY_QUEUE (default: the same
queue). The routing is checked without a broker; then real `aggjobs worker` processes on the
real Redis broker, fed through beat's own sending code (celery.beat.Scheduler.apply_async on
the app's schedule entries: what beat does when an entry is due, without waiting for a minute
boundary), show that a `--queues light` worker and a `--queues heavy` worker each run only
their jobs, and that one worker with the default `--queues` runs everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from aggjobs.jobs.app import BACKFILL_TASK, create_app, queues_of
from aggjobs.jobs.registry import JOBS
from aggjobs.settings import Settings
from tests import platform as p
from tests.celery.conftest import job_runs, poll, queue_for

HEAVY = {"daily_rollup", "weekly_rollup", "cleanup_old_data"}
LIGHT = {"hourly_rollup", "refresh_materialized_views"}


def test_the_registry_says_which_jobs_are_heavy() -> None:
    assert {name for name, job in JOBS.items() if job.heavy} == HEAVY
    assert set(JOBS) == HEAVY | LIGHT


@pytest.mark.parametrize("heavy_queue", [None, "q.heavy"])
def test_each_job_is_routed_to_its_queue(heavy_queue: str | None) -> None:
    settings = Settings(broker_url="memory://", queue="q.light", heavy_queue=heavy_queue,
                        schedule={})
    app = create_app(settings)
    try:
        want = {name: (heavy_queue or "q.light") if name in HEAVY else "q.light"
                for name in JOBS}
        # a client's send_task (and a heavy job's retry) goes through the router
        routed = {name: app.amqp.router.route({}, name, (), {})["queue"].name for name in JOBS}
        assert routed == want
        # beat's entries name the queue too
        assert {name: entry["options"]["queue"]
                for name, entry in app.conf.beat_schedule.items()} == want
        assert queues_of(app) == (["q.light", heavy_queue] if heavy_queue else ["q.light"])
        # the backfills queued by the API are heavy work
        assert app.amqp.router.route({}, BACKFILL_TASK, (), {})["queue"].name == (
            heavy_queue or "q.light")
    finally:
        app.close()


def test_an_empty_heavy_queue_setting_means_the_default_queue(monkeypatch) -> None:
    monkeypatch.setenv("AGGJOBS_QUEUE", "mine")
    monkeypatch.setenv("AGGJOBS_HEAVY_QUEUE", "")
    settings = Settings()
    assert settings.heavy_queue is None
    assert settings.queue_of(True) == settings.queue_of(False) == "mine"
    assert settings.queues() == ["mine"]


def aggjobs_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
    return subprocess.run([sys.executable, "-m", "aggjobs", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_worker_help_documents_the_queues() -> None:
    result = aggjobs_cli("worker", "--help", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    for word in ("--queues", "-Q", "light", "heavy", "AGGJOBS_HEAVY_QUEUE", "--hostname"):
        assert word in result.stdout, (word, result.stdout)


@pytest.mark.parametrize("queues", ["bulk", ",", "light,nope"])
def test_worker_refuses_an_unknown_queue_kind(queues: str) -> None:
    result = aggjobs_cli("worker", "--queues", queues, AGGJOBS_DATABASE_URL="postgresql://"
                         "nobody@127.0.0.1:1/none")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--queues" in lines[0] and "light" in lines[0], lines


# -- real workers on the real broker ---------------------------------------------------------

def send_like_beat(app) -> dict[str, str]:
    """Each of the app's schedule entries sent as beat sends a due entry; returns task ids."""
    from celery.beat import Scheduler

    scheduler = Scheduler(app=app)
    try:
        return {name: scheduler.apply_async(scheduler.schedule[name],
                                            producer=scheduler.producer).id
                for name in JOBS}
    finally:
        scheduler.close()
        scheduler.producer.connection.release()


def queued(broker_url: str, queue: str) -> int:
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        return client.llen(queue)
    finally:
        client.close()


def seed_recent(conn) -> None:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
    p.seed_sources(conn, start, rows=4 * 6, every=timedelta(minutes=10))


def finished_runs(conn, jobs: set[str]):
    def check():
        rows = [r for r in job_runs(conn) if r["job"] in jobs and r["status"] != "running"]
        return rows if len(rows) >= len(jobs) else None
    return check


def consumed(worker) -> set[str]:
    """The queues in the worker's start banner ("[queues]" then ".> NAME exchange=...")."""
    banner = worker.text().split("[queues]")[1].split("[tasks]")[0]
    return {line.split(".> ", 1)[1].split()[0] for line in banner.splitlines()
            if ".> " in line}


@pytest.fixture
def client(db_url: str, broker_url: str, tmp_path):
    """A client app of the test broker, light queue = the test's queue, heavy as asked."""
    apps = []

    def make(heavy_queue: str | None):
        app = create_app(Settings(database_url=db_url, broker_url=broker_url,
                                  data_dir=tmp_path, queue=queue_for(db_url),
                                  heavy_queue=heavy_queue, schedule={}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.mark.slow
def test_a_light_and_a_heavy_worker_each_run_only_their_jobs(workers, client, conn, db_url,
                                                           broker_url) -> None:
    light_q, heavy_q = queue_for(db_url), queue_for(db_url) + ".heavy"
    app = client(heavy_q)
    seed_recent(conn)
    env = {"AGGJOBS_HEAVY_QUEUE": heavy_q}
    light = workers.start(cli=["--queues", "light"], **env)
    assert consumed(light) == {light_q}, light.text()[-3000:]
    sent = send_like_beat(app)

    light_rows = poll(finished_runs(conn, LIGHT), 40, "the light jobs to finish")
    # the heavy jobs wait in their own queue: the light worker never takes them
    assert queued(broker_url, heavy_q) == len(HEAVY)
    assert queued(broker_url, light_q) == 0
    assert not [r for r in job_runs(conn) if r["job"] in HEAVY]

    heavy = workers.start(cli=["--queues", "heavy"], **env)
    assert consumed(heavy) == {heavy_q}, heavy.text()[-3000:]
    heavy_rows = poll(finished_runs(conn, HEAVY), 40, "the heavy jobs to finish")
    assert queued(broker_url, heavy_q) == 0

    assert sorted(r["job"] for r in job_runs(conn)) == sorted(JOBS)  # each ran once
    for row in light_rows + heavy_rows:
        worker = heavy if row["job"] in HEAVY else light
        assert row["who"] == f"{worker.name}@{row['host']}", (row["job"], row["who"])
        assert row["status"] == "succeeded", (row["job"], row["error"])
        assert row["trigger"] == "schedule" and row["slot"] is not None
        assert row["task_id"] == sent[row["job"]]


@pytest.mark.slow
@pytest.mark.parametrize("heavy_queue_set", [False, True], ids=["one-queue", "two-queues"])
def test_one_default_worker_runs_every_job(workers, client, conn, db_url, broker_url,
                                           heavy_queue_set: bool) -> None:
    """Out of the box (no AGGJOBS_HEAVY_QUEUE) and with two queues, `aggjobs worker` without
    --queues takes every job."""
    light_q = queue_for(db_url)
    heavy_q = light_q + ".heavy" if heavy_queue_set else None
    app = client(heavy_q)
    seed_recent(conn)
    worker = workers.start(cli=[], **({"AGGJOBS_HEAVY_QUEUE": heavy_q} if heavy_q else {}))
    assert consumed(worker) == {light_q, heavy_q} - {None}, worker.text()[-3000:]
    send_like_beat(app)
    rows = poll(finished_runs(conn, set(JOBS)), 50, "every job to finish")
    assert sorted(r["job"] for r in rows) == sorted(JOBS)
    for row in rows:
        assert row["status"] == "succeeded", (row["job"], row["error"])
        assert row["who"] == f"{worker.name}@{row['host']}"
        assert row["trigger"] == "schedule"
    assert queued(broker_url, light_q) == 0
