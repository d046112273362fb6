"""The runner's core: one run of one job, with the guarantees every caller gets (Celery tasks
and `aggjobs run` alike). Callers use aggjobs.jobs.runner, which evaluates the alerts after
the run (an after-run hook given to `run`); this module imports no monitor, so that a run
can be tested without it.

- No overlap: the job's advisory lock is held for the whole run; a run that cannot take it is
  recorded as `skipped`, naming the run that holds it. A scheduled run belongs to a slot (the
  instant the schedule fired); a second run for the same slot is `skipped` too, so a second
  beat duplicates nothing.
- History: the run is a row of aggjobs.job_runs from its first instant ('running') and after
  each step; a run whose database session is gone is marked `abandoned` by the next runner.
- Isolation: each step runs on its own; a failing step is recorded and the next one runs.
  Independent steps (the rollups of a job) run side by side, each on its own session.
- Retries: transient database errors are retried with exponential backoff and jitter, on a
  new connection when the old one broke (re-taking the job lock); permanent ones fail at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.types.json import Jsonb

from ..audit import local_source, local_user
from ..catalog.grains import as_utc
from ..db import locks
from ..db.connect import SessionLimits, connect, first_line, scalar
from ..db.retry import TRANSIENT, RetryPolicy, retrying
from ..engine.abandoned import sweep_abandoned
from ..errors import AggjobsError
from ..settings import Settings
from ..sql import query
from .model import Job, Step, StepContext, StepFn, batches
from .registry import get_job

log = logging.getLogger(__name__)

CLIENT_CHECK_MS = 1000  # client_connection_check_interval of a job's session (PG 14+)
REDELIVERY_WAIT_S = 30.0  # how long a redelivered task waits for a dead run's lock

@dataclass
class StepOutcome:
    name: str
    status: str = "running"  # succeeded, failed, skipped
    rows: int = 0
    seconds: float = 0.0
    started_at: datetime | None = None  # steps may overlap: when this one began
    attempts: int = 0
    detail: dict[str, object] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class RunResult:
    id: int
    job: str
    status: str
    steps: list[StepOutcome] = field(default_factory=list)
    error: str | None = None
    retry_later: bool = False  # skipped for want of a heavy-job slot: worth sending again

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "skipped")


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    job: str
    as_of: datetime | None = None
    trigger: str = "manual"
    who: str | None = None
    slot: datetime | None = None
    attempt: int = 1
    task_id: str | None = None
    source: str | None = None  # audit: the client address, or "cli:user@host" (aggjobs.audit)


class LostJobLock(AggjobsError):
    """The connection holding the job lock broke and another run took the lock."""


# Called after a run that may have changed what is wrong (not a plain skip): the run's
# session (its job lock still held) and the result. aggjobs.jobs.runner evaluates the alerts.
AfterRun = Callable[[psycopg.Connection, RunResult], object]


def run(request: RunRequest, settings: Settings,
        should_stop: Callable[[BaseException], bool] = lambda exc: False,
        after_run: AfterRun | None = None) -> RunResult:
    """Run `request.job` to its end and return what happened (also in aggjobs.job_runs).

    `should_stop(exc)` says whether an exception ends the whole run rather than one step
    (Celery's soft time limit does). `after_run` is called once the run is recorded, unless
    it was skipped without a foreign lock holder to report; its failure never fails the run."""
    job = get_job(request.job)
    as_of = as_utc(request.as_of) if request.as_of else datetime.now(UTC)
    current = Run(job, request, as_of, settings)
    try:
        result = current.execute(should_stop)
        if request.trigger in ("manual", "backfill"):  # people's actions are audited
            current.audit(result)
        if after_run is not None and (result.status != "skipped" or current.foreign_holder):
            current.after(after_run, result)  # a foreign holder: alerted on at once
        return result
    finally:
        current.close()


class Run:
    def __init__(self, job: Job, request: RunRequest, as_of: datetime, settings: Settings):
        self.job, self.request, self.as_of, self.settings = job, request, as_of, settings
        self.limits = SessionLimits.from_settings(settings, job.name)
        self.retry_policy = RetryPolicy.from_settings(settings)
        self.source = request.source or local_source("worker")
        self.conn = self.connect()
        self.stopping = threading.Event()  # set when an interruption ends the run
        self.heavy_slot: int | None = None
        self.foreign_holder = False  # a lock was held by a session aggjobs does not run as
        self.run_id: int | None = None
        self.last_seconds: dict[str, float] = {}  # each step's time in the last run
        self.row = {
            "job": job.name, "trigger": request.trigger, "as_of": as_of, "slot": request.slot,
            "who": request.who or f"{local_user()}@{socket.gethostname()}",
            "attempt": request.attempt, "host": socket.gethostname(), "pid": os.getpid(),
            "task_id": request.task_id,
        }

    def connect(self) -> psycopg.Connection:
        conn = connect(self.job.name, settings=self.settings, limits=self.limits)
        if conn.info.server_version >= 140000:
            # A backend whose client died (worker SIGKILLed) notices it within a second even
            # while it waits on a lock or runs a long statement, and ends: its transaction
            # rolls back and the job lock is freed for the redelivered task.
            conn.execute(query("set_session_setting"),
                         ("client_connection_check_interval", str(CLIENT_CHECK_MS)))
        return conn

    def close(self) -> None:
        end_session(self.conn)

    # -- the run ----------------------------------------------------------------------------
    def execute(self, should_stop: Callable[[BaseException], bool]) -> RunResult:
        busy = self.take_job_lock()
        for run_id, job in self.conn.execute(query("mark_abandoned")).fetchall():
            log.warning("run %s of %s was abandoned: its process died", run_id, job)
        sweep_abandoned_backfills(self.conn, self.source)
        if busy:
            return self.skip(busy)
        if not self.take_heavy_slot():
            held = self.foreign("heavy-job slot")
            return replace(self.skip(
                f"{self.settings.heavy_jobs_concurrency} heavy job(s) already running "
                f"(AGGJOBS_HEAVY_JOBS_CONCURRENCY); waited {self.settings.lock_wait_s:g} s"
                + (f"; a slot is {held}" if held else "")), retry_later=True)
        try:
            run_id = scalar(self.conn, query("start_run"), {**self.row, "status": "running"})
        except pg_errors.UniqueViolation:
            other = self.conn.execute(query("slot_run"), self.row).fetchone()
            return self.skip(f"the run for slot {self.row['slot']:%Y-%m-%d %H:%M} UTC already "
                             f"ran as run {other[0] if other else '?'} ({other and other[1]})")
        self.run_id = run_id
        self.last_seconds = dict(self.conn.execute(query("last_step_seconds"),
                                                   {"job": self.job.name}).fetchall())
        result = RunResult(run_id, self.job.name, "running")
        try:
            for batch in batches(self.job.steps(self.settings)):
                result = replace(result, steps=result.steps + self.run_batch(batch, should_stop))
                self.record(result)
        except BaseException as exc:
            result = replace(result, status="failed", error=describe(exc))
            self.conn.close()  # interrupted mid-statement maybe: finish on a fresh session
            self.finish(result)
            raise
        failed = [s for s in result.steps if s.status == "failed"]
        result = replace(result, status="failed" if failed else "succeeded",
                         error="; ".join(f"{s.name}: {s.error}" for s in failed) or None)
        self.finish(result)
        log.log(logging.ERROR if failed else logging.INFO, "%s run %s %s", self.job.name,
                run_id, result.status, extra=self.context(
                    status=result.status, rows=sum(s.rows for s in result.steps),
                    seconds=round(sum(s.seconds for s in result.steps), 3),
                    error=result.error))
        return result

    def run_batch(self, batch: list[Step], should_stop: Callable[[BaseException], bool]
                  ) -> list[StepOutcome]:
        """Steps one after the other on the run's session, or side by side on sessions of
        their own (no job lock on those: the run's session holds it)."""
        workers = min(len(batch), self.settings.step_concurrency)
        if workers == 1:
            return [self.run_step(step.name, step.run, should_stop) for step in batch]
        sessions: list[StepSession] = []

        def one(step: Step) -> StepOutcome:
            session = StepSession(self)
            sessions.append(session)
            try:
                return self.run_step(step.name, step.run, should_stop, session)
            finally:
                session.close()

        with ThreadPoolExecutor(workers, thread_name_prefix=f"{self.job.name}-step") as pool:
            futures: dict[str, Future[StepOutcome]] = {}
            try:
                for step in self.as_sessions_free(batch, futures, workers):
                    futures[step.name] = pool.submit(one, step)
                return [futures[step.name].result() for step in batch]
            except BaseException:  # e.g. the soft time limit: stop the others' statements
                self.stopping.set()
                for session in sessions:
                    session.cancel()
                raise

    def as_sessions_free(self, batch: list[Step], futures: dict[str, Future[StepOutcome]],
                         workers: int) -> Iterator[Step]:
        """The steps of `batch` to start, each when a session is free and the steps it
        waits for (`after`) have ended, in start_order; `futures`: those started. Returns
        once all have ended; raises the first exception that ends the run."""
        waiting = self.start_order(batch)
        names = {step.name for step in batch}
        while True:
            running = [f for f in futures.values() if not f.done()]
            ended = {name for name, f in futures.items() if f.done()}
            ready = [s for s in waiting if names.intersection(s.after) <= ended]
            for step in ready[:workers - len(running)]:
                waiting.remove(step)
                yield step
            running = [f for f in futures.values() if not f.done()]
            if not running:
                if waiting:  # each waits for another: a job defined wrong
                    raise RuntimeError(f"steps {[s.name for s in waiting]} wait in a circle")
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:  # a step's exception that ends the run
                if (exc := f.exception()) is not None:
                    raise exc

    def start_order(self, batch: list[Step]) -> list[Step]:
        """The steps in the order they start when a session frees up: the longest path
        first, by the steps' times in the job's last run (a step's own, plus the longest of
        the steps that wait for it: `after`); one never timed before them all; ties in the
        job's order. With fewer sessions than steps, the longest then does not wait for a
        session (daily_rollup at 50,000 workspaces: agent_executions.day, 6-7 s, started
        last, when the first of the three others ended), and a step others wait for starts
        before one none does (health_scores waits for two of the four rollups; docs/jobs.md)."""
        path: dict[str, float] = {}
        for step in reversed(batch):  # a step's waiters come after it in the job
            waiters = [path.get(s.name, 0.0) for s in batch if step.name in s.after]
            path[step.name] = (self.last_seconds.get(step.name, math.inf)
                               + max(waiters, default=0.0))
        return sorted(batch, key=lambda step: -path[step.name])

    def run_step(self, name: str, fn: StepFn,
                 should_stop: Callable[[BaseException], bool],
                 session: MainSession | StepSession | None = None) -> StepOutcome:
        session = session or MainSession(self)
        outcome = StepOutcome(name, started_at=datetime.now(UTC))
        started = time.perf_counter()

        def attempt(n: int) -> None:
            outcome.attempts = n
            if n > 1:
                session.recover()  # a new connection if the old one broke
            self.try_step(outcome, fn, should_stop, session)

        def on_retry(n: int, exc: Exception) -> None:
            if should_stop(exc):
                raise exc
            log.warning("%s/%s attempt %d: %s; retrying", self.job.name, name, n,
                        describe(exc), extra=self.context(step=name, attempt=n,
                                                          error=describe(exc)))

        try:
            retrying(self.retry_policy, attempt, on_retry)
        except TRANSIENT as exc:
            if should_stop(exc):
                raise
            outcome.status = "failed"
            tries = f"{outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''}"
            outcome.error = f"{describe(exc)} (transient; gave up after {tries})"
        outcome.seconds = round(time.perf_counter() - started, 3)
        log.info("%s/%s %s", self.job.name, name, outcome.status, extra=self.context(
            step=name, status=outcome.status, rows=outcome.rows, seconds=outcome.seconds,
            attempt=outcome.attempts, error=outcome.error))
        return outcome

    def try_step(self, outcome: StepOutcome, fn: StepFn,
                 should_stop: Callable[[BaseException], bool],
                 session: MainSession | StepSession) -> None:
        """One try of a step, its result in `outcome`; a transient error is raised (retried
        by run_step), another one fails the step."""
        if self.stopping.is_set():
            outcome.status, outcome.error = "failed", "stopped: the run was interrupted"
            return
        try:
            done = fn(StepContext(session.conn, self.as_of, self.settings, self.source,
                                  open_session=self.connect))
        except TRANSIENT:
            raise  # for run_step's retries
        except Exception as exc:
            if should_stop(exc):
                raise
            log.exception("%s/%s failed", self.job.name, outcome.name,
                          extra=self.context(step=outcome.name, error=describe(exc)))
            outcome.status, outcome.error = "failed", describe(exc)
            return
        outcome.status, outcome.rows, outcome.detail = done.status, done.rows, dict(done.detail)

    def after(self, hook: AfterRun, result: RunResult) -> None:
        """The caller's after-run hook (the alerts); never fails the run."""
        try:
            self.ensure_connection(relock=False)
            hook(self.conn, result)
        except Exception:
            log.exception("evaluating alerts failed", extra=self.context())

    def context(self, **fields: object) -> dict[str, object]:
        """Fields for structured logs (aggjobs.logs): the run's identity plus `fields`."""
        return {"job": self.job.name, "run_id": self.run_id, **fields}

    # -- locks and connections ------------------------------------------------------------
    def take_job_lock(self) -> str | None:
        """None once the job is this run's: its lock held and no session of an earlier run's
        steps left; else why not. At once; a redelivered task (its worker died mid-run)
        waits a little, as the dead run's database sessions may take a moment to end."""
        deadline = time.monotonic() + (
            min(REDELIVERY_WAIT_S, self.settings.lock_wait_s) if self.request.attempt > 1 else 0)
        locked = False
        while True:
            locked = locked or scalar(self.conn, query("try_job_lock"), {"job": self.job.name})
            if locked and scalar(self.conn, query("steps_finished"), {"job": self.job.name}):
                return None
            if time.monotonic() >= deadline:
                return self.steps_message() if locked else self.holder_message()
            time.sleep(0.25)

    def foreign(self, kind: str, name: str | None = None) -> str:
        """'' or who, not being aggjobs, holds the lock (aggjobs.db.locks)."""
        held = locks.held_by(self.conn, kind, name)
        self.foreign_holder = self.foreign_holder or bool(held)
        return held

    def steps_message(self) -> str:
        if held := self.foreign("job steps", self.job.name):
            return f"{self.job.name} cannot start: its steps' lock is {held}"
        return (f"steps of an earlier {self.job.name} run whose process died are still "
                "finishing in the database; the next run goes ahead")

    def holder_message(self) -> str:
        if held := self.foreign("job", self.job.name):
            return f"{self.job.name} cannot start: its lock is {held}"
        holder = self.conn.execute(query("running_run"), {"job": self.job.name}).fetchone()
        if holder is None:
            return f"{self.job.name} is already running elsewhere"
        run_id, host, pid, started = holder
        return (f"{self.job.name} is already running: run {run_id} on {host} pid {pid}, "
                f"started {as_utc(started):%Y-%m-%d %H:%M:%S} UTC")

    def take_heavy_slot(self) -> bool:
        """One of the heavy-job slots (the daily, weekly and cleanup jobs), waiting up to
        lock_wait_s; False if none came free."""
        if not self.job.heavy:
            return True
        deadline = time.monotonic() + self.settings.lock_wait_s
        while True:
            row = self.conn.execute(
                query("try_heavy_slot"), {"slots": self.settings.heavy_jobs_concurrency}
            ).fetchone()
            if row:
                self.heavy_slot = row[0]
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, self.settings.lock_wait_s))

    def ensure_connection(self, *, relock: bool = True) -> None:
        """After a broken connection: reconnect and take the job lock (and heavy slot) back;
        `relock=False` only to write the run's end, when no more work follows."""
        if not (self.conn.closed or self.conn.broken):
            return
        self.conn = self.connect()
        if not relock:
            return
        if not scalar(self.conn, query("try_job_lock"), {"job": self.job.name}):
            raise LostJobLock(f"lost the {self.job.name} lock with the connection, and another "
                              "run took it; this run stops")
        if self.heavy_slot is not None:
            self.conn.execute(query("take_heavy_slot"), {"slot": self.heavy_slot})
        if self.run_id is not None:  # the run lives on in this session: not abandoned
            self.conn.execute(query("adopt_run"), {"id": self.run_id})

    # -- history ---------------------------------------------------------------------------
    def skip(self, reason: str) -> RunResult:
        log.info("%s skipped: %s", self.job.name, reason)
        run_id = scalar(self.conn, query("skip_run"), {**self.row, "error": reason})
        return RunResult(run_id, self.job.name, "skipped", error=reason)

    def record(self, result: RunResult) -> None:
        self.with_retries(query("record_steps"), {"id": result.id, "steps": steps_json(result)})

    def finish(self, result: RunResult) -> None:
        self.with_retries(query("finish_run"), {"id": result.id, "status": result.status,
                                                "steps": steps_json(result),
                                                "error": result.error}, relock=False)

    def audit(self, result: RunResult) -> None:
        self.with_retries(query("audit"), {
            "actor": self.row["who"], "action": "run", "target": self.job.name,
            "params": Jsonb({"as_of": self.as_of.isoformat(), "run": result.id,
                             "trigger": self.request.trigger}),
            "outcome": result.status if not result.error else f"{result.status}: {result.error}",
            "source": self.source,
        }, relock=False)

    def with_retries(self, statement: sql.SQL, params: dict[str, object], *,
                     relock: bool = True) -> None:
        """History must land even when the connection just broke."""
        def attempt(n: int) -> None:
            self.ensure_connection(relock=relock)
            self.conn.execute(statement, params)

        try:
            retrying(self.retry_policy, attempt)
        except TRANSIENT as exc:
            log.error("could not record run history: %s", describe(exc))
            raise


