"""The worker drops partitions only through aggjobs.drop_partition_before (migration 0008):
only whole partitions of a known source partitioned by range of its time column, ending at
or before the time given, never the default partition, never another table.

Every test here runs on a database whose sources are partitioned by day (db_url overridden).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors

from tests import platform as p
from tests.conftest import PARTITION_DAYS, PARTITIONS_FROM
from tests.security.test_roles import RAW, as_worker, count, job, load, refused, steps  # noqa: F401

T0 = datetime(2026, 3, 2, tzinfo=UTC)
H, D = timedelta(hours=1), timedelta(days=1)
KEEP = {"hourly": 0, "daily": 0, "weekly": 0, "job_runs": 0}
DROP = "SELECT * FROM aggjobs.drop_partition_before(%s, %s)"


@pytest.fixture
def db_url(partitioned_db_url: str) -> str:
    return partitioned_db_url


def children(conn: psycopg.Connection, table: str) -> set[str]:
    return {r for (r,) in conn.execute(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass", (table,))}


def exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def test_worker_drops_whole_old_partitions_of_a_source_only_through_the_function(conn, worker):
    load(conn, T0, 30)  # 03-02 00:07 to 03-03 05:07
    first = f"public.{p.partition_name('agent_runs', PARTITIONS_FROM)}"
    refused(worker, f"ALTER TABLE public.agent_runs DETACH PARTITION {first}")
    refused(worker, f"DROP TABLE {first}")
    refused(worker, "TRUNCATE public.agent_runs_p20260302")
    before = {t: children(conn, f"public.{t}") for t in RAW}

    got = []
    while row := worker.execute(DROP, ("agent_runs", T0 + D + 12 * H)).fetchone():
        got.append(row)
        assert len(got) < 10

    # One partition per call, oldest first, each wholly before the time given.
    assert [(name, lo, hi, rows, done) for name, lo, hi, rows, done in got] == [
        (f"public.agent_runs_p{d:%Y%m%d}", d, d + D, 24 if d == T0 else 0, True)
        for d in (PARTITIONS_FROM, PARTITIONS_FROM + D, T0)]
    assert children(conn, "public.agent_runs") == \
        before["agent_runs"] - {"agent_runs_p20260228", "agent_runs_p20260301",
                                "agent_runs_p20260302"}
    assert count(conn, "public.agent_runs") == 6  # the straddling day's rows are all there
    for table in ("user_events", "credit_transactions"):
        assert children(conn, f"public.{table}") == before[table]

    # Never the default partition nor one without a finite upper bound, whatever the time.
    conn.execute("CREATE TABLE public.agent_runs_rest PARTITION OF public.agent_runs"
                 " FOR VALUES FROM ('2026-06-01') TO (MAXVALUE)")
    while worker.execute(DROP, ("agent_runs", "infinity")).fetchone():
        pass
    assert children(conn, "public.agent_runs") == {"agent_runs_default", "agent_runs_rest"}
    worker.execute(DROP, ("agent_runs", "infinity"))
    assert exists(conn, "public.agent_runs_default") and exists(conn, "public.agent_runs_rest")


@pytest.mark.parametrize("source", [
    "aggjobs.audit_log", "audit_log", "job_runs", "public.agent_runs", "agent_runs_p20260228",
    "agent_runs; DROP TABLE public.agent_runs_p20260228", "", "AGENT_RUNS",
])
def test_drop_partition_before_refuses_anything_but_a_source(conn, worker, source):
    before = children(conn, "public.agent_runs")
    refused(worker, DROP, (source, T0 + 30 * D), error=pg_errors.InvalidParameterValue)
    assert children(conn, "public.agent_runs") == before


def test_tables_that_are_not_day_partitions_of_a_source_are_never_dropped(conn, worker):
    # A partitioned table that is no source, with an old partition.
    conn.execute("CREATE TABLE public.other_log (at timestamptz NOT NULL)"
                 " PARTITION BY RANGE (at)")
    conn.execute("CREATE TABLE public.other_log_old PARTITION OF public.other_log"
                 " FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')")
    # A plain table named like a partition of a source, not attached to it.
    conn.execute("CREATE TABLE public.agent_runs_p20200101 (LIKE public.agent_runs)")
    # Sources (rows only the owner can write) whose tables are partitioned otherwise: by
    # list of workspace, and by range of a column that is not their time column.
    conn.execute("CREATE TABLE public.by_ws (ws bigint NOT NULL, at timestamptz NOT NULL)"
                 " PARTITION BY LIST (ws)")
    conn.execute("CREATE TABLE public.by_ws_1 PARTITION OF public.by_ws FOR VALUES IN (1)")
    conn.execute("CREATE TABLE public.by_other (at timestamptz NOT NULL,"
                 " seen timestamptz NOT NULL) PARTITION BY RANGE (seen)")
    conn.execute("CREATE TABLE public.by_other_old PARTITION OF public.by_other"
                 " FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')")
    conn.execute("INSERT INTO aggjobs.sources (source, relation_schema, relation_name,"
                 " time_column) VALUES ('list', 'public', 'by_ws', 'at'),"
                 " ('other_key', 'public', 'by_other', 'at')")
    # A non-partitioned source: nothing to drop, no error.
    conn.execute("INSERT INTO aggjobs.sources (source, relation_schema, relation_name,"
                 " time_column) VALUES ('plain', 'public', 'agent_runs_p20200101', 'started_at')")

    for source in ("list", "other_key", "plain", *RAW):
        while worker.execute(DROP, (source, T0 - 10 * D)).fetchone():
            pass
    for table in ("public.other_log_old", "public.agent_runs_p20200101", "public.by_ws_1",
                  "public.by_other_old"):
        assert exists(conn, table), table
    # Only the sources' partitions before the time went (02-28 and 03-01 are after it).
    for table in RAW:
        assert len(children(conn, f"public.{table}")) == PARTITION_DAYS + 1
    refused(worker, "SELECT * FROM aggjobs.drop_partition_before('plain', NULL)",
            error=pg_errors.InvalidParameterValue)


def test_reader_cannot_drop_partitions(conn, reader):
    refused(reader, DROP, ("agent_runs", T0 + 30 * D))
    assert len(children(conn, "public.agent_runs")) == PARTITION_DAYS + 1


def test_worker_runs_cleanup_on_partitioned_sources(conn, as_worker):  # noqa: F811
    load(conn, T0, 60)
    assert job(as_worker, "hourly_rollup", T0 + 50 * H).status == "succeeded"
    cleaning = as_worker.model_copy(update={"retention_days": {"raw": 1, **KEEP},
                                            "cleanup_batch_rows": 5})
    result = job(cleaning, "cleanup_old_data", T0 + 30 * D)
    assert result.status == "succeeded", result
    held = T0 + 50 * H  # 03-04 02:00: the partitions up to 03-03 go whole
    for table, column in RAW.items():
        assert conn.execute(f"SELECT min({column}) FROM public.{table}").fetchone()[0] >= held
        step = steps(result)[f"cleanup.{table}"]
        assert [d["partition"] for d in step["detail"]["partitions_dropped"]] == [
            f"public.{table}_p{d:%Y%m%d}" for d in
            (PARTITIONS_FROM, PARTITIONS_FROM + D, T0, T0 + D)]
        assert step["rows"] == 50 and count(conn, f"public.{table}") == 10
    drops = conn.execute("SELECT actor, target, outcome FROM aggjobs.audit_log"
                         " WHERE action = 'retention_drop_partition' ORDER BY id").fetchall()
    assert len(drops) == 12 and {a for a, _, _ in drops} == {"cleanup_old_data"}
    assert ("cleanup_old_data", "public.agent_runs_p20260302", "partition dropped: 24 rows"
            ) in drops
    assert count(conn, "aggjobs.invalidation_log") == 0
