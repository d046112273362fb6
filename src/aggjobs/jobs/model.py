"""What a job is: named steps run in order (independent ones side by side), each isolated
from the others.

A step is a function of a StepContext returning a StepResult: the rows it wrote or deleted,
its status ('skipped' when it had nothing it could do) and any details worth keeping in the
run's history. It opens its own transactions; a failure rolls back only its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import psycopg

from ..catalog.jobs import JobSpec
from ..settings import Settings


@dataclass(frozen=True)
class StepContext:
    conn: psycopg.Connection
    as_of: datetime
    settings: Settings
    source: str | None = None  # where the run was asked for, for audit rows (aggjobs.audit)
    # Another session like the run's, for a step that reads beside itself (daily_reports);
    # the step closes it.
    open_session: Callable[[], psycopg.Connection] | None = None


@dataclass(frozen=True)
class StepResult:
    """What one step did. The runner keeps `rows` and `status` as the step's own fields in
    the run's history (aggjobs.job_runs.steps) and `detail` (JSON values) beside them."""

    rows: int = 0  # written or deleted
    status: Literal["succeeded", "skipped"] = "succeeded"  # skipped: nothing it could do
    detail: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def skipped(cls, reason: str, **detail: object) -> StepResult:
        """A step that had nothing it could do, and why (`detail` first, then `reason`)."""
        return cls(status="skipped", detail={**detail, "reason": reason})


StepFn = Callable[[StepContext], StepResult]


@dataclass(frozen=True)
class Step:
    name: str
    run: StepFn
    # Independent of its concurrent neighbours: consecutive concurrent steps run at once,
    # each on its own session (AGGJOBS_STEP_CONCURRENCY); the next other step waits for all.
    concurrent: bool = False
    # Concurrent neighbours it reads what they write: it starts once they have ended (as it
    # would after them one at a time, whatever became of them). Listed before it in the job.
    after: tuple[str, ...] = ()


def batches(steps: list[Step]) -> list[list[Step]]:
    """The steps in the order they run: runs of consecutive concurrent steps together."""
    out: list[list[Step]] = []
    for step in steps:
        if step.concurrent and out and out[-1][-1].concurrent:
            out[-1].append(step)
        else:
            out.append([step])
    return out


@dataclass(frozen=True)
class Job(JobSpec):
    """A job's metadata (aggjobs.catalog.jobs) and how to build its steps."""

    build: Callable[[Settings], list[Step]]

    @classmethod
    def of(cls, spec: JobSpec, build: Callable[[Settings], list[Step]]) -> Job:
        return cls(name=spec.name, cron=spec.cron, heavy=spec.heavy,
                   time_limit_s=spec.time_limit_s, describe=spec.describe, build=build)

    def steps(self, settings: Settings) -> list[Step]:
        return self.build(settings)