class MainSession:
    """The run's own session: a reconnect takes the job lock back."""

    def __init__(self, run: Run):
        self.run = run

    @property
    def conn(self) -> psycopg.Connection:
        return self.run.conn

    def recover(self) -> None:
        self.run.ensure_connection()


class StepSession:
    """A session of one step running beside others: same limits and name as the run's,
    no locks of the run's (those stay on the run's session). Opened on first use, so that
    failing to connect is one more transient error of the step, retried like the others."""

    def __init__(self, run: Run):
        self.run = run
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.run.connect()
            self._conn.execute(query("hold_job_steps"), {"job": self.run.job.name})
        return self._conn

    def recover(self) -> None:
        pass  # `conn` reconnects

    def cancel(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.cancel_safe()
            except (psycopg.Error, OSError):
                pass

    def close(self) -> None:
        if self._conn is not None:
            end_session(self._conn)


def end_session(conn: psycopg.Connection) -> None:
    """Let go of the session's advisory locks, then close it. Closing alone releases them
    too, but only once the server process has ended, a moment later: the next run (at once
    after this one, a retry, a test) would find the job still locked and be skipped."""
    if conn.closed:
        return
    if not conn.broken:
        try:
            conn.execute(query("release_locks"))
        except (psycopg.Error, OSError):
            pass  # closing ends the session and its locks anyway
    conn.close()


def steps_json(result: RunResult) -> Jsonb:
    return Jsonb([asdict(s) for s in result.steps], dumps=lambda o: json.dumps(o, default=str))


def describe(exc: BaseException) -> str:
    """One line a human can act on: the error's class and first line."""
    if isinstance(exc, pg_errors.QueryCanceled) and "statement timeout" in str(exc):
        return f"statement timeout: {first_line(exc)} (raise AGGJOBS_STATEMENT_TIMEOUT_MS or " \
               "AGGJOBS_JOB_STATEMENT_TIMEOUT_MS for this job)"
    if isinstance(exc, AggjobsError):
        return str(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def sweep_abandoned_backfills(conn: psycopg.Connection, source: str) -> None:
    """Backfills whose process died are marked abandoned at each job run too, so that a
    killed one is noticed within the hour even if no backfill follows (aggjobs.operations)."""
    sweep_abandoned(conn, noticed_by=source)
