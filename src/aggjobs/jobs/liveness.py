"""Heartbeats of the Celery workers and schedulers into aggjobs.heartbeats, so that their
liveness is known whatever the broker (docs/jobs.md, "Liveness").

- A worker: a consumer bootstep whose timer, in the worker's own event loop, asks for a
  heartbeat every interval (monitor.liveness.heartbeat_interval); a wedged loop stops them.
  Its clean shutdown (`worker_shutdown`) is recorded.
- A scheduler (beat, alone or embedded with `--beat`): the app's beat scheduler class, which
  asks for a heartbeat at each tick (ticking at least every interval) and records its stop
  when beat closes it.

The writes run on a thread of their own, so a slow or unreachable database never blocks the
worker's loop or beat's: a heartbeat still in flight makes the next one wait its turn, a
failure is logged once per outage and tried again at the next beat, never raised. Each
heartbeat from the third on also checks the liveness alerts (no worker, no scheduler), on
another thread, so that a webhook's retries never delay a heartbeat.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
from celery import bootsteps
from celery.beat import PersistentScheduler
from celery.signals import beat_embedded_init, worker_shutdown

from ..db import heartbeats
from ..db.connect import SessionLimits, connect, first_line
from ..db.heartbeats import Process
from ..errors import AggjobsError
from ..monitor import alerts
from ..monitor.liveness import MISSED_BEATS, heartbeat_interval
from ..settings import Settings, get_settings

log = logging.getLogger("aggjobs.liveness")

# A heartbeat is one short statement: it never waits long for anything.
LIMITS_MS = {"statement_timeout_ms": 5_000, "lock_timeout_ms": 2_000}


class Session:
    """One lazily opened connection named `aggjobs:<purpose>`, dropped after an error so
    that the next use connects again."""

    def __init__(self, purpose: str, settings: Settings) -> None:
        self.purpose, self.settings = purpose, settings
        self.conn: psycopg.Connection | None = None

    def run(self, work: Callable[[psycopg.Connection], object]) -> None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.purpose, settings=self.settings, limits=SessionLimits(
                    **LIMITS_MS, work_mem=self.settings.work_mem,
                    idle_in_transaction_timeout_ms=self.settings.idle_in_transaction_timeout_ms))
            work(self.conn)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Heartbeat:
    """One process's heartbeats, sent off its own thread."""

    def __init__(self, process: Process, settings: Settings) -> None:
        self.process, self.settings = process, settings
        self.first, self.failing, self.stopped = True, False, False
        self.sent = 0
        self.beats = Session(f"heartbeat:{process.kind}", settings)
        self.alerts = Session(f"heartbeat:{process.kind}:alerts", settings)
        self.sender = ThreadPoolExecutor(1, thread_name_prefix="aggjobs-heartbeat")
        self.checker = ThreadPoolExecutor(1, thread_name_prefix="aggjobs-liveness-alerts")
        self.sending: Future[None] | None = None
        self.checking: Future[None] | None = None
        self.lock = threading.Lock()

    def tick(self) -> None:
        """Called from the process's own loop: never blocks, never raises."""
        with self.lock:
            if self.stopped or (self.sending is not None and not self.sending.done()):
                return
            self.sending = self.sender.submit(self.send)

    def send(self) -> None:
        try:
            self.beats.run(lambda conn: heartbeats.beat(conn, self.process, first=self.first))
        except Exception as exc:  # noqa: BLE001 (a heartbeat never ends its process)
            if not self.failing:
                log.warning("heartbeat of %s %s failed, tried again every beat: %s",
                            self.process.kind, self.process.name, first_line(exc) or exc)
            self.failing = True
            return
        if self.failing:
            log.info("heartbeat of %s %s: the database answers again", self.process.kind,
                     self.process.name)
        self.first = self.failing = False
        self.sent += 1
        with self.lock:
            # From the third on: a worker and the beat started beside it (`aggjobs up`) on a
            # fresh install do not announce each other's absence while both start.
            if self.sent >= MISSED_BEATS and (self.checking is None or self.checking.done()):
                self.checking = self.checker.submit(self.check_alerts)

    def check_alerts(self) -> None:
        try:
            self.alerts.run(lambda conn: alerts.evaluate(conn, self.settings,
                                                         liveness_only=True))
        except Exception as exc:  # noqa: BLE001 (tried again at the next heartbeat)
            log.warning("liveness alerts not checked: %s", first_line(exc) or exc)

    def stop(self) -> None:
        """The clean shutdown: after a heartbeat in flight, the process's row says it stopped
        (once, however often this is called)."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        self.sender.shutdown(wait=True)
        self.checker.shutdown(wait=False, cancel_futures=True)
        try:
            self.beats.run(lambda conn: heartbeats.stopped(conn, self.process))
            log.info("%s %s stopped: recorded", self.process.kind, self.process.name)
        except (psycopg.Error, AggjobsError) as exc:
            log.warning("the stop of %s %s was not recorded: %s", self.process.kind,
                        self.process.name, exc)
        finally:
            self.beats.close()


# The app attribute holding the settings its jobs were added with (jobs/tasks.py), so that a
# platform's app beats with them; aggjobs' own app has the process's anyway.
SETTINGS_ATTRIBUTE = "aggjobs_settings"

# The worker of this process (one per process), for `worker_shutdown`.
WORKER: dict[str, Heartbeat] = {}


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A consumer bootstep: the worker's heartbeat on its own timer."""

    label = "aggjobs heartbeat"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        heartbeat = WORKER.get("worker")
        if heartbeat is None:
            settings = getattr(c.app, SETTINGS_ATTRIBUTE, None) or get_settings()
            queues = sorted(c.app.amqp.queues.consume_from)
            heartbeat = WORKER["worker"] = Heartbeat(
                Process("worker", c.hostname, queues=queues), settings)
        heartbeat.tick()
        self.timer_entry = c.timer.call_repeatedly(heartbeat_interval(heartbeat.settings),
                                                   heartbeat.tick)

    def stop(self, c: Any) -> None:  # the consumer restarts (a lost broker) or ends
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop


@worker_shutdown.connect
def worker_stopped(**_: object) -> None:
    heartbeat = WORKER.pop("worker", None)
    if heartbeat is not None:
        heartbeat.stop()


class HeartbeatScheduler(PersistentScheduler):
    """Celery's default scheduler (the schedule kept in a file), with a heartbeat at each
    tick; it ticks at least every heartbeat interval."""

    heartbeat: Heartbeat | None = None

    def setup_schedule(self) -> None:
        super().setup_schedule()
        settings = get_settings()
        self.heartbeat = Heartbeat(
            Process("scheduler", f"beat.{os.getpid()}@{socket.gethostname()}"), settings)
        interval = heartbeat_interval(settings)
        # celery-types declares max_interval an int; Celery takes any number of seconds
        self.max_interval = min(self.max_interval or interval, interval)  # type: ignore[assignment]

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self.heartbeat is not None:
            self.heartbeat.tick()
        return super().tick(*args, **kwargs)

    def close(self) -> None:
        super().close()
        if self.heartbeat is not None:
            self.heartbeat.stop()


@beat_embedded_init.connect
def stop_cleanly_on_sigterm(**_: object) -> None:
    """The worker ends its embedded beat process with SIGTERM, whose default action would
    end it at once: as SystemExit instead, beat closes its scheduler, which records the
    stop."""
    def leave(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)
