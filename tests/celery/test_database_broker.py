"""The default broker (AGGJOBS_BROKER_URL unset): kombu's SQLAlchemy transport on the aggjobs
database itself, what `aggjobs up` uses on a fresh machine. A real worker runs a task."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from aggjobs.catalog import Grain
from aggjobs.settings import Settings
from tests import platform as p
from tests.celery.conftest import Workers, job_runs, poll, queue_for
from tests.reference import assert_matches

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def dispose_broker_engines():
    """kombu caches one SQLAlchemy engine per broker host in this process (the test's client
    app): close their connections, or they outlive the test databases."""
    yield
    from aggjobs.jobs.app import forget_broker_engines

    forget_broker_engines(close=True)

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def test_a_task_through_the_database_broker_runs_the_job(db_url, conn, tmp_path) -> None:
    from aggjobs.jobs.app import create_app

    p.seed_sources(conn, T0, rows=6 * 6, every=timedelta(minutes=10))
    app = create_app(Settings(database_url=db_url, broker_url=None, data_dir=tmp_path,
                              queue=queue_for(db_url)))
    assert app.conf.broker_url.startswith("sqla+postgresql+psycopg://")
    pool = Workers(db_url, "", tmp_path)  # an empty AGGJOBS_BROKER_URL: the default
    try:
        pool.start()
        sent = app.send_task("hourly_rollup",
                             kwargs={"as_of": (T0 + timedelta(hours=6)).isoformat()})
        rows = poll(lambda: [r for r in job_runs(conn, "hourly_rollup")
                             if r["status"] != "running"] or None, 90, "the run to finish")
        assert broker_sessions(conn), "the worker's broker sessions carry their name"
    finally:
        pool.stop_all()
        app.close()
    assert [(r["status"], r["task_id"]) for r in rows] == [("succeeded", sent.id)]
    assert assert_matches(conn, "execution_metrics", Grain.HOUR, T0 + timedelta(hours=6)) > 0


def test_the_embedded_beat_sends_scheduled_tasks_through_the_database(db_url, conn,
                                                                      tmp_path) -> None:
    """The worker and its embedded beat start together on a fresh database broker: the
    scheduler's sends must go through (they did not while both raced to create the queue)."""
    pool = Workers(db_url, "", tmp_path)
    try:
        worker = pool.start(beat=True,
                            AGGJOBS_SCHEDULE='{"refresh_materialized_views": "* * * * *"}')
        rows = poll(lambda: [r for r in job_runs(conn, "refresh_materialized_views")
                             if r["status"] != "running"] or None, 130,
                    "a scheduled run (up to a minute away)",
                    context=lambda: f"the worker's log:\n{worker.text()[-6000:]}")
    finally:
        pool.stop_all()
    assert rows[0]["status"] == "succeeded" and rows[0]["trigger"] == "schedule", rows
    assert "Couldn't apply scheduled task" not in worker.text()


def test_the_queue_is_declared_before_worker_and_beat_start(db_url, conn, tmp_path,
                                                          monkeypatch) -> None:
    """What makes the test above deterministic: the worker's and beat's start hooks create the
    queue row first, so they never race to create it."""
    from aggjobs.jobs import app as module

    app = module.create_app(Settings(database_url=db_url, broker_url=None, data_dir=tmp_path,
                                     queue=queue_for(db_url)))
    monkeypatch.setattr(module, "app", app)
    try:
        module.declare_queue_once()
        module.declare_queue_once()  # idempotent: the second start finds it
        # and it closed what it opened: the worker forks its pool and beat next, and a
        # child must inherit no broker connection (it once left one in a transaction). A
        # closed session's server process ends a moment after its client closed it (CI
        # once saw it still 'idle'); one left open stays.
        poll(lambda: broker_sessions(conn) == [], 5, "the broker's sessions to end")
    finally:
        app.close()
    names = [n for (n,) in conn.execute("SELECT name FROM kombu_queue")]
    assert names == [queue_for(db_url)]


def broker_sessions(conn) -> list[tuple[int, str]]:
    """The database broker's sessions on the test database: (pid, state)."""
    from aggjobs.jobs.app import BROKER_APPLICATION_NAME

    return conn.execute(
        "SELECT pid, state FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        [BROKER_APPLICATION_NAME]).fetchall()


def test_a_forked_child_does_not_share_the_parents_broker_connections(db_url, tmp_path
                                                                     ) -> None:
    """What keeps the embedded beat's sends from failing now and then: the beat is a forked
    child of the worker, which declared the queue before the fork; the child drops the
    inherited engines (aggjobs.jobs.app.forget_broker_engines) and connects anew,
    the parent keeps its own."""
    from kombu.transport.sqlalchemy import Channel

    from aggjobs.jobs.app import create_app

    app = create_app(Settings(database_url=db_url, broker_url=None, data_dir=tmp_path,
                              queue=queue_for(db_url)))
    try:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_declare(queue=queue_for(db_url))
            # the transaction queue_declare leaves open: closed, or the session's garbage
            # collection at exit would roll it back on a connection the teardown ended
            connection.default_channel.session.close()
        assert Channel._engines
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: how many engines it inherited
            os.write(write, str(len(Channel._engines)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 16) == b"0"
        assert Channel._engines
    finally:
        app.close()
