"""The embedded servers under AGGJOBS_DATA_DIR: PostgreSQL (when AGGJOBS_DATABASE_URL is
unset) and the broker (when AGGJOBS_BROKER_URL is unset too). Both start on demand and keep
running after the command that started them; `aggjobs db status|start|stop` shows, starts
and stops them, and `make clean` stops them before deleting their data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..db.embedded import PGDATA, embedded_pid, embedded_url, stop_embedded
from ..db.embedded_broker import BrokerFiles, broker_pid, embedded_broker_url, stop_broker
from ..errors import ConfigError
from ..settings import Settings

DATABASE = "PostgreSQL"
BROKER = "broker (Valkey)"


@dataclass(frozen=True)
class Server:
    """One embedded server: whether it runs, and whether aggjobs uses it as configured."""

    name: str
    running: bool
    pid: int | None
    where: str
    used: bool
    note: str  # why it is not used, or empty

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def servers(settings: Settings) -> list[Server]:
    """The embedded PostgreSQL and broker under the data directory, running or not."""
    data_dir = settings.data_dir.expanduser().resolve()
    db_pid = embedded_pid(data_dir)
    broker = broker_pid(data_dir)
    db_note = "AGGJOBS_DATABASE_URL is set" if settings.database_url else ""
    broker_note = ("AGGJOBS_BROKER_URL is set" if settings.broker_url
                   else "AGGJOBS_DATABASE_URL is set: the broker is kombu's SQLAlchemy "
                   "transport on that database" if settings.database_url else "")
    return [
        Server(DATABASE, db_pid is not None, db_pid, str(data_dir / PGDATA),
               not db_note, db_note),
        Server(BROKER, broker is not None, broker, str(BrokerFiles.under(data_dir).socket),
               not broker_note, broker_note),
    ]


def start_servers(settings: Settings) -> list[Server]:
    """Start the embedded servers aggjobs uses as configured; ConfigError when it uses none
    (AGGJOBS_DATABASE_URL is set)."""
    wanted = [s for s in servers(settings) if s.used]
    if not wanted:
        raise ConfigError("AGGJOBS_DATABASE_URL is set: aggjobs uses that server and no "
                          "embedded one, so there is nothing to start")
    for server in wanted:
        if server.name == DATABASE:
            embedded_url(settings.data_dir)
        else:
            embedded_broker_url(settings.data_dir)
    return servers(settings)


def stop_servers(data_dir: Path) -> list[str]:
    """Stop every embedded server running under `data_dir`, used or not (one left from
    before a URL was set too): the broker first, then PostgreSQL. The names of those
    stopped."""
    stopped = [BROKER] if stop_broker(data_dir) else []
    if stop_embedded(data_dir):
        stopped.append(DATABASE)
    return stopped
