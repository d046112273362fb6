"""The health score: five parts, each a linear ramp between a "fine" and a "bad" threshold.

    success rate       40   successful / finished runs: 98% or more full, 70% or less zero
    latency            20   day p95 / trailing 7-day p95: 1.1x or less full, 2x or more zero
    activity           15   day runs / trailing daily average: 0.5x or more full, 0.1x zero
    failure bursts     15   worst hour's failure rate: 20% or less full, 80% or more zero
    credit burn        10   day credits / trailing daily average: 1.5x or less full, 3x zero

The success rate weighs enough that a day where every run failed is critical whatever the
other parts say (at most 60 points remain). A part without a baseline (the first day of a
workspace, no credits before, no hour with enough runs) is left out and the parts that
remain are scaled up to 100, so that `components` always adds up to `score`. Fewer than
MIN_FINISHED finished runs on the day: no score, status 'insufficient_data'. docs/health.md
has the reasoning and worked examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

MIN_FINISHED = 10  # finished runs on the day below which a score would be noise
BURST_MIN_RUNS = 5  # an hour counts as a burst candidate with at least this many finished


@dataclass(frozen=True)
class Part:
    name: str
    weight: int
    fine: float  # at or past this: full points
    bad: float  # at or past this: zero points
    measures: str


PARTS = (
    Part("success_rate", 40, 0.98, 0.70, "successful / finished runs on the day"),
    Part("latency", 20, 1.1, 2.0, "day p95 runtime / trailing 7-day p95"),
    # Wide: a weekend day runs at 40% of a weekday on a typical platform, and is no alarm.
    Part("activity", 15, 0.5, 0.1, "day runs / trailing average runs per day"),
    Part("failure_bursts", 15, 0.2, 0.8, "failure rate of the day's worst hour"),
    Part("credit_burn", 10, 1.5, 3.0, "day credits used / trailing average per day"),
)


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """One workspace's day, from the rollup tables (see inputs.sql)."""

    workspace_id: int
    prior_days: int  # days of history in the trailing window (0 on the first day)
    ok: int
    failed: int
    runs: int
    p95: float | None
    prior_p95: float | None
    prior_runs: int
    credits: Decimal
    prior_credits: Decimal
    worst_hour: datetime | None
    worst_hour_rate: float | None
    worst_hour_runs: int | None


@dataclass(frozen=True)
class Health:
    workspace_id: int
    score: Decimal | None
    status: str
    components: dict


def ramp(value: float, fine: float, bad: float) -> float:
    """1 at `fine` or better, 0 at `bad` or worse, linear between (either direction)."""
    share = (value - bad) / (fine - bad)
    return min(1.0, max(0.0, share))


def measures(x: Inputs) -> dict[str, float | None]:
    """Each part's measured value, or None where it has no baseline."""
    finished = x.ok + x.failed
    avg_runs = x.prior_runs / x.prior_days if x.prior_days else None
    avg_credits = float(x.prior_credits) / x.prior_days if x.prior_days else None
    return {
        "success_rate": x.ok / finished if finished else None,
        "latency": x.p95 / x.prior_p95 if x.p95 is not None and x.prior_p95 else None,
        "activity": x.runs / avg_runs if avg_runs else None,
        "failure_bursts": x.worst_hour_rate,
        "credit_burn": float(x.credits) / avg_credits if avg_credits else None,
    }


def score(x: Inputs) -> Health:
    finished = x.ok + x.failed
    values = measures(x)
    facts = {"finished_runs": finished, "runs": x.runs, "prior_days": x.prior_days}
    if finished < MIN_FINISHED:
        return Health(x.workspace_id, None, "insufficient_data", {
            **facts,
            "reason": f"{finished} finished runs on the day; a score needs {MIN_FINISHED}",
        })
    used = [p for p in PARTS if values[p.name] is not None]
    scale = 100 / sum(p.weight for p in used)
    components: dict = {}
    for part in PARTS:
        value = values[part.name]
        entry: dict = {"weight": part.weight, "measures": part.measures,
                       "value": None if value is None else round(value, 4)}
        if value is None:
            entry.update(points=None, note="no baseline: left out, the others scaled up")
        else:
            entry["points"] = float(
                Decimal(part.weight * scale * ramp(value, part.fine, part.bad))
                .quantize(Decimal("0.01"), ROUND_HALF_EVEN))
        components[part.name] = entry
    if x.worst_hour is not None:
        components["failure_bursts"]["hour"] = x.worst_hour.isoformat()
    total = sum((Decimal(str(c["points"])) for c in components.values()
                 if c.get("points") is not None), Decimal(0))
    components["facts"] = facts
    return Health(x.workspace_id, total, status_of(total), components)


def status_of(total: Decimal) -> str:
    if total >= 80:
        return "healthy"
    if total >= 50:
        return "at_risk"
    return "critical"
