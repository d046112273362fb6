"""The pure planners, as tables of cases: the order a job's steps run in
(aggjobs.jobs.model.batches), how far a grain may be refreshed
(aggjobs.engine.refresh.complete_limit) and the chunks a backfill recomputes
(aggjobs.engine.backfill.plan). Everything is UTC; weeks start on Monday."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest

from aggjobs.catalog import Grain, get_rollup
from aggjobs.engine.backfill import Plan, plan
from aggjobs.engine.refresh import complete_limit
from aggjobs.jobs.model import Step, StepResult, batches
from aggjobs.settings import Settings

H, D, W = Grain.HOUR, Grain.DAY, Grain.WEEK
METRICS = get_rollup("execution_metrics")  # hour, day, week
AGENTS = get_rollup("agent_executions")  # hour, day
IST = timezone(timedelta(hours=5, minutes=30))


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def step(name: str) -> Step:
    return Step(name.rstrip("*"), lambda ctx: StepResult(), concurrent=name.endswith("*"))


@pytest.mark.parametrize(
    ("steps", "order"),
    [
        ([], []),
        (["a"], [["a"]]),
        (["a", "b"], [["a"], ["b"]]),
        (["a*", "b*", "c*"], [["a", "b", "c"]]),
        # the hourly job: four rollups side by side, then the caches, then the views together
        (["r1*", "r2*", "r3*", "r4*", "caches", "v1*", "v2*"],
         [["r1", "r2", "r3", "r4"], ["caches"], ["v1", "v2"]]),
        # the daily job: rollups together, then health, then reports, one after the other
        (["r1*", "r2*", "health", "reports"], [["r1", "r2"], ["health"], ["reports"]]),
        (["a", "b*", "c"], [["a"], ["b"], ["c"]]),
        (["a*", "b", "c*", "d*"], [["a"], ["b"], ["c", "d"]]),
    ],
)
def test_batches(steps: list[str], order: list[list[str]]) -> None:
    assert [[s.name for s in batch] for batch in batches([step(n) for n in steps])] == order


@pytest.mark.parametrize(
    ("rollup", "grain", "as_of", "marks", "limit", "why"),
    [
        # the finest grain: complete hours up to the current one, whatever the marks
        (METRICS, H, at(2026, 11, 30, 4, 37), {}, at(2026, 11, 30, 4), None),
        (METRICS, H, datetime(2026, 11, 30, 10, 7, tzinfo=IST), {}, at(2026, 11, 30, 4), None),
        # a coarser grain waits for its finer one
        (METRICS, D, at(2026, 11, 30, 4, 37), {H: None}, None, "no hour is materialized yet"),
        (METRICS, D, at(2026, 11, 30, 4, 37), {H: at(2026, 11, 30, 4)}, at(2026, 11, 30), None),
        (METRICS, D, at(2026, 11, 30, 4, 37), {H: at(2026, 11, 29, 23)}, at(2026, 11, 29),
         "waiting for hours up to 2026-11-30T00:00:00+00:00"),
        (METRICS, D, at(2026, 12, 1, 0, 5), {H: at(2026, 12, 1)}, at(2026, 12, 1), None),
        # Monday weeks; a Sunday's week is the one that began the Monday before
        (METRICS, W, at(2026, 11, 29, 23, 59), {D: at(2026, 11, 29)}, at(2026, 11, 23), None),
        (METRICS, W, at(2026, 11, 30, 2), {D: at(2026, 11, 30)}, at(2026, 11, 30), None),
        (METRICS, W, at(2026, 11, 30, 2), {D: at(2026, 11, 29)}, at(2026, 11, 23),
         "waiting for days up to 2026-11-30T00:00:00+00:00"),
        (METRICS, W, at(2026, 11, 30, 2), {H: at(2026, 11, 30, 2)}, None,
         "no day is materialized yet"),
        # month ends and leap days: buckets are UTC days, whatever the month
        (METRICS, D, at(2028, 3, 1, 0, 30), {H: at(2028, 3, 1)}, at(2028, 3, 1), None),
        (METRICS, D, at(2028, 3, 1, 0, 30), {H: at(2028, 2, 29, 23)}, at(2028, 2, 29),
         "waiting for hours up to 2028-03-01T00:00:00+00:00"),
        (METRICS, W, at(2028, 3, 1, 12), {D: at(2028, 3, 1)}, at(2028, 2, 28), None),
        (METRICS, W, at(2027, 1, 1, 12), {D: at(2027, 1, 1)}, at(2026, 12, 28), None),
        # a rollup without weeks has days as its coarsest grain
        (AGENTS, D, at(2026, 11, 30, 4, 37), {H: at(2026, 11, 30, 3)}, at(2026, 11, 30), None),
    ],
)
def test_complete_limit(rollup, grain, as_of, marks, limit, why) -> None:
    assert complete_limit(rollup, grain, as_of, marks) == (limit, why)


SETTINGS = Settings(hours_per_transaction=6)
ALL_MARKED = {H: at(2030, 1, 1), D: at(2030, 1, 1), W: at(2029, 12, 31)}


def pieces(*bounds: datetime) -> list[tuple[datetime, datetime]]:
    return list(pairwise(bounds))


@pytest.mark.parametrize(
    ("rollup", "lo", "hi", "marks", "options", "want"),
    [
        # widened to whole buckets; hours in transactions of 6, days of 7, weeks of 4
        (METRICS, at(2026, 11, 28, 10, 30), at(2026, 11, 29, 1, 10), ALL_MARKED, {},
         [Plan(H, pieces(at(2026, 11, 28, 10), at(2026, 11, 28, 16), at(2026, 11, 28, 22),
                         at(2026, 11, 29, 2))),
          Plan(D, pieces(at(2026, 11, 28), at(2026, 11, 30))),
          Plan(W, pieces(at(2026, 11, 23), at(2026, 11, 30)))]),
        (METRICS, at(2026, 10, 1), at(2026, 11, 1), ALL_MARKED, {},
         [Plan(H, pieces(*[at(2026, 10, 1) + timedelta(hours=6 * i) for i in range(125)])),
          Plan(D, pieces(at(2026, 10, 1), at(2026, 10, 8), at(2026, 10, 15), at(2026, 10, 22),
                         at(2026, 10, 29), at(2026, 11, 1))),
          Plan(W, pieces(at(2026, 9, 28), at(2026, 10, 26), at(2026, 11, 2)))]),
        # cut at each grain's watermark; nothing where a grain has none
        (METRICS, at(2026, 11, 28), at(2026, 11, 29),
         {H: at(2026, 11, 28, 8), D: at(2026, 11, 28), W: None}, {},
         [Plan(H, pieces(at(2026, 11, 28), at(2026, 11, 28, 6), at(2026, 11, 28, 8))),
          Plan(D, []), Plan(W, [])]),
        # the retention horizon: inputs before it are gone, whole buckets after it only
        (AGENTS, at(2026, 11, 28), at(2026, 11, 29), ALL_MARKED,
         {"horizons": {H: at(2026, 11, 28, 13, 30), D: None}},
         [Plan(H, pieces(at(2026, 11, 28, 14), at(2026, 11, 28, 20), at(2026, 11, 29))),
          Plan(D, pieces(at(2026, 11, 28), at(2026, 11, 29)))]),
        # resumed at the days: the hours were done, the days start where it stopped
        (METRICS, at(2026, 11, 20), at(2026, 11, 30), ALL_MARKED,
         {"resume": (D, at(2026, 11, 25, 7))},
         [Plan(D, pieces(at(2026, 11, 25), at(2026, 11, 30))),
          Plan(W, pieces(at(2026, 11, 16), at(2026, 11, 30)))]),
        # a leap day and a year end are days like the others
        (AGENTS, at(2028, 2, 28, 22), at(2028, 3, 1, 2), ALL_MARKED, {},
         [Plan(H, pieces(at(2028, 2, 28, 22), at(2028, 2, 29, 4), at(2028, 2, 29, 10),
                         at(2028, 2, 29, 16), at(2028, 2, 29, 22), at(2028, 3, 1, 2))),
          Plan(D, pieces(at(2028, 2, 28), at(2028, 3, 2)))]),
        (METRICS, at(2026, 12, 31, 12), at(2027, 1, 1, 12), ALL_MARKED, {},
         [Plan(H, pieces(*[at(2026, 12, 31, 12) + timedelta(hours=6 * i) for i in range(5)])),
          Plan(D, pieces(at(2026, 12, 31), at(2027, 1, 2))),
          Plan(W, pieces(at(2026, 12, 28), at(2027, 1, 4)))]),
    ],
)
def test_backfill_plan(rollup, lo, hi, marks, options, want) -> None:
    got = plan(rollup, lo, hi, marks, SETTINGS, resume=options.get("resume"),
               horizons=options.get("horizons"))
    assert got == want
