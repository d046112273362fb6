"""The API's database sessions (docs/api.md, docs/scaling.md): one on the primary per
request, `aggjobs:api`; reads on a replica, `aggjobs:api-read`, when
AGGJOBS_READ_DATABASE_URL is set, else on the primary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

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
        return connect("api", settings=self.settings)

    def read(self) -> psycopg.Connection:
        """A session for reading only: on the replica when one is configured."""
        if self.replica is None:
            return self.primary()
        return connect("api-read", url=self.replica, settings=self.settings)

    def targets(self) -> list[tuple[str, Callable[[], psycopg.Connection]]]:
        """What `/healthz` checks: the database, and the read replica when configured."""
        return [("database", self.primary)] + ([("read replica", self.read)]
                                               if self.replica else [])
