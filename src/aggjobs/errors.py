"""One exception base; the CLI prints `str(error)` as a one-line reason and exits non-zero."""

from __future__ import annotations


class AggjobsError(Exception):
    """aggjobs failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(AggjobsError):
    """The configuration is invalid."""


class UnknownRollup(AggjobsError):
    """No rollup has that name."""


class InvalidRange(AggjobsError):
    """The time range is invalid."""


class SpanTooLong(InvalidRange):
    """The range is longer than a backfill may span (AGGJOBS_MAX_BACKFILL_DAYS)."""


class InvalidTimestamp(AggjobsError):
    """The timestamp cannot be parsed."""


class DatabaseUnavailable(AggjobsError):
    """The database cannot be reached."""


class LockBusy(AggjobsError):
    """Another process holds the lock this work needs."""


class PrivilegeMissing(AggjobsError):
    """The database role lacks a privilege the command needs (e.g. a reader's URL given to
    `aggjobs migrate`)."""


class MigrationRequired(AggjobsError):
    """The database schema is missing or out of date: run `aggjobs migrate`."""


class UnknownJob(AggjobsError):
    """No job has that name."""


class DeclarationError(AggjobsError):
    """A rollup declaration is invalid."""


class DefinitionsChanged(AggjobsError):
    """The declared rollups differ from those the tables were built with: run `aggjobs migrate`."""


class NotFound(AggjobsError):
    """What the request names does not exist (the API's 404)."""


class Conflict(AggjobsError):
    """What the request asks for contradicts the current state (the API's 409)."""


class UnknownRun(NotFound):
    """No run has that id."""


class NotRetryable(Conflict):
    """Only a failed or abandoned run is retried."""


class UnknownBackfill(NotFound):
    """No backfill has that id."""


class NotCancellable(Conflict):
    """Only a queued or running backfill is cancelled."""
