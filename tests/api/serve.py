"""`aggjobs serve` as a real process on a free port, for the tests that talk HTTP to it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

AGGJOBS = str(Path(sys.executable).with_name("aggjobs"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    base: str
    proc: subprocess.Popen
    health: httpx.Response | None = None  # the first answer of /healthz
    output: str = ""  # everything the server printed, once it stopped


@contextmanager
def serving(env: dict[str, str], *, start_s: float = 30) -> Iterator[Served]:
    """Started, and answering /healthz, inside the block; stopped with SIGTERM after it (as
    an operator stops it), its output then in `output`."""
    port = free_port()
    proc = subprocess.Popen([AGGJOBS, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = Served(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + start_s
        while served.health is None:
            try:
                served.health = httpx.get(f"{served.base}/healthz", timeout=2)
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "aggjobs serve did not start"
                time.sleep(0.2)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        served.output = proc.stdout.read()
        proc.stdout.close()
