"""Prometheus metrics, collected from the database at scrape time (nothing is kept in the
API process, so any number of `aggjobs serve` replicas report the same numbers).

Counts come from aggjobs.job_runs, i.e. the retained history (AGGJOBS_RETENTION_DAYS
job_runs, 90 days by default): `aggjobs_job_runs_total` and `aggjobs_job_rows_written_total`
are therefore gauges that can go down when cleanup deletes old runs; use `delta()` or
`increase()` over windows much shorter than the retention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
from prometheus_client.core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..catalog.jobs import JOB_SPECS as JOBS
from ..engine.status import rebuilds, rollup_status
from ..monitor import job_states
from ..settings import Settings
from ..sql import query

STATUSES = ("running", "succeeded", "failed", "skipped", "abandoned")
# Seconds to hours: the view refresh takes seconds, a catching-up daily job hours.
BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800)


class DatabaseCollector(Collector):
    """Reads job history and rollup state on each scrape."""

    def __init__(self, connect: Callable[[], psycopg.Connection], settings: Settings):
        self.connect = connect
        self.settings = settings

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration: that would need the database

    def collect(self) -> Iterator[Metric]:
        with self.connect() as conn:
            yield from self.families(conn)

    def families(self, conn: psycopg.Connection) -> Iterator[Metric]:
        now = datetime.now(UTC)
        up = GaugeMetricFamily("aggjobs_up", "1 when the database answered this scrape.")
        up.add_metric([], 1)
        yield up
        yield run_counts(conn)
        yield durations(conn)
        yield from job_health(job_states(conn, self.settings, now))
        yield rows_written(conn)
        yield from rollup_state(conn, now)
        yield rebuild_progress(conn)


def rebuild_progress(conn: psycopg.Connection) -> Metric:
    progress = GaugeMetricFamily(
        "aggjobs_rebuild_progress",
        "Share (0 to 1) of a changed rollup's hours its new version has rebuilt, until the "
        "swap (docs/rollups.md, \"Changing a rollup\").", labels=["rollup", "version"])
    for row in rebuilds(conn):
        progress.add_metric([row["rollup"], str(row["version"])], row["progress"])
    return progress


def run_counts(conn: psycopg.Connection) -> Metric:
    counts = {(j, s): n for j, s, n in conn.execute(query("metric_run_counts"))}
    runs = GaugeMetricFamily(
        "aggjobs_job_runs_total", "Runs in the retained job history, by job and status.",
        labels=["job", "status"])
    for job in sorted(set(JOBS) | {j for j, _ in counts}):
        for status in STATUSES:
            runs.add_metric([job, status], counts.get((job, status), 0))
    return runs


def durations(conn: psycopg.Connection) -> Metric:
    hist = HistogramMetricFamily(
        "aggjobs_job_run_duration_seconds",
        "Duration of finished runs in the retained history, by job and status.",
        labels=["job", "status"])
    rows = conn.execute(query("metric_durations"), {"buckets": list(BUCKETS)}).fetchall()
    for job, status, total, total_s, cumulative in sorted(rows):
        buckets = [(_le(b), n) for b, n in zip(BUCKETS, cumulative, strict=True)]
        buckets.append(("+Inf", total))
        hist.add_metric([job, status], buckets, total_s)
    return hist


def job_health(states: list[dict]) -> Iterator[Metric]:
    last_ok = GaugeMetricFamily(
        "aggjobs_job_last_success_timestamp_seconds",
        "Unix time the job's latest successful run finished (absent: never).",
        labels=["job"])
    failures = GaugeMetricFamily(
        "aggjobs_job_consecutive_failures",
        "Runs of the job failed or abandoned in a row since its latest success.",
        labels=["job"])
    for state in states:
        if state["last_success"] is not None:
            last_ok.add_metric([state["job"]], state["last_success"].timestamp())
        failures.add_metric([state["job"]], state["consecutive_failures"])
    yield last_ok
    yield failures


def rows_written(conn: psycopg.Connection) -> Metric:
    written: dict[str, int] = dict(conn.execute(query("metric_rows_written")).fetchall())
    rows_fam = GaugeMetricFamily(
        "aggjobs_job_rows_written_total",
        "Rows reported by the steps of the job's runs in the retained history.",
        labels=["job"])
    for job in sorted(set(JOBS) | set(written)):
        rows_fam.add_metric([job], written.get(job, 0))
    return rows_fam


def rollup_state(conn: psycopg.Connection, now: datetime) -> Iterator[Metric]:
    lag = GaugeMetricFamily(
        "aggjobs_rollup_lag_seconds",
        "How far the rollup's watermark is behind the last complete bucket (absent: "
        "nothing materialized yet).", labels=["rollup", "grain"])
    pending = GaugeMetricFamily(
        "aggjobs_rollup_pending_groups",
        "Groups invalidated by late, updated or deleted rows, awaiting recompute.",
        labels=["rollup", "grain"])
    for row in rollup_status(conn, now=now):
        if row["lag_seconds"] is not None:
            lag.add_metric([row["rollup"], row["grain"]], row["lag_seconds"])
        pending.add_metric([row["rollup"], row["grain"]], row["pending_groups"])
    yield lag
    yield pending


def _le(bound: float) -> str:
    return str(float(bound))


def registry(connect: Callable[[], psycopg.Connection], settings: Settings) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatabaseCollector(connect, settings))
    return reg
