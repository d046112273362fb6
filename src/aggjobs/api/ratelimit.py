"""Rate limits of the triggering routes, per token (docs/api.md).

One budget per token name across every triggering route (runs, backfills, cleanup, token
changes), as `AGGJOBS_API_RATE_LIMIT` says ("10/minute", "10/minute;100/hour", "off").
Counted by the `limits` library with a moving window in this process's memory: each API
process (each `aggjobs serve`) counts on its own.
"""

from __future__ import annotations

import math
import threading
import time

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

NAMESPACE = "aggjobs.trigger"


class TriggerLimiter:
    def __init__(self, spec: str):
        self.spec = spec
        self.items = [] if spec == "off" else parse_many(spec)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.lock = threading.Lock()  # test-then-hit of several limits as one step

    def acquire(self, key: str) -> int | None:
        """Count one request of `key` and return None, or, when a limit is reached, count
        nothing and return the seconds until it lets one through (at least 1)."""
        with self.lock:
            for item in self.items:
                if not self.limiter.test(item, NAMESPACE, key):
                    reset_at, _ = self.limiter.get_window_stats(item, NAMESPACE, key)
                    return max(1, math.ceil(reset_at - time.time()))
            for item in self.items:
                self.limiter.hit(item, NAMESPACE, key)
        return None
