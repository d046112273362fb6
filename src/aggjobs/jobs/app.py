"""The Celery app: the five jobs as plain synchronous tasks, and their beat schedule.

Two queues: the light jobs (hourly, views) go to AGGJOBS_QUEUE, the heavy ones (daily,
weekly, cleanup: `Job.heavy`) to AGGJOBS_HEAVY_QUEUE, which defaults to the same queue so
that one worker serves everything. Routing is by task name (`task_routes`), so a client's
`send_task`, beat's sends and a heavy job's retry all land in the job's queue; a worker
chooses what it consumes (`aggjobs worker --queues light|heavy`).

Delivery is at least once (`acks_late`, rejected back to the queue when the worker dies);
the runner makes a duplicate or redelivered task harmless: the job's advisory lock skips an
overlapping run, and a scheduled run's slot (the instant its schedule fired) skips a second
beat's copy. Start it with `aggjobs worker [--beat]` / `aggjobs beat`, or `celery -A
aggjobs.jobs.app worker`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import after_setup_logger, after_setup_task_logger, beat_init, celeryd_init
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from .. import logs
from ..catalog.jobs import check_job_settings, checked_settings
from ..db.connect import database_url
from ..db.embedded_broker import embedded_broker_url
from ..errors import ConfigError
from ..settings import Settings, get_settings
from .backfill import Queued, Requester, run_queued
from .registry import JOBS
from .schedule import beat_schedule, slot_of
from .tasks import HEAVY_SLOT_RETRY, add_jobs

__all__ = ["BACKFILL_TASK", "HEAVY_SLOT_RETRY", "app", "beat_schedule", "create_app",
           "send_backfill", "slot_of"]

log = logging.getLogger(__name__)

BACKFILL_TASK = "backfill"  # the backfills queued by the API and the dashboard
BROKER_APPLICATION_NAME = "aggjobs:broker"  # the database broker's sessions


def broker_url(settings: Settings) -> str:
    """The configured broker; else, on the embedded database, the embedded broker beside it
    (started if needed); else kombu's SQLAlchemy transport on the aggjobs database, which
    every host of the deployment reaches (docs/jobs.md#the-broker)."""
    if settings.broker_url:
        return settings.broker_url
    if settings.database_url:
        return "sqla+" + sqlalchemy_url(database_url(settings))
    return embedded_broker_url(settings.data_dir)


def sqlalchemy_url(libpq: str) -> str:
    """A libpq URL or key=value string as SQLAlchemy's URL (psycopg 3 driver); a Unix socket
    directory stays a `host` query parameter."""
    params = {k: str(v) for k, v in conninfo_to_dict(libpq).items()}
    host = params.pop("host", None)
    if host and host.startswith("/"):
        params["host"], host = host, None
    port = params.pop("port", None)
    return URL.create(
        "postgresql+psycopg", username=params.pop("user", None),
        password=params.pop("password", None), host=host, port=int(port) if port else None,
        database=params.pop("dbname", None), query=params,
    ).render_as_string(hide_password=False)


@after_setup_logger.connect
@after_setup_task_logger.connect
def structured_logs(logger: logging.Logger, **_: object) -> None:
    """Celery's handlers, with aggjobs' formatter: JSON unless on a terminal."""
    for handler in logger.handlers:
        handler.setFormatter(logs.formatter(getattr(handler, "stream", None)))


@celeryd_init.connect
@beat_init.connect
def declare_queue_once(**_: object) -> None:
    """kombu's SQLAlchemy transport (the default broker) creates its queue row on first use,
    racily: a worker and its embedded beat creating it at once leave the loser's session
    broken, and every later send of that beat fails. Create it before either starts, then
    close every broker connection this made: the worker forks its pool and its beat next,
    and a connection the children inherit must not exist (below)."""
    if not app.conf.broker_url.startswith("sqla+"):
        return
    with app.connection_for_write() as connection:
        # kombu's stubs type default_channel as StdChannel, which lacks the SQLAlchemy
        # channel's attributes
        channel: Any = connection.default_channel
        for queue in queues_of(app):
            channel.queue_declare(queue=queue)
        # queue_declare leaves a transaction open (its message count), its connection
        # checked out until the garbage collector finds the session
        channel.session.close()
    forget_broker_engines(close=True)


def forget_broker_engines(close: bool = False) -> None:
    """Drop the SQLAlchemy engines kombu's transport caches per process; `close` their
    pooled connections too, or (in a forked child) leave them to the parent, which owns
    them.

    Run in every forked child (the pool's processes, the embedded beat of `worker
    --beat`): a child that spoke on a socket inherited from the parent would take the
    parent's replies. Seen as the embedded beat's sends failing ("This result object does
    not return rows"; a transaction left open until idle_in_transaction_session_timeout
    ended the session), and as a worker that never became ready after its children had
    inherited a connection checked out in a transaction (declare_queue_once now closes it)."""
    from kombu.transport.sqlalchemy import Channel

    for engine, _session in Channel._engines.values():
        engine.dispose(close=close)
    Channel._engines.clear()


os.register_at_fork(after_in_child=forget_broker_engines)


def create_app(settings: Settings | None = None) -> Celery:
    settings = check_job_settings(settings or get_settings())
    broker = broker_url(settings)
    app = Celery("aggjobs", set_as_current=False)
    app.conf.update(
        broker_url=broker,
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        enable_utc=True,
        # the jobs have these per task (jobs/tasks.py); app-wide here for the backfill task
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_routes={BACKFILL_TASK: {"queue": settings.queue_of(True)}},  # + the jobs' below
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
        worker_hijack_root_logger=True,  # our runner's logs go through Celery's handlers
        # Events on: Flower (or `celery events`) shows tasks live without extra flags.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_transport_options=transport_options(broker, settings),
        # beat's heartbeat (docs/jobs.md, "Liveness"); the worker's is a consumer bootstep
        beat_scheduler="aggjobs.jobs.liveness:HeartbeatScheduler",
    )
    # the five tasks, each to its queue, and their beat entries: the very code a platform's
    # app gets them with (aggjobs.celery.register)
    add_jobs(app, settings, schedule=True, queue_of=lambda job: settings.queue_of(job.heavy))
    register_backfill(app, settings)
    return app


def queues_of(app: Celery) -> list[str]:
    """The queues this app sends jobs to: the default one and each route's."""
    routes = [route["queue"] for route in (app.conf.task_routes or {}).values()]
    return list(dict.fromkeys([app.conf.task_default_queue, *routes]))


def transport_options(broker: str, settings: Settings) -> dict[str, Any]:
    """Redis redelivers a task unacknowledged for `visibility_timeout`: longer than any job
    may run, so that only a dead worker's task comes back (a duplicate would be skipped
    anyway). The database broker's connections are named, as every aggjobs session is, so
    that pg_stat_activity tells them apart. Other transports take no such option
    (SQLAlchemy's passes its options to its engine and refuses unknown ones)."""
    if broker.startswith(("redis://", "rediss://", "redis+socket://", "socket://")):
        return {"visibility_timeout": longest_limit(settings) + 600}
    if broker.startswith("sqla+"):
        return {"connect_args": {"application_name": BROKER_APPLICATION_NAME}}
    return {}


def longest_limit(settings: Settings) -> int:
    return max(job.time_limit(settings) for job in JOBS.values())


def settings_or_exit() -> Settings:
    """This process's settings. Invalid ones end Celery's own command (`celery -A
    aggjobs.jobs.app worker`) as they end `aggjobs`: one line naming the variable, exit 2,
    instead of the traceback of a failed app import; elsewhere they raise ConfigError."""
    try:
        return checked_settings()
    except ConfigError as exc:
        if "celery" not in (Path(sys.argv[0]).name, Path(sys.argv[0]).parent.name):
            raise
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


def register_backfill(app: Celery, settings: Settings) -> None:
    """The task running the backfills the API queued (jobs/backfill.py): no time limit (a
    backfill is chunked, resumable and cancellable, and may take hours); a worker that
    dies redelivers it, and it resumes where its last chunk committed."""

    @app.task(name=BACKFILL_TASK, bind=True, shared=False)
    def backfill(self: Task[..., dict[str, str]], backfills: list[dict[str, Any]], lo: str,
                 hi: str, actor: str, source: str) -> dict[str, str]:
        return run_queued(settings, Queued(backfills, lo, hi, Requester(actor, source)))


CLIENTS: dict[tuple[str, str], Celery] = {}  # one sending app per broker and queue


def send_backfill(settings: Settings, queued: Queued, task_id: str) -> None:
    """Send the `backfill` task, under `task_id`, for rows the API queued."""
    key = (broker_url(settings), settings.queue_of(True))
    if key not in CLIENTS:
        CLIENTS[key] = create_app(settings)
    CLIENTS[key].send_task(BACKFILL_TASK, task_id=task_id, kwargs={
        "backfills": queued.backfills, "lo": queued.lo, "hi": queued.hi,
        "actor": queued.who.actor, "source": queued.who.source})


app = create_app(settings_or_exit())
