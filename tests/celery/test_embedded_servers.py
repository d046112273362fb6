"""`aggjobs db status|start|stop` and `make clean` on the embedded PostgreSQL and broker."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggjobs.db.embedded import embedded_pid
from aggjobs.db.embedded_broker import broker_pid
from aggjobs.operations.servers import stop_servers
from tests.celery.default_install import DefaultInstall, default_install

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def install() -> Iterator[DefaultInstall]:
    yield from default_install()


def alive(pid: int) -> bool:
    """Running (a zombie, whose parent has not reaped it yet, has stopped)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def status(install: DefaultInstall, **env: str) -> tuple[int, dict[str, dict]]:
    done = install.aggjobs("db", "status", "--json", **env)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, {s["name"]: s for s in json.loads(done.stdout)}


def test_db_start_status_and_stop(install: DefaultInstall) -> None:
    code, servers = status(install)
    assert code == 3 and not any(s["running"] for s in servers.values()), servers

    started = install.aggjobs("db", "start")
    assert started.returncode == 0, started.stderr
    code, servers = status(install)
    assert code == 0 and [(s["running"], s["used"]) for s in servers.values()] == [
        (True, True), (True, True)], servers
    pids = [s["pid"] for s in servers.values()]
    assert pids == [embedded_pid(install.data_dir), broker_pid(install.data_dir)]
    assert all(alive(pid) for pid in pids)
    table = install.aggjobs("db", "status")
    assert "PostgreSQL" in table.stdout and "broker (Valkey)" in table.stdout
    assert str(install.data_dir / "pgdata") in table.stdout

    stopped = install.aggjobs("db", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "PostgreSQL" in stopped.stdout and "broker" in stopped.stdout
    assert not any(alive(pid) for pid in pids)
    code, servers = status(install)
    assert code == 3 and not any(s["running"] for s in servers.values())
    again = install.aggjobs("db", "stop")
    assert again.returncode == 0 and "no embedded server runs" in again.stdout


def test_with_a_database_url_there_is_nothing_embedded_to_start(install: DefaultInstall,
                                                                db_url: str) -> None:
    started = install.aggjobs("db", "start", AGGJOBS_DATABASE_URL=db_url)
    assert started.returncode == 2
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "AGGJOBS_DATABASE_URL is set" in lines[0], started.stderr
    code, servers = status(install, AGGJOBS_DATABASE_URL=db_url)
    assert code == 0 and not any(s["used"] or s["running"] for s in servers.values())
    assert all("AGGJOBS_DATABASE_URL is set" in s["note"] for s in servers.values())
    assert not (install.data_dir / "pgdata").exists()  # nothing was started


def fake_venv(home: Path) -> Path:
    """A virtual environment's bin/aggjobs, running this checkout (`make clean` removes the
    environment: not the one the tests run in)."""
    bin_dir = home / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "aggjobs"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT / 'src'} exec {sys.executable} "
                      '-m aggjobs "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return home / "venv"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("with_venv", [True, False], ids=["aggjobs-db-stop", "pid-files"])
def test_make_clean_stops_the_servers_before_deleting_their_data(
        install: DefaultInstall, with_venv: bool) -> None:
    """With the virtual environment through `aggjobs db stop`; without it (a half-removed
    checkout), by the servers' pid files."""
    home = install.data_dir.parent
    shutil.copy(ROOT / "Makefile", home / "Makefile")
    venv = fake_venv(home) if with_venv else home / "no-venv"
    data = home / ".aggjobs"  # what `make clean` deletes
    started = install.aggjobs("db", "start", AGGJOBS_DATA_DIR=str(data))
    assert started.returncode == 0, started.stderr
    pids = [embedded_pid(data), broker_pid(data)]
    assert all(pids) and all(alive(pid) for pid in pids if pid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
    try:
        done = subprocess.run(["make", "clean", f"VENV={venv}"], cwd=home, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        stop_servers(data)  # if make failed to
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("stopped under" in done.stdout) is with_venv, done.stdout
    assert not data.exists() and not venv.exists()
    assert not any(alive(pid) for pid in pids if pid)


def test_a_stale_pid_file_naming_another_program_is_not_the_server(tmp_path: Path) -> None:
    """After a crash the pid in postmaster.pid may belong to another program by now: status
    must not call it the server, nor stop signal it."""
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n")
    assert embedded_pid(tmp_path) is None
    assert stop_servers(tmp_path) == [] and alive(os.getpid())
