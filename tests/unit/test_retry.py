"""What is retried (aggjobs.db.retry), as tables of cases: no database needed."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from aggjobs.db.retry import PERMANENT, TRANSIENT, is_data_exception
from aggjobs.errors import DatabaseUnavailable, LockBusy


# transient: a step is tried again; permanent: the engine retries bucket by bucket, then
# quarantines (at once for a data exception, SQLSTATE class 22); neither: the step fails.
@pytest.mark.parametrize(
    ("exc", "transient", "permanent", "data"),
    [
        (psycopg.OperationalError("server closed the connection"), True, False, False),
        (pg_errors.AdminShutdown(), True, False, False),
        (pg_errors.SerializationFailure(), True, False, False),
        (pg_errors.DeadlockDetected(), True, False, False),
        (pg_errors.LockNotAvailable(), True, False, False),
        (pg_errors.QueryCanceled(), True, False, False),
        (LockBusy("a backfill holds the rollup"), True, False, False),
        (pg_errors.NumericValueOutOfRange(), False, True, True),
        (pg_errors.InvalidTextRepresentation(), False, True, True),
        (pg_errors.DivisionByZero(), False, True, True),
        (psycopg.DataError(), False, True, False),  # no SQLSTATE: not known to be class 22
        (pg_errors.UniqueViolation(), False, True, False),
        (pg_errors.NotNullViolation(), False, True, False),
        (pg_errors.UndefinedTable(), False, False, False),
        (pg_errors.InsufficientPrivilege(), False, False, False),
        (DatabaseUnavailable("cannot connect"), False, False, False),
        (ValueError("a bug"), False, False, False),
    ],
)
def test_classification(exc: Exception, transient: bool, permanent: bool, data: bool) -> None:
    assert isinstance(exc, TRANSIENT) is transient
    assert isinstance(exc, PERMANENT) is permanent
    assert is_data_exception(exc) is data
