"""`aggjobs up` on the default install, as a newcomer runs it: the dashboard's address is the
last thing printed, once the worker and its scheduler run; Celery's tools see that worker;
Ctrl-C stops it all, prints the address again with how to start again and what keeps
running, and revokes the token (which expires after 12 hours anyway)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from aggjobs.db import embedded_native
from aggjobs.db.embedded import embedded_pid, embedded_url
from aggjobs.sql import NATIVE_VERSION
from tests.api.serve import free_port
from tests.celery.conftest import poll
from tests.celery.default_install import DefaultInstall, default_install

pytestmark = pytest.mark.slow
RULE = "-" * 78


@pytest.fixture
def install() -> Iterator[DefaultInstall]:
    yield from default_install()


def banner(text: str) -> list[str] | None:
    """The block set apart around the dashboard's address, once printed whole."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("dashboard: ") and RULE in lines[i + 1:]:
            start = max(j for j in range(i) if lines[j] == RULE)
            return lines[start:i + 1 + lines[i + 1:].index(RULE) + 1]
    return None


def test_up_prints_the_address_last_and_again_on_ctrl_c(install: DefaultInstall) -> None:
    port = free_port()
    out, err = install.data_dir.parent / "up.out", install.data_dir.parent / "up.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "aggjobs", "up", "--demo-days", "1", "--port", str(port)],
            env=install.env(), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=install.data_dir.parent)
    try:
        block = poll(lambda: up.poll() is None and banner(out.read_text()), 240,
                     "the dashboard's address", every=0.5)
        assert block, err.read_text()
        time.sleep(3)  # whatever would be printed after it
        check_running(install, out.read_text(), block, port)
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        assert up.wait(timeout=60) == 0, err.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    check_stopped(install, out.read_text(), block, port)
    assert "Traceback" not in err.read_text(), err.read_text()


def check_running(install: DefaultInstall, printed: str, block: list[str], port: int) -> None:
    """The block is the last thing printed, once the worker and its scheduler run."""
    assert printed.rstrip().splitlines()[-len(block):] == block, printed
    assert printed.rstrip("\n").endswith(f"\n{RULE}")
    address = next(line for line in block if line.startswith("dashboard: ")).split()[1]
    assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=agj_[\w-]+", address)
    assert f"http://127.0.0.1:{port}/\n" not in printed  # the address without its token
    assert "celery@" not in printed and "-------------- " not in printed  # no Celery banner
    check_native_line(install, printed)
    worker_log = (install.data_dir / "logs" / "worker.log").read_text()
    assert " ready." in worker_log and "beat: Starting..." in worker_log
    with urllib.request.urlopen(address, timeout=30) as got:
        assert got.status == 200 and '<span id="verdict">' in got.read().decode()
    ping = install.celery("inspect", "ping", "--timeout", "5")  # up's worker, by Celery's tool
    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    with psycopg.connect(embedded_url(install.data_dir)) as conn:
        expires, revoked = conn.execute(
            "SELECT expires_at, revoked_at FROM aggjobs.api_tokens").fetchone()
    assert revoked is None
    assert abs(expires - datetime.now(UTC) - timedelta(hours=12)) < timedelta(minutes=5)


def check_native_line(install: DefaultInstall, printed: str) -> None:
    """One line says which path the rollups run: the C functions, built for the embedded
    server where a compiler is, and installed under the data directory; else why not."""
    said = [line for line in printed.splitlines() if line.startswith("rollups: ")]
    assert len(said) == 1, printed
    if isinstance(embedded_native.toolchain(), embedded_native.Toolchain):
        where = install.data_dir.resolve() / "native"
        assert said[0].startswith("rollups: C functions (aggjobs_native built now") and \
            said[0].endswith(f"in {where})"), said
        with psycopg.connect(embedded_url(install.data_dir)) as conn:
            assert conn.execute("SELECT extversion FROM pg_extension"
                                " WHERE extname = 'aggjobs_native'").fetchone() == (NATIVE_VERSION,)
    else:
        assert said[0].startswith("rollups: portable SQL, same results but slower"), said


def check_stopped(install: DefaultInstall, printed: str, block: list[str], port: int) -> None:
    """The farewell: the address again, how to start again, what keeps running; the token
    revoked; the API down; the embedded database still up."""
    address = next(line for line in block if line.startswith("dashboard: ")).split()[1]
    farewell = printed[printed.rindex("aggjobs stopped"):]
    assert f"dashboard was: {address}" in farewell and "is revoked" in farewell, farewell
    assert "start again:   aggjobs up" in farewell
    assert "still running: the embedded PostgreSQL and broker" in farewell
    assert "stop: aggjobs db stop" in farewell
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert embedded_pid(install.data_dir) is not None  # the database keeps running
    with psycopg.connect(embedded_url(install.data_dir)) as conn:
        revoked = conn.execute("SELECT revoked_at FROM aggjobs.api_tokens").fetchone()[0]
        actor = conn.execute("SELECT actor FROM aggjobs.audit_log WHERE action = %s "
                             "ORDER BY id DESC LIMIT 1", ("token.revoke",)).fetchone()
    assert revoked is not None and actor == ("aggjobs up",)
