"""The default install, as a newcomer has it: neither AGGJOBS_DATABASE_URL nor
AGGJOBS_BROKER_URL set, so the embedded PostgreSQL and the embedded broker under
AGGJOBS_DATA_DIR. Each test gets its own data directory, and its servers are stopped after."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aggjobs.operations.servers import stop_servers


@dataclass
class DefaultInstall:
    data_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """This environment less every AGGJOBS_* variable (tests/conftest.py sets a broker),
        with the data directory."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGJOBS_")}
        env.update(AGGJOBS_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1", COLUMNS="200")
        env.update(extra)
        return env

    def aggjobs(self, *args: str, timeout: float = 180, **extra: str
                ) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aggjobs", *args], env=self.env(**extra),
                              capture_output=True, text=True, timeout=timeout,
                              cwd=self.data_dir.parent)

    def celery(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Celery's own command on the aggjobs app, as the docs tell an operator to run it."""
        return subprocess.run([sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", *args],
                              env=self.env(), capture_output=True, text=True, timeout=timeout,
                              cwd=self.data_dir.parent)


def default_install() -> Iterator[DefaultInstall]:
    """A fresh data directory (outside pytest's 0700 tree: as root the embedded PostgreSQL
    runs as its own system user, who must reach it); its servers stopped, then removed."""
    home = Path(tempfile.mkdtemp(prefix="aggjobs-default-"))
    os.chmod(home, 0o755)
    install = DefaultInstall(home / "data")
    try:
        yield install
    finally:
        stop_servers(install.data_dir)
        shutil.rmtree(home, ignore_errors=True)
