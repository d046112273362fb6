"""Prometheus metrics (docs/api.md, "Metrics"), read from the database at each scrape.

Two kinds, kept apart so that `promtool check metrics` and `rate()` are right:

- **Gauges**: the state now (liveness, lag, pending groups, failures in a row, backfills,
  rebuilds) and what is read back from the retained job history (`aggjobs_job_runs_retained`,
  `aggjobs_job_rows_written_retained`), which the cleanup job trims, so it can go down. Every
  `aggjobs serve` replica reports the same values.
- **Counters and a histogram** counted by this API process: each run that finishes after
  the process's first scrape is counted once (`aggjobs_job_runs_total`,
  `aggjobs_job_rows_written_total`, `aggjobs_job_run_duration_seconds`). They only go up
  while the process lives and restart from 0 with it, as Prometheus expects of counters;
  replicas count the same runs, so aggregate them with `max without (instance)`, not `sum`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from psycopg.rows import dict_row

from ..catalog.jobs import JOB_SPECS as JOBS
from ..engine.status import rebuilds, rollup_status
from ..monitor import job_states, liveness
from ..settings import Settings
from ..sql import query

STATUSES = ("running", "succeeded", "failed", "skipped", "abandoned")
FINISHED = STATUSES[1:]
# Seconds to hours: the view refresh takes seconds, a catching-up daily job hours.
BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800)
# How far back each scrape looks for finished runs, before the previous scrape: longer than
# any gap between a run's finished_at and the commit that makes it visible.
LOOK_BACK = timedelta(minutes=10)


class RunTally:
    """The counters of this process: runs finished since its first scrape, each counted
    once, by job and status; the rows they wrote; their durations' histogram."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: datetime | None = None  # None: the first scrape sets the baseline
        self.seen: set[int] = set()
        self.runs = {(j, s): 0 for j in JOBS for s in FINISHED}
        self.rows = dict.fromkeys(JOBS, 0)
        self.hist: dict[tuple[str, str], list[float]] = {}  # per bucket, then +Inf, sum

    def update(self, conn: psycopg.Connection) -> None:
        with self.lock:
            now: datetime = conn.execute(query("metric_clock")).fetchone()[0]  # type: ignore[index]
            since = (self.since or now) - LOOK_BACK
            with conn.cursor(row_factory=dict_row) as cur:
                found = cur.execute(query("metric_finished_runs"), {"since": since}).fetchall()
            for run in found:
                if self.since is not None and run["id"] not in self.seen:
                    self.count(run)
            self.seen = {run["id"] for run in found}
            self.since = now

    def count(self, run: dict) -> None:
        key = (run["job"], run["status"])
        self.runs[key] = self.runs.get(key, 0) + 1
        self.rows[run["job"]] = self.rows.get(run["job"], 0) + int(run["rows"])
        hist = self.hist.setdefault(key, [0.0] * (len(BUCKETS) + 2))
        for i, bound in enumerate(BUCKETS):
            hist[i] += run["seconds"] <= bound
        hist[-2] += 1
        hist[-1] += run["seconds"]

    def families(self) -> Iterator[Metric]:
        with self.lock:
            runs = CounterMetricFamily(
                "aggjobs_job_runs", "Runs finished since this API process's first scrape, "
                "by job and status (counted once each).", labels=["job_name", "status"])
            for (job, status), n in sorted(self.runs.items()):
                runs.add_metric([job, status], n)
            rows = CounterMetricFamily(
                "aggjobs_job_rows_written", "Rows written by the steps of the runs finished "
                "since this API process's first scrape.", labels=["job_name"])
            for job, n in sorted(self.rows.items()):
                rows.add_metric([job], n)
            hist = HistogramMetricFamily(
                "aggjobs_job_run_duration_seconds", "Duration of the runs finished since this "
                "API process's first scrape, by job and status.", labels=["job_name", "status"])
            for (job, status), h in sorted(self.hist.items()):
                buckets = [(str(float(b)), h[i]) for i, b in enumerate(BUCKETS)]
                hist.add_metric([job, status], [*buckets, ("+Inf", h[-2])], h[-1])
        yield from (runs, rows, hist)


class DatabaseCollector(Collector):
    """Reads the job history, rollup state, liveness and backfills on each scrape."""

    def __init__(self, connect: Callable[[], psycopg.Connection], settings: Settings):
        self.connect = connect
        self.settings = settings
        self.tally = RunTally()

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
        self.tally.update(conn)
        yield from self.tally.families()
        yield from retained_history(conn)
        yield from job_health(job_states(conn, self.settings, now), self.settings)
        yield from rollup_state(conn, now, self.settings)
        yield rebuild_progress(conn)
        yield from backfill_progress(conn)
        yield from liveness_families(liveness.state(conn, self.settings))


def rebuild_progress(conn: psycopg.Connection) -> Metric:
    progress = GaugeMetricFamily(
        "aggjobs_rebuild_progress",
        "Share (0 to 1) of a changed rollup's hours its new version has rebuilt, until the "
        "swap (docs/rollups.md, \"Changing a rollup\").", labels=["rollup", "version"])
    for row in rebuilds(conn):
        progress.add_metric([row["rollup"], str(row["version"])], row["progress"])
    return progress


def backfill_progress(conn: psycopg.Connection) -> Iterator[Metric]:
    running = GaugeMetricFamily("aggjobs_backfills_running", "Backfills running now.")
    progress = GaugeMetricFamily(
        "aggjobs_backfill_progress", "Share (0 to 1) of its range a running backfill has "
        "recomputed.", labels=["backfill", "rollup", "grain"])
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("metric_running_backfills")).fetchall()
    for row in rows:
        total = (row["range_end"] - row["range_start"]).total_seconds()
        done = (row["done_until"] - row["range_start"]).total_seconds()
        progress.add_metric([str(row["id"]), row["rollup"], row["grain"]],
                            min(1.0, max(0.0, done / total)) if total > 0 else 0.0)
    running.add_metric([], len(rows))
    yield running
    yield progress


