"""What is worth another try: the driver's errors sorted into transient and permanent (for
the runner's retries and the engine's quarantine)."""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors

from ..errors import LockBusy

# Worth another try: the server was busy or went away, not the work being wrong.
TRANSIENT = (
    psycopg.OperationalError,  # connection lost, server shutting down, ...
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,  # lock_timeout
    pg_errors.QueryCanceled,  # statement_timeout
    LockBusy,  # a rollup written by a backfill elsewhere
)

# Not going away by itself: bad data, a violated constraint. The engine retries the work
# bucket by bucket, then quarantines the failing bucket (aggjobs.engine.refresh).
PERMANENT = (psycopg.DataError, psycopg.IntegrityError)


def is_data_exception(exc: BaseException) -> bool:
    """SQLSTATE class 22: the rows themselves cannot be computed; retrying cannot help."""
    return (getattr(exc, "sqlstate", None) or "").startswith("22")
