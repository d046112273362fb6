"""The steps of the jobs: the engine's incremental refresh, the materialized views, and the
daily job's health scores and reports (plain functions of aggjobs.health and aggjobs.reports,
which know nothing of jobs, wrapped here into Steps)."""

from __future__ import annotations

from psycopg import sql

from .. import health, reports
from ..catalog import Grain, Rollup
from ..catalog.grains import as_utc
from ..db.connect import scalar
from ..db.view_caches import update_view_caches
from ..engine.refresh import refresh
from .model import Step, StepContext, StepFn, StepResult

VIEWS = ("analytics.workspace_overview", "analytics.platform_daily_overview")


def rollup_step(rollup: Rollup, grains: list[Grain], *, light: bool = False) -> Step:
    """Refresh `grains` of the rollup (finest first): new complete buckets, then dirty
    groups; a coarser grain never goes past what its finer grain has materialized. A changed
    definition being rebuilt is advanced too: for AGGJOBS_REBUILD_SECONDS_PER_RUN in a
    `light` (hourly) job, until it has caught up in the others."""
    name = f"{rollup.name}.{grains[-1].value}"

    def run(ctx: StepContext) -> StepResult:
        report = refresh(ctx.conn, rollup, as_of=ctx.as_of, settings=ctx.settings,
                         grains=grains, max_buckets=ctx.settings.max_buckets_per_refresh,
                         lock_wait_s=ctx.settings.lock_wait_s,
                         rebuild_budget_s=ctx.settings.rebuild_seconds_per_run if light
                         else None)
        detail: dict[str, object] = {"reset": report.reset}
        if report.rebuild is not None:
            r = report.rebuild
            detail["rebuild"] = {"version": r.version, "new_hours": r.new_hours,
                                 "progress": round(r.progress, 4), "swapped": r.swapped,
                                 "note": r.note}
        for g in report.grains:
            detail[g.grain.value] = {
                "watermark": g.watermark_after.isoformat() if g.watermark_after else None,
                "new_buckets": g.new_buckets,
                "dirty_groups": g.dirty_groups,
                "held_back": g.held_back,
                "dropped_behind_horizon": g.dropped_behind_horizon,
            }
        return StepResult(rows=report.rows_written, detail=detail)

    return Step(name, run, concurrent=True)  # rollups share nothing but the server


def view_steps() -> list[Step]:
    """The views' caches first (the views read them), then the views side by side."""
    return [Step("view.caches", refresh_view_caches)] + [
        Step(f"view.{name.split('.')[1]}", refresh_view(name), concurrent=True)
        for name in VIEWS]


def refresh_view_caches(ctx: StepContext) -> StepResult:
    """Per-day and per-workspace-window p95 and active users, recomputed where their input
    rows changed (src/aggjobs/db/view_caches.py)."""
    detail = update_view_caches(ctx.conn)
    return StepResult(rows=detail.pop("rows"), detail=detail)


def refresh_view(name: str) -> StepFn:
    schema, view = name.split(".")

    def run(ctx: StepContext) -> StepResult:
        # CONCURRENTLY: readers keep the old contents until the new ones are in place.
        ctx.conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(
            sql.Identifier(schema, view)))
        rows: int = scalar(ctx.conn, sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, view)))
        return StepResult(rows=rows)

    return run


def health_step() -> Step:
    """Health scores of the last complete day (aggjobs.health), skipped while it waits."""

    def run(ctx: StepContext) -> StepResult:
        done = health.score_last_day(ctx.conn, ctx.as_of.date())
        if done.waiting:
            return StepResult.skipped(done.waiting, day=done.day.isoformat())
        return StepResult(rows=done.rows, detail={"day": done.day.isoformat(), **done.by_status})

    # Once the rollups it reads have ended, beside the others still running.
    return Step("health_scores", run, concurrent=True,
                after=tuple(f"{name}.{Grain.DAY.value}" for name in health.ROLLUPS_READ))


def reports_step() -> Step:
    """The daily reports of the last complete UTC day before `as_of`, once its day grains
    are materialized (else skipped, saying which lag): aggjobs.reports."""

    def run(ctx: StepContext) -> StepResult:
        done = reports.store_last_day(ctx.conn, as_utc(ctx.as_of), ctx.open_session)
        if done.waiting:
            return StepResult.skipped(done.waiting, day=done.day.isoformat())
        return StepResult(rows=done.rows, detail={"day": done.day.isoformat()})

    return Step("daily_reports", run)
