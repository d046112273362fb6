"""What is retried and when (aggjobs.db.retry), as tables of cases: no database needed."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from aggjobs.db.retry import (
    PERMANENT,
    TRANSIENT,
    RetryPolicy,
    is_data_exception,
    retrying,
)
from aggjobs.errors import DatabaseUnavailable, LockBusy
from aggjobs.settings import Settings


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


@pytest.mark.parametrize(
    ("policy", "attempt", "rand", "delay"),
    [
        (RetryPolicy(attempts=4, base_s=1.0), 1, 0.5, 1.0),
        (RetryPolicy(attempts=4, base_s=1.0), 2, 0.5, 2.0),
        (RetryPolicy(attempts=4, base_s=1.0), 3, 0.9, 4.0),  # no jitter: rand ignored
        (RetryPolicy(attempts=4, base_s=1.0), 4, 0.5, None),  # the last try: give up
        (RetryPolicy(attempts=4, base_s=1.0), 9, 0.5, None),
        (RetryPolicy(attempts=1, base_s=1.0), 1, 0.5, None),  # one try, no retry
        (RetryPolicy(attempts=4, base_s=1.0, jitter=0.5), 1, 0.0, 0.5),
        (RetryPolicy(attempts=4, base_s=1.0, jitter=0.5), 1, 0.5, 1.0),
        (RetryPolicy(attempts=4, base_s=1.0, jitter=0.5), 3, 0.75, 5.0),
        (RetryPolicy(attempts=9, base_s=1.0, max_s=5.0), 4, 0.5, 5.0),  # 8 capped
        (RetryPolicy(attempts=9, base_s=1.0, max_s=5.0, jitter=0.5), 8, 0.0, 2.5),
        (RetryPolicy(attempts=3, base_s=300, factor=1), 2, 0.5, 300),
        (RetryPolicy(attempts=3, base_s=0.0, jitter=0.5), 1, 0.9, 0.0),
    ],
)
def test_delay(policy: RetryPolicy, attempt: int, rand: float, delay: float | None) -> None:
    assert policy.delay(attempt, rand) == delay


def test_a_steps_policy_comes_from_the_settings() -> None:
    """AGGJOBS_RETRY_ATTEMPTS tries in all, AGGJOBS_RETRY_BASE_S doubling, jittered ±50%
    (the heavy jobs' wait for a slot: tests/celery/test_retry.py)."""
    step = RetryPolicy.from_settings(Settings(retry_attempts=3, retry_base_s=0.25))
    assert [step.delay(n, 0.0) for n in (1, 2, 3)] == [0.125, 0.25, None]
    assert [step.delay(n, 0.999) for n in (1, 2)] == pytest.approx([0.37475, 0.7495])
    assert step.retries == 2


@pytest.mark.parametrize("fields", [
    {"attempts": 0, "base_s": 1.0}, {"attempts": 2, "base_s": -1.0},
    {"attempts": 2, "base_s": 1.0, "factor": 0.5}, {"attempts": 2, "base_s": 1.0, "jitter": 1.5},
])
def test_invalid_policies(fields: dict) -> None:
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(**fields)


class Tries:
    """attempt(n) failing with `errors` in turn, then returning n; what was slept."""

    def __init__(self, *errors: Exception):
        self.errors, self.slept, self.retried = list(errors), [], []

    def attempt(self, n: int) -> int:
        if self.errors:
            raise self.errors.pop(0)
        return n

    def run(self, policy: RetryPolicy) -> int:
        return retrying(policy, self.attempt, lambda n, exc: self.retried.append(n),
                        sleep=self.slept.append, rand=lambda: 0.5)


def test_transient_errors_are_retried_with_the_policys_waits() -> None:
    tries = Tries(pg_errors.SerializationFailure(), psycopg.OperationalError())
    assert tries.run(RetryPolicy(attempts=3, base_s=1.0)) == 3
    assert (tries.retried, tries.slept) == ([1, 2], [1.0, 2.0])


def test_the_last_transient_error_is_raised_when_the_policy_gives_up() -> None:
    last = pg_errors.DeadlockDetected()
    tries = Tries(pg_errors.SerializationFailure(), last)
    with pytest.raises(pg_errors.DeadlockDetected) as raised:
        tries.run(RetryPolicy(attempts=2, base_s=1.0))
    assert raised.value is last and tries.slept == [1.0]


def test_other_errors_are_not_retried() -> None:
    tries = Tries(pg_errors.NumericValueOutOfRange())
    with pytest.raises(pg_errors.NumericValueOutOfRange):
        tries.run(RetryPolicy(attempts=5, base_s=1.0))
    assert tries.slept == []
