"""Liveness (docs/jobs.md, "Liveness"): real Celery workers and beats record heartbeats in
the database whatever the broker, `aggjobs status` shows them and exits 1 when no worker or
no scheduler has been alive for AGGJOBS_LIVENESS_SECONDS (at once when none was ever seen),
and the alert fires once and resolves once, announced by the processes still alive."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.celery.conftest import Worker, Workers, poll
from tests.integration.test_alerts import Receiver

pytestmark = pytest.mark.slow

AGGJOBS = Path(sys.executable).parent / "aggjobs"
LIVENESS_S = "4"  # heartbeats every second; a process missing three is gone


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def status(workers: Workers, liveness: str = LIVENESS_S) -> tuple[int, dict]:
    done = subprocess.run([str(AGGJOBS), "status", "--json"], capture_output=True, text=True,
                          env=workers.env(AGGJOBS_LIVENESS_SECONDS=liveness), timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def heartbeats(conn: psycopg.Connection) -> dict[tuple[str, str], dict]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    rows = cur.execute("SELECT * FROM aggjobs.heartbeats").fetchall()
    return {(r["kind"], r["name"]): r for r in rows}


def start_beat(workers: Workers, **env: str) -> Worker:
    """A standalone scheduler (Celery's `beat`), stopped at teardown with the workers."""
    n = len(workers.started) + 1
    log = workers.tmp_path / f"beat{n}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", "beat", "--loglevel",
             "INFO", "-s", str(workers.tmp_path / f"beat{n}-schedule")],
            env=workers.env(**env), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=workers.tmp_path)
    beat = Worker(f"beat{n}", proc, log, True)
    workers.started.append(beat)
    return beat


def test_a_database_no_worker_nor_scheduler_ever_reached_is_unhealthy_at_once(
        workers: Workers) -> None:
    code, state = status(workers, liveness="120")
    assert code == 1
    assert state["liveness"]["workers"] == [] and state["liveness"]["schedulers"] == []
    assert "no_worker" in state["incidents"] and "no_scheduler" in state["incidents"]
    assert any(p.startswith("no worker: no worker has ever sent a heartbeat")
               and "`aggjobs worker`" in p for p in state["problems"]), state["problems"]
    assert any(p.startswith("no scheduler: no scheduler has ever") and "`aggjobs beat`" in p
               for p in state["problems"]), state["problems"]
    # 0 turns the check off: jobs run by another scheduler (`aggjobs run` from cron)
    code, state = status(workers, liveness="0")
    assert code == 0 and state["healthy"], state["problems"]


def test_worker_and_embedded_beat_heartbeats_and_their_clean_stop(
        workers: Workers, conn: psycopg.Connection) -> None:
    worker = workers.start(beat=True, AGGJOBS_LIVENESS_SECONDS=LIVENESS_S)
    node = poll(lambda: [n for k, n in heartbeats(conn) if k == "worker"], 30,
                "the worker's heartbeat")[0]
    assert node.startswith(worker.name + "@")
    poll(lambda: [n for k, n in heartbeats(conn) if k == "scheduler"], 30,
         "the embedded scheduler's heartbeat")
    first = heartbeats(conn)
    time.sleep(2.5)  # heartbeats every second: seen_at moves, started_at does not
    later = heartbeats(conn)
    for key, row in later.items():
        assert row["seen_at"] > first[key]["seen_at"], key
        assert row["started_at"] == first[key]["started_at"] and row["stopped_at"] is None
    assert later[("worker", node)]["queues"] == [workers.env()["AGGJOBS_QUEUE"]]
    assert later[("worker", node)]["pid"] == worker.pid

    code, state = status(workers)
    assert code == 0, state["problems"]
    live = state["liveness"]
    assert [(r["name"], r["state"]) for r in live["workers"]] == [(node, "up")]
    [scheduler] = live["schedulers"]
    assert scheduler["state"] == "up" and scheduler["name"].startswith("beat.")
    assert all(r["age_seconds"] < 3 for r in live["workers"] + live["schedulers"])

    # A warm shutdown (SIGTERM) records the stop of the worker and of its embedded beat.
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(timeout=30)
    stopped = poll(lambda: all(r["stopped_at"] for r in heartbeats(conn).values())
                   and heartbeats(conn), 15, "both stops to be recorded")
    assert len(stopped) == 2
    code, state = status(workers)
    assert code == 0, state["problems"]  # stopped, but within AGGJOBS_LIVENESS_SECONDS
    assert {r["state"] for r in state["liveness"]["workers"] + state["liveness"][
        "schedulers"]} == {"stopped"}
    time.sleep(float(LIVENESS_S) + 0.5)
    code, state = status(workers)
    assert code == 1 and set(state["incidents"]) == {"no_worker", "no_scheduler"}
    [problem] = [p for p in state["problems"] if p.startswith("no worker")]
    assert f"the last, {node}" in problem and "stopped at" in problem, problem
    text = subprocess.run([str(AGGJOBS), "status"], capture_output=True, text=True,
                          env=workers.env(AGGJOBS_LIVENESS_SECONDS=LIVENESS_S), timeout=60,
                          ).stdout
    assert "workers and schedulers (heartbeats)" in text and node in text
    assert "unhealthy: no worker: none alive for" in text, text


