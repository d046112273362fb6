"""`aggjobs up`: everything in one process tree.

The database migrated, demo data if the platform has no runs yet, a fresh admin token, the
rollups caught up; then two children of this process, `aggjobs serve` on 127.0.0.1 and
`aggjobs worker --beat`, supervised: when either exits, or this process gets SIGTERM or
Ctrl-C, both are stopped (terminated, then killed after 15 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from .. import audit
from ..db.connect import scalar
from ..db.migrate import migrate
from ..demo import DemoSpec, load_demo
from ..errors import AggjobsError
from ..jobs.runner import RunResult
from ..settings import Settings
from ..sql import query
from . import tokens
from .runs import manual_run

ACTOR = "aggjobs up"
CATCH_UP_JOBS = ("hourly_rollup", "daily_rollup", "weekly_rollup")
READY_WITHIN_S = 30  # the API server must answer /healthz by then
STOP_WITHIN_S = 15  # the children must exit by then once terminated, else they are killed


def prepare(conn: psycopg.Connection, settings: Settings, *, demo_days: int,
            loading: Callable[[int], None]) -> str:
    """Migrate; load `demo_days` days of demo data if the platform has no runs yet (saying
    so through `loading` first); return the secret of a new admin token."""
    migrate(conn, native=settings.native)
    if scalar(conn, query("no_runs_yet")) and demo_days:
        loading(demo_days)
        load_demo(conn, DemoSpec(days=demo_days))
    secret, _ = tokens.create(conn, f"up-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}", "admin",
                              actor=ACTOR, source=audit.local_source("cli"))
    return secret


def catch_up(settings: Settings, done: Callable[[RunResult], None]) -> None:
    """Run the rollup jobs now, one after the other; `done` is given each one's result."""
    for job in CATCH_UP_JOBS:
        done(manual_run(job, settings, actor=ACTOR, source=audit.local_source("cli")))


def supervise(settings: Settings, *, port: int, concurrency: int,
              ready: Callable[[str], None]) -> int:
    """Start the API server on 127.0.0.1:`port`, call `ready` with its base address once it
    answers, then start the worker with the scheduler; return the exit code of the first
    child to exit (0 on Ctrl-C or SIGTERM), once both are stopped."""
    children = Children(child_env(settings))

    def terminated(*_: object) -> None:
        children.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminated)
    try:
        server = children.start("serve", "--host", "127.0.0.1", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(server, base, port)
        ready(base)
        children.start("worker", "--beat", "--concurrency", str(concurrency))
        return children.first_exit()
    except KeyboardInterrupt:
        return 0
    finally:
        children.stop()


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment, naming the database it chose (the embedded one, when
    AGGJOBS_DATABASE_URL is unset) so that the children use the very same."""
    env = dict(os.environ)
    if settings.database_url:
        env["AGGJOBS_DATABASE_URL"] = settings.database_url
    return env


class Children:
    """The `aggjobs` commands this process started, stopped together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "aggjobs", *args], env=self.env)
        self.procs.append(proc)
        return proc

    def first_exit(self) -> int:
        """Wait until one of them exits; its exit code."""
        while all(proc.poll() is None for proc in self.procs):
            time.sleep(0.5)
        return next(proc for proc in self.procs if proc.poll() is not None).returncode

    def stop(self) -> None:
        """Terminate those still running; kill any not gone within STOP_WITHIN_S."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_WITHIN_S
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until_serving(server: subprocess.Popen, base: str, port: int) -> None:
    """Poll `base`/healthz until it answers; AggjobsError if the server exits first or does
    not answer within READY_WITHIN_S."""
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        if server.poll() is not None:
            raise AggjobsError(f"the API server exited (code {server.returncode}): "
                               f"is port {port} free? (--port)")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AggjobsError(f"the API server did not answer within {READY_WITHIN_S} s"
                                   ) from None
            time.sleep(0.2)
