"""The same jobs through RabbitMQ: the other production broker of the contract (docs/contract.md#settings)."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import pytest

from aggjobs.catalog import Grain
from aggjobs.settings import Settings
from tests import platform as p
from tests.celery.conftest import Workers, job_runs, poll, queue_for
from tests.reference import assert_matches

pytestmark = pytest.mark.slow

RABBITMQ_URL = os.environ.get("AGGJOBS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
T0 = datetime(2026, 11, 2, tzinfo=UTC)


def reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def rabbitmq() -> str:
    if not reachable():
        if os.environ.get("CI"):  # CI starts RabbitMQ: missing is a failure there
            pytest.fail(f"no RabbitMQ at {RABBITMQ_URL}")
        pytest.skip(f"no RabbitMQ at {RABBITMQ_URL}")
    return RABBITMQ_URL


def test_a_task_through_rabbitmq_runs_the_job(rabbitmq, db_url, conn, tmp_path) -> None:
    from aggjobs.jobs.app import create_app

    p.seed_sources(conn, T0, rows=6 * 6, every=timedelta(minutes=10))
    app = create_app(Settings(database_url=db_url, broker_url=rabbitmq, data_dir=tmp_path,
                              queue=queue_for(db_url)))
    app.control.purge()  # nothing left over from an earlier run reaches this database
    pool = Workers(db_url, rabbitmq, tmp_path)
    try:
        pool.start()
        sent = app.send_task("hourly_rollup",
                             kwargs={"as_of": (T0 + timedelta(hours=6)).isoformat()})
        rows = poll(lambda: [r for r in job_runs(conn, "hourly_rollup")
                             if r["status"] != "running"] or None, 60, "the run to finish")
    finally:
        pool.stop_all()
        app.close()
    assert [(r["status"], r["task_id"]) for r in rows] == [("succeeded", sent.id)]
    assert assert_matches(conn, "execution_metrics", Grain.HOUR, T0 + timedelta(hours=6)) > 0
