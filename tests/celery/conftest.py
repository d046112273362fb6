"""Real Celery workers, as subprocesses, on a real broker (Redis) and a fresh database.

AGGJOBS_TEST_BROKER_URL names the broker (default redis://127.0.0.1:6379/15); its database
is flushed before each test. When it cannot be reached the worker tests are skipped. Workers
are started in their own process group and always stopped (cold shutdown, then SIGKILL) at
teardown, whatever the test did to them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from aggjobs.settings import Settings

BROKER_URL = os.environ.get("AGGJOBS_TEST_BROKER_URL") or "redis://127.0.0.1:6379/15"
READY_TIMEOUT_S = 60.0


def poll(check: Callable[[], object], timeout: float, what: str, every: float = 0.1,
         context: Callable[[], str] | None = None):
    """check() until it returns something truthy; fail naming `what` after `timeout` s,
    with `context()` (e.g. the worker's log) to say why."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}"
                        + (f"\n{context()}" if context else ""))
        time.sleep(every)


@pytest.fixture
def broker_url() -> str:
    """The test broker, flushed: no message of an earlier test is delivered to this one."""
    if not BROKER_URL.startswith(("redis://", "rediss://")):
        pytest.skip(f"the celery tests flush a Redis broker; {BROKER_URL} is not one")
    import redis

    client = redis.Redis.from_url(BROKER_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI"):  # CI starts Redis: a missing broker is a failure there
            pytest.fail(f"no Redis broker at {BROKER_URL}: {exc}")
        pytest.skip(f"no Redis broker at {BROKER_URL}: {exc}")
    finally:
        client.close()
    return BROKER_URL


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path
    beat: bool

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Cold shutdown (SIGQUIT: no waiting for running tasks), then SIGKILL the group."""
        if self.alive():
            try:
                os.kill(self.proc.pid, signal.SIGQUIT)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # pool children (and an embedded beat) left behind by a SIGKILLed parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


def queue_for(db_url: str) -> str:
    """A queue per test database: test runs sharing a broker never take each other's tasks."""
    return "aggjobs." + conninfo_to_dict(db_url)["dbname"]


@dataclass
class Workers:
    db_url: str
    broker_url: str
    tmp_path: Path
    started: list[Worker] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
        env.update(
            AGGJOBS_DATABASE_URL=self.db_url,
            AGGJOBS_BROKER_URL=self.broker_url,
            AGGJOBS_DATA_DIR=str(self.tmp_path),
            AGGJOBS_QUEUE=queue_for(self.db_url),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def start(self, *, beat: bool = False, wait: bool = True, cli: list[str] | None = None,
              app: str = "aggjobs.jobs.app", **env: str) -> Worker:
        """A worker through Celery's own command on the test queue (of `app`: aggjobs' own,
        or a platform's), or, given `cli`, through `aggjobs worker <cli>` (its own queue
        choice; node name w<n>@host)."""
        n = len(self.started) + 1
        name = f"w{n}"
        # The node name is unique to this test process: a node's control queue on a shared
        # broker (RabbitMQ's `<node>.celery.pidbox`) is exclusive, and CI's two suite runs
        # side by side start their w1 at the same time.
        node = f"{name}-{os.getpid()}"
        log = self.tmp_path / f"{name}.log"
        if cli is not None:
            argv = [sys.executable, "-m", "aggjobs", "worker", *cli, "--concurrency", "1",
                    "-n", f"{node}@%h"]
        else:
            argv = [sys.executable, "-m", "celery", "-A", app, "worker",
                    "-Q", queue_for(self.db_url), "--concurrency", "1", "--pool", "prefork",
                    "-n", f"{node}@%h", "--loglevel", "INFO", "--without-gossip",
                    "--without-mingle", "--without-heartbeat"]
        if beat:
            argv += ["--beat", "-s", str(self.tmp_path / f"{name}-beat-schedule")]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=self.env(**env), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.tmp_path)
        worker = Worker(node, proc, log, beat)
        self.started.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker) -> None:
        def ready() -> bool:
            if not worker.alive():
                pytest.fail(f"worker {worker.name} exited {worker.proc.returncode}:\n"
                            f"{worker.text()[-4000:]}")
            return " ready." in worker.text()

        poll(ready, READY_TIMEOUT_S, f"worker {worker.name} to be ready",
             context=lambda: f"its log:\n{worker.text()[-4000:]}")

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(db_url: str, broker_url: str, tmp_path: Path) -> Iterator[Workers]:
    """A factory of real Celery workers on the test database and broker."""
    pool = Workers(db_url, broker_url, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def celery_app(db_url: str, broker_url: str, tmp_path: Path):
    """The aggjobs Celery app as a client (sending tasks) of the test broker."""
    from aggjobs.jobs.app import create_app

    app = create_app(Settings(database_url=db_url, broker_url=broker_url, data_dir=tmp_path,
                              queue=queue_for(db_url)))
    yield app
    app.close()


def job_runs(conn: psycopg.Connection, job: str | None = None) -> list[dict]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT * FROM aggjobs.job_runs WHERE %(job)s::text IS NULL OR job = %(job)s ORDER BY id",
        {"job": job}).fetchall()
