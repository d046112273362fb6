"""A rebuild as the worker runs it (docs/rollups.md, "Changing a rollup"; docs/security.md):
aggjobs_worker owns no table, yet advances a changed rollup's new version in aggjobs_build
and swaps it in through aggjobs.swap_rollup_version; it cannot move or drop the tables
itself, nor touch the stored definitions beyond recording a failed check, and the reader
reads the swapped-in tables."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors

from aggjobs.catalog import declared
from aggjobs.catalog.families import EXECUTION_METRICS
from aggjobs.catalog.model import Quantile
from aggjobs.db.migrate import migrate
from aggjobs.engine.refresh import refresh
from tests import platform as p

T0 = datetime(2026, 3, 2, tzinfo=UTC)
H = timedelta(hours=1)
P99 = Quantile(name="p99_runtime", column="runtime_seconds", q=0.99)


@pytest.fixture
def p99_declared(monkeypatch):
    """execution_metrics with a p99, as if catalog/families.py had been edited."""
    changed = dataclasses.replace(EXECUTION_METRICS,
                                  measures=(*EXECUTION_METRICS.measures, P99))
    monkeypatch.setattr(declared, "BUILTIN_ROLLUPS", tuple(
        changed if r.name == changed.name else r for r in declared.BUILTIN_ROLLUPS))
    declared.load.cache_clear()
    yield changed
    declared.load.cache_clear()


def test_the_worker_rebuilds_and_swaps_but_cannot_do_the_ddl_itself(
        conn, worker, reader, settings, p99_declared) -> None:
    for h in range(30):
        p.run(conn, ws=1 + h % 2, at=T0 + h * H + timedelta(minutes=5), runtime=1.0 + h)
    as_of = T0 + 30 * H
    refresh(conn, EXECUTION_METRICS, as_of=as_of, settings=settings)  # v1, by the owner
    indexes = ("SELECT tablename, indexname, indexdef FROM pg_indexes"
               " WHERE schemaname = 'analytics' AND tablename LIKE 'execution_metrics%'"
               " ORDER BY 1, 2")
    before = conn.execute(indexes).fetchall()
    assert len(before) > 6  # views.sql's own indexes beside the key and bucket ones
    # the hourly bucket index, which views.sql makes include the columns the views read
    assert ("execution_metrics_hourly", "execution_metrics_hourly_hour_idx",
            "CREATE INDEX execution_metrics_hourly_hour_idx ON analytics.execution_metrics_hourly"
            " USING btree (hour) INCLUDE (workspace_id, total_executions,"
            " successful_executions)") in before
    migrate(conn)  # v2 is built beside it
    refused = [
        "ALTER TABLE analytics.execution_metrics_hourly RENAME TO x",
        "ALTER TABLE aggjobs_build.execution_metrics_hourly SET SCHEMA analytics",
        "DROP TABLE aggjobs_build.execution_metrics_daily",
        "UPDATE aggjobs.rollup_definitions SET state = 'live'",
        "SELECT aggjobs.retire_table('analytics.execution_metrics_daily', 'x', 'r', 1, 'day')",
    ]
    for stmt in refused:
        with pytest.raises(pg_errors.InsufficientPrivilege), worker.transaction():
            worker.execute(stmt)
    report = refresh(worker, p99_declared, as_of=as_of, settings=settings)
    assert report.rebuild is not None and report.rebuild.swapped, report.rebuild
    state = conn.execute("SELECT version, state FROM aggjobs.rollup_definitions"
                         " WHERE rollup = 'execution_metrics' ORDER BY version").fetchall()
    assert state == [(1, "retired"), (2, "live")]
    assert conn.execute(indexes).fetchall() == before  # every index follows, as it was
    exact = conn.execute(
        "SELECT workspace_id, date_bin('1 hour', started_at, '2000-01-01 00:00+00'),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY runtime_seconds)"
        " FROM agent_runs GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    seen = reader.execute("SELECT workspace_id, hour, p99_runtime"
                          " FROM analytics.execution_metrics_hourly ORDER BY 1, 2").fetchall()
    assert seen == exact and len(seen) == 30
    with pytest.raises(psycopg.errors.InsufficientPrivilege), reader.transaction():
        reader.execute("SELECT * FROM aggjobs_retired.execution_metrics_hourly__v1")