def test_liveness_alerts_fire_once_and_resolve_once_from_the_processes_alive(
        workers: Workers, conn: psycopg.Connection, receiver: Receiver) -> None:
    """No scheduler: announced by the worker; no worker: announced by the scheduler."""
    env = {"AGGJOBS_LIVENESS_SECONDS": LIVENESS_S, "AGGJOBS_ALERT_WEBHOOK_URL": receiver.url}
    worker = workers.start(**env)
    poll(lambda: receiver.events(), 30, "the worker to announce that no scheduler was seen")
    beat = start_beat(workers, **env)
    poll(lambda: len(receiver.events()) == 2, 30, "the incident to be resolved")
    assert receiver.events() == [("fired", "no_scheduler"), ("resolved", "no_scheduler")]
    assert "ever" in receiver.received[0]["message"]
    assert "`aggjobs beat`" in receiver.received[0]["todo"]

    worker.stop()  # SIGKILLed with its group: no stop recorded, its heartbeats just end
    poll(lambda: len(receiver.events()) == 3, 30, "the scheduler to announce no worker")
    fired = receiver.received[2]
    assert (fired["event"], fired["incident"]) == ("fired", "no_worker")
    assert "last heartbeat at" in fired["message"] and "then silent" in fired["message"]
    assert "`aggjobs worker`" in fired["todo"]
    time.sleep(3)  # heartbeats go on, every second: the incident is not announced again
    assert len(receiver.events()) == 3

    workers.start(**env)
    poll(lambda: len(receiver.events()) == 4, 30, "the incident to be resolved")
    time.sleep(3)
    assert receiver.events()[2:] == [("fired", "no_worker"), ("resolved", "no_worker")]
    rows = conn.execute("SELECT key, resolved_at IS NOT NULL FROM aggjobs.alerts"
                        " ORDER BY id").fetchall()
    assert rows == [("no_scheduler", True), ("no_worker", True)]
    assert beat.alive(), beat.text()[-3000:]


def test_a_worker_survives_its_heartbeats_failing_and_resumes_them(
        workers: Workers, conn: psycopg.Connection) -> None:
    worker = workers.start(AGGJOBS_LIVENESS_SECONDS=LIVENESS_S)
    poll(lambda: heartbeats(conn), 30, "the worker's heartbeat")
    # The table gone: every heartbeat fails (as with the database down), logged once.
    conn.execute("ALTER TABLE aggjobs.heartbeats RENAME TO heartbeats_away")
    try:
        poll(lambda: "heartbeat of worker" in worker.text(), 30, "the failure to be logged")
        time.sleep(3)
        assert worker.alive()
        assert worker.text().count("heartbeat of worker") == 1, worker.text()[-3000:]
        before = conn.execute("SELECT seen_at FROM aggjobs.heartbeats_away").fetchone()[0]
    finally:
        conn.execute("ALTER TABLE aggjobs.heartbeats_away RENAME TO heartbeats")
    poll(lambda: "the database answers again" in worker.text(), 30, "the heartbeats to resume")
    poll(lambda: conn.execute("SELECT seen_at FROM aggjobs.heartbeats").fetchone()[0] > before,
         10, "a new heartbeat")
    assert worker.alive()


def test_heartbeats_over_the_database_broker(db_url: str, conn: psycopg.Connection,
                                             tmp_path: Path) -> None:
    """The default broker (kombu's SQLAlchemy transport, no event loop: the worker's timer
    is a thread of its own) has no broadcast, yet its worker and beat are seen alive."""
    pool = Workers(db_url, "", tmp_path)  # an empty AGGJOBS_BROKER_URL: the default
    try:
        pool.start(beat=True, AGGJOBS_LIVENESS_SECONDS=LIVENESS_S)
        first = poll(lambda: len(heartbeats(conn)) == 2 and heartbeats(conn), 60,
                     "the worker's and the scheduler's heartbeats")
        time.sleep(2.5)
        later = heartbeats(conn)
        assert all(later[k]["seen_at"] > first[k]["seen_at"] for k in first), later
        code, state = status(pool)
        assert code == 0, state["problems"]
    finally:
        pool.stop_all()