def retained_history(conn: psycopg.Connection) -> Iterator[Metric]:
    counts = {(j, s): n for j, s, n in conn.execute(query("metric_run_counts"))}
    runs = GaugeMetricFamily(
        "aggjobs_job_runs_retained", "Runs in the retained job history (aggjobs.job_runs, "
        "trimmed by the cleanup job), by job and status.", labels=["job_name", "status"])
    for job in sorted(set(JOBS) | {j for j, _ in counts}):
        for status in STATUSES:
            runs.add_metric([job, status], counts.get((job, status), 0))
    yield runs
    written: dict[str, int] = dict(conn.execute(query("metric_rows_written")).fetchall())
    rows = GaugeMetricFamily(
        "aggjobs_job_rows_written_retained",
        "Rows reported by the steps of the job's runs in the retained history.",
        labels=["job_name"])
    for job in sorted(set(JOBS) | set(written)):
        rows.add_metric([job], written.get(job, 0))
    yield rows


def job_health(states: list[dict], settings: Settings) -> Iterator[Metric]:
    last_ok = GaugeMetricFamily(
        "aggjobs_job_last_success_timestamp_seconds",
        "Unix time the job's latest successful run finished (absent: never).",
        labels=["job_name"])
    failures = GaugeMetricFamily(
        "aggjobs_job_consecutive_failures",
        "Runs of the job failed or abandoned in a row since its latest success.",
        labels=["job_name"])
    running = GaugeMetricFamily(
        "aggjobs_job_running_seconds", "How long the job's run in progress has been "
        "running (0: none).", labels=["job_name"])
    budget = GaugeMetricFamily(
        "aggjobs_job_time_limit_seconds", "The job's time budget: Celery's hard time limit "
        "(AGGJOBS_JOB_TIME_LIMIT_S).", labels=["job_name"])
    for state in states:
        job = state["job"]
        if state["last_success"] is not None:
            last_ok.add_metric([job], state["last_success"].timestamp())
        failures.add_metric([job], state["consecutive_failures"])
        in_progress = state["last_status"] == "running"
        running.add_metric([job], (state["last_seconds"] or 0.0) if in_progress else 0.0)
        budget.add_metric([job], JOBS[job].time_limit(settings))
    yield from (last_ok, failures, running, budget)


def rollup_state(conn: psycopg.Connection, now: datetime, settings: Settings
                 ) -> Iterator[Metric]:
    labels = ["rollup", "grain"]
    lag = GaugeMetricFamily(
        "aggjobs_rollup_lag_seconds",
        "How far the rollup's watermark is behind the last complete bucket (absent: "
        "nothing materialized yet).", labels=labels)
    target = GaugeMetricFamily(
        "aggjobs_rollup_freshness_target_seconds", "The lag beyond which the rollup is stale "
        "(AGGJOBS_FRESHNESS_TARGET_S).", labels=labels)
    pending = GaugeMetricFamily(
        "aggjobs_rollup_pending_groups",
        "Groups invalidated by late, updated or deleted rows, awaiting recompute.",
        labels=labels)
    quarantined = GaugeMetricFamily(
        "aggjobs_rollup_quarantined_buckets", "Buckets quarantined after repeated permanent "
        "failures (docs/jobs.md), skipped until fixed.", labels=labels)
    c_functions = GaugeMetricFamily(
        "aggjobs_rollup_c_functions", "1 when the C functions of aggjobs_native compute the "
        "rollup, 0 when the portable SQL does (docs/native.md); absent for a rollup without "
        "a quantile or a distinct count, the same SQL either way.", labels=labels)
    for row in rollup_status(conn, now=now):
        key = [row["rollup"], row["grain"]]
        if row["lag_seconds"] is not None:
            lag.add_metric(key, row["lag_seconds"])
        target.add_metric(key, settings.freshness_target(row["grain"]))
        pending.add_metric(key, row["pending_groups"])
        quarantined.add_metric(key, row["quarantined_buckets"])
        if row["path"] != "sql":
            c_functions.add_metric(key, 1.0 if row["path"] == "native" else 0.0)
    yield from (lag, target, pending, quarantined, c_functions)


def liveness_families(live: dict) -> Iterator[Metric]:
    """Per worker and scheduler seen: up (0 or 1) and the age of its last heartbeat; and
    how many are up, present even when none ever was (for a rule on `== 0`)."""
    for kind, plural in liveness.KINDS:
        total = GaugeMetricFamily(f"aggjobs_{plural}_up", f"{kind.capitalize()}s alive now "
                                  "(heartbeat recent, not stopped).")
        up = GaugeMetricFamily(f"aggjobs_{kind}_up", f"1 while the {kind} is alive, 0 once "
                               "stopped or silent (docs/jobs.md, \"Liveness\").",
                               labels=["name"])
        age = GaugeMetricFamily(f"aggjobs_{kind}_heartbeat_age_seconds", "Seconds since the "
                                f"{kind}'s last heartbeat (database clock).", labels=["name"])
        for row in live[plural]:
            up.add_metric([row["name"]], int(row["up"]))
            age.add_metric([row["name"]], row["age_seconds"])
        total.add_metric([], liveness.counts(live)[kind])
        yield from (total, up, age)


def registry(connect: Callable[[], psycopg.Connection], settings: Settings) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatabaseCollector(connect, settings))
    return reg
