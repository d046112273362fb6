"""Bounds on what one request may start (docs/contract.md#limits; docs/security.md)."""

from __future__ import annotations

from datetime import datetime, timedelta

from .errors import SpanTooLong
from .settings import Settings


def check_backfill_span(lo: datetime, hi: datetime, settings: Settings, *,
                        override: str | None = None) -> None:
    """Raise SpanTooLong when [lo, hi) is longer than AGGJOBS_MAX_BACKFILL_DAYS (0: no cap).
    `override` names the way past the cap where there is one (the CLI's `--force`)."""
    cap = settings.max_backfill_days
    if not cap or hi - lo <= timedelta(days=cap):
        return
    span = (hi - lo) / timedelta(days=1)
    hint = f"split it into ranges of at most {cap:g} days"
    hint += f", raise the setting, or pass {override}" if override else " or raise the setting"
    raise SpanTooLong(f"the range spans {span:g} days, over the backfill cap of {cap:g} days "
                      f"(AGGJOBS_MAX_BACKFILL_DAYS): {hint}")


def span_days(lo: datetime, hi: datetime) -> float:
    return round((hi - lo) / timedelta(days=1), 4)
