"""What is worth another try, and when: the driver's errors sorted into transient and
permanent (for the runner's retries and the engine's quarantine), and the retry policy, a
value whose schedule is a pure function (the runner's backoff, a heavy job's wait for a slot).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors

from ..errors import LockBusy
from ..settings import Settings

T = TypeVar("T")

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


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """`attempts` tries in all; before try n + 1 a wait of base_s * factor ** (n - 1), capped
    at max_s, scaled by a uniform factor within ±jitter (0.5: from half to one and a half)."""

    attempts: int
    base_s: float
    factor: float = 2.0
    max_s: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_s < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid retry policy: {self}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """A step's tries on transient errors: AGGJOBS_RETRY_ATTEMPTS, AGGJOBS_RETRY_BASE_S."""
        return cls(attempts=settings.retry_attempts, base_s=settings.retry_base_s, jitter=0.5)

    @property
    def retries(self) -> int:
        """The tries after the first (Celery's max_retries)."""
        return self.attempts - 1

    def delay(self, attempt: int, rand: float = 0.5) -> float | None:
        """Seconds to wait after failed try `attempt` (from 1) before the next; None when
        that was the last. `rand` in [0, 1) (random.random()) picks the jitter; 0.5: none."""
        if attempt >= self.attempts:
            return None
        wait = self.base_s * self.factor ** (attempt - 1)
        if self.max_s is not None:
            wait = min(wait, self.max_s)
        return wait * (1 - self.jitter + 2 * self.jitter * rand)


def retrying(policy: RetryPolicy, attempt: Callable[[int], T],
             on_retry: Callable[[int, Exception], object] = lambda n, exc: None, *,
             sleep: Callable[[float], object] = time.sleep,
             rand: Callable[[], float] = random.random) -> T:
    """attempt(1), attempt(2), ... until one returns or raises anything but a transient error.
    After a transient one: on_retry(n, exc) (it may raise to stop), then the policy's wait;
    once the policy gives up, that last transient error is raised."""
    n = 1
    while True:
        try:
            return attempt(n)
        except TRANSIENT as exc:
            wait = policy.delay(n, rand())
            if wait is None:
                raise
            on_retry(n, exc)
            sleep(wait)
        n += 1
