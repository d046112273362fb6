"""Alerts: each problem of `aggjobs status` is an incident, announced once when it starts
and once when it clears, as a structured log event and, if AGGJOBS_ALERT_WEBHOOK_URL is
set, a JSON POST (retried). Evaluated after every job run, so at least every 15 minutes
while a worker runs; the liveness incidents (no worker, no scheduler) also at every heartbeat
of a worker or a scheduler, so that a scheduler announces the last worker's end and a worker
the scheduler's. With none of them alive, `aggjobs status`, /metrics and the Prometheus
rules (contrib/prometheus/alerts.yml) say so."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import psycopg

from ..settings import Settings
from ..sql import query
from . import LIVENESS_KEYS, Problem, current_liveness_problems, current_problems

log = logging.getLogger("aggjobs.alerts")

WEBHOOK_ATTEMPTS = 3


def evaluate(conn: psycopg.Connection, settings: Settings, now: datetime | None = None,
             *, liveness_only: bool = False) -> list[dict]:
    """Open incidents for new problems, resolve those that cleared; returns the events.
    `liveness_only`: the liveness incidents alone (no worker, no scheduler), which every
    worker's and scheduler's heartbeat checks, so that they are announced while no job runs."""
    now = now or datetime.now(UTC)
    problems = (current_liveness_problems(conn, settings) if liveness_only
                else current_problems(conn, settings, now))
    found = {p.key: p for p in problems}
    events = []
    with conn.transaction():
        # Two workers evaluating at once: one after the other, each change announced once.
        conn.execute(query("lock_alerts"))
        open_rows: dict[str, str] = {
            key: message for key, message in conn.execute(query("open_alerts")).fetchall()
            if not liveness_only or key in LIVENESS_KEYS}
        for key, problem in found.items():
            if key not in open_rows:
                conn.execute(query("open_alert"), {"key": key, "message": str(problem)})
                events.append(event("fired", problem, now))
        for key, message in open_rows.items():
            if key not in found:
                conn.execute(query("resolve_alert"), {"key": key})
                events.append({"event": "resolved", "incident": key, "message": message,
                               "at": now.isoformat()})
    for ev in events:
        announce(ev, settings)
    return events


def event(kind: str, problem: Problem, now: datetime) -> dict:
    return {"event": kind, "incident": problem.key, "subject": problem.what,
            "message": str(problem), "todo": problem.todo, "at": now.isoformat()}


def announce(ev: dict, settings: Settings) -> None:
    level = logging.ERROR if ev["event"] == "fired" else logging.INFO
    log.log(level, "alert %s: %s", ev["event"], ev["message"],
            extra={"status": ev["event"], "error": ev["message"]})
    if settings.alert_webhook_url:
        post(settings.alert_webhook_url, ev)


def post(url: str, body: dict) -> bool:
    """POST `body` as JSON; retried with backoff; a webhook down never fails a job."""
    data = json.dumps({"source": "aggjobs", **body}).encode()
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status < 300:
                    return True
        except urllib.error.HTTPError as exc:  # an answer, but not a success
            exc.close()
            log.warning("alert webhook attempt %d: HTTP %d", attempt, exc.code)
        except (urllib.error.URLError, OSError) as exc:
            log.warning("alert webhook attempt %d failed: %s", attempt, exc)
        time.sleep(0.5 * 2 ** (attempt - 1))
    log.error("alert webhook gave up after %d attempts: %s", WEBHOOK_ATTEMPTS, body["message"])
    return False
