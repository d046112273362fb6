"""The API's database sessions (docs/api.md, docs/scaling.md): one on the primary per
request, `aggjobs:api`; reads on a replica, `aggjobs:api-read`, when
AGGJOBS_READ_DATABASE_URL is set, else on the primary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.types.numeric import FloatLoader

from ..db.connect import connect, read_database_url
from ..settings import Settings


@dataclass(frozen=True)
class Databases:
    """Opens the API's sessions; `replica` is the read replica's URL, if any."""

    settings: Settings
    replica: str | None

    @classmethod
    def of(cls, settings: Settings) -> Databases:
        replica = read_database_url(settings) if settings.read_database_url else None
        return cls(settings, replica)

    def primary(self) -> psycopg.Connection:
        return numbers_as_floats(connect("api", settings=self.settings))

    def read(self) -> psycopg.Connection:
        """A session for reading only: on the replica when one is configured."""
        if self.replica is None:
            return self.primary()
        return numbers_as_floats(connect("api-read", url=self.replica, settings=self.settings))

    def targets(self) -> list[tuple[str, Callable[[], psycopg.Connection]]]:
        """What `/healthz` checks: the database, and the read replica when configured."""
        return [("database", self.primary)] + ([("read replica", self.read)]
                                               if self.replica else [])


def numbers_as_floats(conn: psycopg.Connection) -> psycopg.Connection:
    """`numeric` read as float on the API's sessions: FastAPI writes a Decimal as a JSON
    string ("12.5000"), and a JSON number is a float to every client anyway. (The jobs,
    which compute with exact numerics, have their own sessions.)"""
    conn.adapters.register_loader("numeric", FloatLoader)
    return conn
