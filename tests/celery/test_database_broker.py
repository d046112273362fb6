"""The default broker (AGGJOBS_BROKER_URL unset): kombu's SQLAlchemy transport on the aggjobs
database itself, what `aggjobs up` uses on a fresh machine. A real worker runs a task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggjobs.catalog import Grain
from aggjobs.settings import Settings
from tests import platform as p
from tests.celery.conftest import Workers, job_runs, poll, queue_for
from tests.reference import assert_matches

pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def test_a_task_through_the_database_broker_runs_the_job(db_url, conn, tmp_path) -> None:
    from aggjobs.jobs.app import create_app

    p.seed_sources(conn, T0, rows=6 * 6, every=timedelta(minutes=10))
    app = create_app(Settings(database_url=db_url, data_dir=tmp_path, queue=queue_for(db_url)))
    assert app.conf.broker_url.startswith("sqla+postgresql+psycopg://")
    pool = Workers(db_url, "", tmp_path)  # an empty AGGJOBS_BROKER_URL: the default
    try:
        pool.start()
        sent = app.send_task("hourly_rollup",
                             kwargs={"as_of": (T0 + timedelta(hours=6)).isoformat()})
        rows = poll(lambda: [r for r in job_runs(conn, "hourly_rollup")
                             if r["status"] != "running"] or None, 90, "the run to finish")
    finally:
        pool.stop_all()
        app.close()
    assert [(r["status"], r["task_id"]) for r in rows] == [("succeeded", sent.id)]
    assert assert_matches(conn, "execution_metrics", Grain.HOUR, T0 + timedelta(hours=6)) > 0
