"""`aggjobs up`: everything in one process tree.

The database migrated, demo data if the platform has no runs yet, a fresh admin token
(expiring after 12 hours, revoked when `up` stops), the rollups caught up; then two children
of this process, `aggjobs serve` on 127.0.0.1 and `aggjobs worker --beat`, each writing to
its log file under AGGJOBS_DATA_DIR/logs, supervised: when either exits, or this process gets
SIGTERM or Ctrl-C, both are stopped (terminated, then killed after 15 s). The embedded
database and broker, if used, keep running (`aggjobs db stop`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from .. import audit
from ..db import embedded_native
from ..db.connect import connect, database_url, scalar
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
SCHEDULING_WITHIN_S = 90  # the worker must be consuming, and its scheduler started, by then
STOP_WITHIN_S = 15  # the children must exit by then once terminated, else they are killed
TOKEN_HOURS = 12.0  # the admin token `up` mints expires after this (and is revoked on exit)
# What the worker logs once it consumes, and once its embedded scheduler runs.
WORKER_READY, BEAT_STARTED = " ready.", "beat: Starting..."
LABELS = {"serve": "API server", "worker": "worker with the scheduler"}


@dataclass(frozen=True)
class UpToken:
    """The admin token in the dashboard's address: its name (to revoke it) and secret."""

    name: str
    secret: str
    expires_at: datetime


def native_for_embedded(settings: Settings) -> tuple[bool, str | None]:
    """Whether migrate installs the C functions, and the one line saying which path the
    rollups run and why. On the embedded server they are built for it first, where a C
    compiler is present (db/embedded_native.py); where they cannot be, the extension is
    dropped if an earlier build had installed it, so the portable SQL runs. On the
    platform's own server nothing is built (`make native`) and nothing is said."""
    if settings.database_url:
        return settings.native, None
    if not settings.native:
        return False, "rollups: portable SQL (AGGJOBS_NATIVE=false)"
    got = embedded_native.prepare(settings.data_dir, database_url(settings))
    if not got.ready:
        return False, (f"rollups: portable SQL, same results but slower (docs/native.md): "
                       f"{got.reason}")
    where = settings.data_dir.expanduser().resolve() / embedded_native.NATIVE
    return True, (f"rollups: C functions (aggjobs_native {'built now' if got.built else 'built'}"
                  f" for the embedded {got.version}, in {where})")


def prepare(conn: psycopg.Connection, settings: Settings, *, demo_days: int,
            token_hours: float, loading: Callable[[int], None],
            native: bool | None = None) -> UpToken:
    """Migrate (with the C functions if `native`, default AGGJOBS_NATIVE); load
    `demo_days` days of demo data if the platform has no runs yet (saying so through
    `loading` first); mint an admin token expiring after `token_hours`."""
    migrate(conn, native=settings.native if native is None else native)
    if scalar(conn, query("no_runs_yet")) and demo_days:
        loading(demo_days)
        load_demo(conn, DemoSpec(days=demo_days))
    secret, row = tokens.create(conn, f"up-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}", "admin",
                                actor=ACTOR, expires_days=token_hours / 24,
                                source=audit.local_source("cli"))
    return UpToken(name=row["name"], secret=secret, expires_at=row["expires_at"])


def revoke_token(token: UpToken, settings: Settings) -> str | None:
    """Revoke `up`'s token as it stops; None, or why it could not be (it expires anyway)."""
    try:
        with connect("up", settings=settings) as conn:
            tokens.revoke(conn, token.name, actor=ACTOR, source=audit.local_source("cli"))
    except tokens.UnknownToken:
        return None  # revoked meanwhile (`aggjobs token revoke`)
    except (AggjobsError, psycopg.Error) as exc:
        return f"{exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return None


def catch_up(settings: Settings, done: Callable[[RunResult], None]) -> None:
    """Run the rollup jobs now, one after the other; `done` is given each one's result."""
    for job in CATCH_UP_JOBS:
        done(manual_run(job, settings, actor=ACTOR, source=audit.local_source("cli")))


def logs_dir(settings: Settings) -> Path:
    """Where the children's output goes: the terminal keeps only `up`'s own lines."""
    return settings.data_dir.expanduser().resolve() / "logs"


def supervise(settings: Settings, *, port: int, concurrency: int,
              ready: Callable[[str], None]) -> None:
    """Start the API server on 127.0.0.1:`port` and, once it answers, the worker with the
    scheduler; call `ready` with the base address once both are running; return on Ctrl-C
    or SIGTERM, once both are stopped. AggjobsError, naming its log, when a child exits on
    its own or does not start."""
    children = Children(child_env(settings), logs_dir(settings))

    def terminated(*_: object) -> None:
        # A second Ctrl-C must not cut the children's stop short and leave them running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt  # the same way out as Ctrl-C: the children stopped, then back

    # SIGINT too: a shell starting `up` in the background has it ignored, and the children
    # (which do stop on it) would otherwise seem to have exited on their own.
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, terminated)
    try:
        server = children.start("serve", "--host", "127.0.0.1", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(server, base, port)
        children.start("worker", "--beat", "--quiet", "--concurrency", str(concurrency))
        children.wait_for("worker", (WORKER_READY, BEAT_STARTED), SCHEDULING_WITHIN_S)
        ready(base)
        children.raise_on_first_exit()
    except KeyboardInterrupt:
        return
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
    """The `aggjobs` commands this process started, each writing to its log file under
    `logs`, stopped together."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.offsets: dict[str, int] = {}  # where this start's lines begin in each log

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, *args: str) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as out:
            self.offsets[name] = out.tell()
            proc = subprocess.Popen([sys.executable, "-m", "aggjobs", name, *args],
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        """What `name` wrote since this process started it."""
        with open(self.log(name), "rb") as log:
            log.seek(self.offsets[name])
            return log.read().decode(errors="replace")

    def exited(self, name: str) -> AggjobsError:
        code = self.procs[name].returncode
        lines = self.output(name).strip().splitlines()
        last = f": {lines[-1][:300]}" if lines else ""
        return AggjobsError(f"the {LABELS[name]} exited (code {code}); its log is "
                            f"{self.log(name)}"
                            f"{last}")

    def wait_for(self, name: str, marks: tuple[str, ...], within_s: float) -> None:
        """Until `name`'s output holds every one of `marks`; AggjobsError if it exits first
        or they do not appear within `within_s`."""
        deadline = time.monotonic() + within_s
        while not all(mark in self.output(name) for mark in marks):
            if self.procs[name].poll() is not None:
                raise self.exited(name)
            if time.monotonic() > deadline:
                raise AggjobsError(f"the {LABELS[name]} did not start within {within_s:g} s; "
                                   f"its log is {self.log(name)}")
            time.sleep(0.2)

    def raise_on_first_exit(self) -> None:
        """Wait until one of them exits on its own; AggjobsError naming it."""
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise self.exited(name)
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate those still running; kill any not gone within STOP_WITHIN_S."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_WITHIN_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until_serving(server: subprocess.Popen, base: str, port: int) -> None:
    """Poll `base`/healthz until it answers; AggjobsError if the server exits first or does
    not answer within READY_WITHIN_S."""
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        if server.poll() is not None:
            raise AggjobsError(f"the API server exited (code {server.returncode}): "
                               f"is port {port} free? (--port; its log is in "
                               "AGGJOBS_DATA_DIR/logs/serve.log)")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AggjobsError(f"the API server did not answer within {READY_WITHIN_S} s"
                                   ) from None
            time.sleep(0.2)
