"""The `aggjobs` command: thin commands over the engine.

Bad input exits 2 with a one-line reason and changes nothing; `verify` exits 1 on mismatch.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .. import audit as audit_log
from .. import logs
from ..catalog import BUILTIN_ROLLUPS, Grain, Rollup, select_rollups
from ..catalog import rollups as rollups_in_force
from ..catalog.grains import SUPPORTED_FROM, SUPPORTED_UNTIL, past, past_range
from ..catalog.jobs import JOB_SPECS, checked_settings
from ..db import definitions
from ..db.connect import connect, translate_errors
from ..db.migrate import current_version, migrations, plan_only
from ..db.migrate import migrate as run_migrations
from ..engine.recompute import native_installed
from ..errors import (
    AggjobsError,
    ConfigError,
    InvalidRange,
    InvalidTimestamp,
    MigrationRequired,
)
from ..settings import Settings, get_settings
from . import render
from .servers import db_app

if TYPE_CHECKING:
    from ..jobs.runner import RunResult
    from ..operations.up import UpToken

app = typer.Typer(
    name="aggjobs",
    help="Incremental, self-healing analytics rollups over PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

def show_version(wanted: bool) -> None:
    if wanted:
        from .. import __version__

        print(f"aggjobs {__version__}")
        raise typer.Exit()


@app.callback()
def configured(
    ctx: typer.Context,
    _version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=show_version,
        help="Print the version and exit.")] = False,
) -> None:
    """Incremental, self-healing analytics rollups over PostgreSQL.

    Configured by AGGJOBS_* variables (README, "Configuration"): an invalid one exits 2
    naming it, before any command starts."""
    if not ctx.resilient_parsing:  # not while the shell completes a word
        checked_settings()


def rollup_names() -> str:
    """The rollups in force, for help texts: the built-in ones and those of the module
    AGGJOBS_ROLLUPS names (said so when it cannot be loaded: the command will say why)."""
    try:
        return ", ".join(r.name for r in rollups_in_force())
    except AggjobsError:
        return (", ".join(r.name for r in BUILTIN_ROLLUPS)
                + ", and those of the module AGGJOBS_ROLLUPS names")


def job_names(heavy: bool | None = None) -> str:
    """The jobs of the catalog (only the heavy or light ones, if said), for help texts."""
    return ", ".join(name for name, spec in JOB_SPECS.items()
                     if heavy is None or spec.heavy == heavy)


ROLLUPS_HELP = rollup_names()
RollupNames = Annotated[
    list[str] | None,
    typer.Argument(help=f"Rollups to act on (default: all): {ROLLUPS_HELP}.",
                   show_default=False),
]
FromTs = Annotated[str, typer.Option("--from", help="Range start, ISO 8601 (UTC if no offset).")]
ToTs = Annotated[str, typer.Option("--to", help="Range end (exclusive), ISO 8601.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RULE = "-" * 78  # sets `aggjobs up`'s address apart

# Bounds of numeric options, so that no value reaches SQL or datetime arithmetic out of range
# (issue 21): a bigint, the hours from 1970 to 2200 and then some, a sane process count.
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
MAX_BUCKETS = 10_000_000
MAX_CONCURRENCY = 256


def finite(value: float | None) -> float | None:
    """Option callback: NaN passes every min/max comparison, so refuse it explicitly."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def main() -> None:
    """Entry point: one-line errors instead of tracebacks for expected failures.

    Typer runs outside its standalone mode so that usage errors (a bad option value, a
    missing option) come here too, and are printed as one line like aggjobs' own errors
    instead of Typer's framed box; both exit 2.
    """
    logs.setup(logging.WARNING)
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # Click's errors (Typer vendors Click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `aggjobs` alone: the help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)
        fail(usage_line(exc), exc.exit_code)
    except typer.Abort:
        fail("aborted", 1)
    except AggjobsError as exc:
        fail(str(exc), 2)
    sys.exit(code if isinstance(code, int) else 0)


def fail(reason: str, code: int) -> NoReturn:
    # escaped: a reason quotes user input, which must not be read as rich markup
    err_console.print(f"[red]error:[/red] {escape(reason)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def usage_line(exc: typer.TyperException) -> str:
    """Click's message on one line, with where to read the usage."""
    text = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"{text} (see `{ctx.command_path} --help`)" if ctx else text


@contextlib.contextmanager
def session(purpose: str, *, require_schema: bool = True,
            current: list[Rollup] | None = None) -> Iterator[psycopg.Connection]:
    """A session on the database; `current`: rollups whose tables must have been built with
    their declared definitions (else exit 2 before any work: run `aggjobs migrate`)."""
    with translate_errors(), connect(purpose) as conn:
        if require_schema and current_version(conn) != migrations()[-1].version:
            raise MigrationRequired()
        if current:
            definitions.ensure_current(conn, current)
        yield conn


def check_schema(purpose: str) -> None:
    """Exit 2 before anything starts unless the database answers and its schema is current
    (else: run `aggjobs migrate`), for the commands whose work opens its own sessions."""
    with session(purpose):
        pass


def time_range(lo_text: str, hi_text: str) -> tuple[datetime, datetime]:
    return past_range(lo_text, hi_text, "--from", "--to")


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=False, disable=not err_console.is_terminal,
    ) as bar:
        yield bar


@app.command()
def migrate(
    plan: Annotated[bool, typer.Option(
        "--plan", help="Print what a migrate would do, per rollup, and change nothing.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Apply a plan that loses history: a rebuild whose groups change "
        "(dimensions, source) cannot keep the buckets retention took the raw rows of.")] = False,
    prune: Annotated[bool, typer.Option(
        "--prune", help="Also drop every retired table now (schema aggjobs_retired), not only "
        "those retired longer than AGGJOBS_RETIRED_GRACE_DAYS.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create or upgrade the schema (source tables if missing, `analytics`, `aggjobs`), then
    bring the rollups' tables to their declared definitions: each rollup is unchanged, new,
    recorded, changed (saying what differs) or removed (docs/rollups.md, "Changing a
    rollup")."""
    settings = get_settings()
    with session("migrate", require_schema=False) as conn:
        if plan:
            done = plan_only(conn)
        else:
            done = run_migrations(conn, native=settings.native, prune=prune, force=force,
                                  retired_grace_s=settings.retired_grace_days * 86400,
                                  lock_wait_s=settings.lock_wait_s)
            native = native_installed(conn)
    if as_json:
        console.print_json(data=render.migrate_json(done, planned=plan))
        return
    for line in render.migrate_lines(done, planned=plan):
        console.print(line, highlight=False, soft_wrap=True)
    if not plan:
        console.print("p95 and sketches: " + (
            "C functions of extension aggjobs_native" if native
            else "portable SQL (extension aggjobs_native not installed; docs/native.md)"))


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=1, max=400, help="Days of history.")] = 7,
    workspaces: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    runs_per_hour: Annotated[int, typer.Option(min=1, max=5_000_000)] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
) -> None:
    """Load realistic synthetic runs, user events and credit ledger, ending now."""
    from ..demo import DemoSpec, load_demo

    spec = DemoSpec(days=days, workspaces=workspaces, runs_per_hour=runs_per_hour, seed=seed)
    with session("demo") as conn, progress_bar() as bar:
        task = bar.add_task("loading demo data", total=None)
        result = load_demo(conn, spec, progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(
        f"demo data loaded: {result.runs:,} runs, {result.events:,} user events, "
        f"{result.transactions:,} credit transactions from {result.start:%Y-%m-%d %H:%M} "
        f"to {result.end:%Y-%m-%d %H:%M} UTC"
    )


@app.command()
def refresh(
    rollups: RollupNames = None,
    grain: Annotated[Grain | None, typer.Option(help="Only this grain.")] = None,
    as_of: Annotated[str, typer.Option("--as-of", help="Reference time (default now).")] = "now",
    max_buckets: Annotated[int | None, typer.Option(
        min=1, max=MAX_BUCKETS,
        help="At most this many new hours per rollup (default: all complete ones).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Incremental refresh: new complete buckets plus groups invalidated by late,
    updated or deleted rows."""
    from ..engine.refresh import refresh as run_refresh

    chosen = select_rollups(rollups)
    if grain is not None:
        chosen = with_grain(chosen, grain, named=bool(rollups))
    ref = past(as_of, "--as-of")
    settings = get_settings()
    reports = []
    with session("refresh", current=chosen) as conn, progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def show(label: str, done: int, total: int) -> None:
            task = tasks.setdefault(label, bar.add_task(label, total=total))
            bar.update(task, completed=done, total=total)

        for rollup in chosen:
            reports.append(run_refresh(
                conn, rollup, as_of=ref, settings=settings, grains=[grain] if grain else None,
                max_buckets=max_buckets, progress=show,
            ))
    if as_json:
        print(json.dumps([render.refresh_json(r) for r in reports], indent=2))
    else:
        console.print(render.refresh_table(reports))


def with_grain(chosen: list[Rollup], grain: Grain, *, named: bool) -> list[Rollup]:
    """The rollups that have `grain`; naming one that has not is an error."""
    lacking = [r for r in chosen if grain not in r.grains]
    if named and lacking:
        r = lacking[0]
        raise InvalidRange(f"rollup {r.name} has no {grain.value} grain (its grains: "
                           f"{', '.join(g.value for g in r.grains)})")
    return [r for r in chosen if grain in r.grains]


@app.command()
def backfill(
    rollups: RollupNames = None,
    *,
    from_: FromTs,
    to: ToTs,
    force: Annotated[bool, typer.Option(
        "--force", help="Allow a range longer than AGGJOBS_MAX_BACKFILL_DAYS (audited as "
        "forced).")] = False,
    sessions: Annotated[int | None, typer.Option(
        "--sessions", min=1, max=16, show_default=False,
        help="Database sessions recomputing hours side by side (default: "
        "AGGJOBS_BACKFILL_SESSIONS, 1). Each costs a core and work_mem on the server.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Recompute a range of materialized buckets (all grains), chunked and resumable.
    Audited. A range longer than AGGJOBS_MAX_BACKFILL_DAYS (default 31) exits 2 unless
    --force; so does a range another session is backfilling."""
    from ..operations import Requester, audited_backfill

    chosen = select_rollups(rollups)
    lo, hi = time_range(from_, to)
    settings = get_settings()
    if sessions is not None:
        settings = settings.model_copy(update={"backfill_sessions": sessions})
    who = Requester(cli_actor(), audit_log.local_source("cli"))
    with session("backfill", current=chosen) as conn, progress_bar() as bar:

        def progress(rollup: Rollup) -> Callable[[int, int], None]:
            task = bar.add_task(f"backfill {rollup.name}", total=None)
            return lambda d, t: bar.update(task, completed=d, total=t)

        reports = audited_backfill(
            conn, chosen, lo, hi, settings=settings, who=who, force=force, override="--force",
            progress=progress, done=None if as_json else lambda report: console.print(
                render.backfill_line(report)))
    if as_json:
        print(render.to_json([render.backfill_json(r) for r in reports]))


@app.command()
def verify(
    rollups: RollupNames = None,
    *,
    from_: FromTs,
    to: ToTs,
    repair: Annotated[bool, typer.Option("--repair", help="Recompute mismatched groups.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000,
                                       help="Mismatches listed at most.")] = 50,
    force: Annotated[bool, typer.Option(
        "--force", help="Allow a range longer than AGGJOBS_MAX_BACKFILL_DAYS.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Recompute from the raw rows and compare; exit 1 listing each mismatched bucket.
    A range longer than AGGJOBS_MAX_BACKFILL_DAYS (default 31) exits 2 unless --force:
    verify reads every raw row of its range, as a backfill does."""
    from ..safety import check_backfill_span

    chosen = select_rollups(rollups)
    lo, hi = time_range(from_, to)
    if not force:
        check_backfill_span(lo, hi, get_settings(), override="--force")
    failed, grains = [], []
    with session("verify", current=chosen) as conn:
        for rollup in chosen:  # the live tables, under the definition they were built with
            live = definitions.versions(conn, rollup).live
            found = verify_rollup(conn, live, lo, hi, repair=repair, limit=limit,
                                  quiet=as_json)
            grains += found
            if any(g["mismatches"] for g in found):
                failed.append(rollup.name)
    if as_json:
        print(render.to_json(grains))
    if failed:
        if not repair and not as_json:
            console.print("to recompute the mismatched groups from the raw rows (audited):\n  "
                          + repair_command(failed, from_, to, force=force),
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def repair_command(rollups: list[str], lo: str, hi: str, *, force: bool) -> str:
    """The `aggjobs verify ... --repair` line that repairs what this verify found."""
    import shlex

    words = ["aggjobs", "verify", *rollups, "--from", lo, "--to", hi, "--repair"]
    return shlex.join(words + (["--force"] if force else []))


def verify_rollup(conn: psycopg.Connection, rollup: Rollup, lo: datetime, hi: datetime, *,
                  repair: bool, limit: int, quiet: bool) -> list[dict]:
    """Each grain verified (and repaired), printed unless `quiet`; their JSON objects."""
    from ..operations import Requester
    from ..operations.repair import verify_and_repair

    who = Requester(cli_actor(), audit_log.local_source("cli")) if repair else None
    found = []
    for grain in rollup.grains:
        report, again = verify_and_repair(conn, rollup, grain, lo, hi, repair_as=who)
        found.append(render.verify_json(report, again, limit))
        if quiet:
            continue
        if again is not None:
            console.print(render.repaired_line(report, again))
        left = again or report
        console.print(render.verify_line(left))
        if left.mismatches:
            console.print(render.mismatch_table(left.mismatches[:limit]))
    return found


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Per job the last run, its status and duration, the next scheduled time and the
    failures in a row; each worker and scheduler with the age of its last heartbeat; per
    rollup and grain the watermark, lag and pending dirty groups, and which rollups the C
    functions compute (else the portable SQL); then what is wrong and what to do. Exit 1
    when something is unhealthy (usable as a check), no live worker or scheduler for
    AGGJOBS_LIVENESS_SECONDS included."""
    from ..monitor import overview

    with session("status") as conn:
        state = overview(conn, get_settings()).as_dict()
    if as_json:
        print(render.to_json(state))
    else:
        console.print(render.jobs_table(state["jobs"]))
        console.print(render.liveness_table(state["liveness"]))
        console.print(render.status_table(state["rollups"]))
        console.print(render.path_line(state["rollups"]), markup=False, highlight=False)
        for line in render.quarantine_lines(state["rollups"]) + render.rebuild_lines(
                state["rebuilds"]):
            console.print(line)
        for problem in state["problems"]:
            console.print(f"[red]unhealthy:[/red] {problem}", highlight=False)
        if state["healthy"]:
            console.print("[green]healthy[/green]")
    if not state["healthy"]:
        raise typer.Exit(1)


@app.command()
def doctor(as_json: JsonFlag = False) -> None:
    """Check the database's distribution when it is a Citus cluster (docs/scaling.md): the
    sources, rollups and change log distributed by workspace and co-located, the views'
    owner able to log in on every node, citus.enable_unsafe_triggers on, the identity
    tables left on the coordinator. On PostgreSQL: "not a Citus cluster", exit 0. Exit 1
    when a problem is found."""
    from ..db.doctor import diagnose

    with session("doctor", require_schema=False) as conn:
        d = diagnose(conn)
    if as_json:
        print(json.dumps({**vars(d), "healthy": d.healthy}))
    elif not d.citus:
        console.print("not a Citus cluster (extension citus is not installed): nothing to "
                      "check", highlight=False)
    else:
        console.print(f"{d.version}; {d.workers} worker(s)", highlight=False)
        for line in d.checked:
            console.print(f"[green]ok:[/green] {escape(line)}", highlight=False)
        for line in d.advice:
            console.print(f"[yellow]advice:[/yellow] {escape(line)}", highlight=False)
        for line in d.problems:
            console.print(f"[red]problem:[/red] {escape(line)}", highlight=False)
    if not d.healthy:
        raise typer.Exit(1)


@app.command()
def rows(
    rollup: Annotated[str, typer.Argument(
        help=f"The rollup: {ROLLUPS_HELP}.", show_default=False)],
    grain: Annotated[Grain, typer.Option(help="The grain.")] = Grain.HOUR,
    workspace: Annotated[int | None, typer.Option(
        min=0, max=BIGINT_MAX, help="Only this workspace (default: all).")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="Buckets starting at or after, ISO 8601 (default: a day, a week or "
        "four weeks before --to).", show_default=False)] = None,
    to: Annotated[str | None, typer.Option(
        help="Buckets starting before, ISO 8601 (default: now).", show_default=False)] = None,
    live: Annotated[bool, typer.Option(
        "--live", help="Read the live view: exact now, the open bucket and changes not yet "
        "refreshed included (docs/rollups.md, \"Live reads\").")] = False,
    as_json: JsonFlag = False,
) -> None:
    """A rollup's rows at one grain, from its table or, with --live, its live view. A range
    longer than AGGJOBS_MAX_ROWS_DAYS (default 31) exits 2."""
    from ..catalog import get_rollup
    from ..catalog.grains import parse_timestamp
    from ..engine.rows import default_range, read_rows

    chosen = get_rollup(rollup)
    lo, hi = default_range(grain, parse_timestamp(from_) if from_ else None,
                           parse_timestamp(to) if to else None, datetime.now(UTC))
    found: list[dict] = []
    with session("rows", current=[chosen]) as conn:
        offset: int | None = 0
        while offset is not None:
            page = read_rows(conn, chosen, grain, lo=lo, hi=hi, workspace=workspace,
                             live_view=live, offset=offset,
                             max_days=get_settings().max_rows_days)
            found += page.rows
            offset = page.next_offset
    if as_json:
        print(render.to_json(found))
    else:
        console.print(render.rows_table(page.columns, found))


@app.command()
def runs(
    job: Annotated[str | None, typer.Option(help=f"Only this job: {job_names()}.")] = None,
    since: Annotated[str | None, typer.Option(help="Runs started at or after, ISO 8601.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Runs shown at most.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The run history, newest first, with each step's outcome and error."""
    from ..catalog.jobs import get_job_spec as get_job
    from ..monitor import run_history

    if job:
        get_job(job)
    start = past(since, "--since") if since else None
    with session("runs") as conn:
        rows = run_history(conn, job=job, since=start, limit=limit)
    if as_json:
        print(render.to_json(rows))
        return
    console.print(render.runs_table(rows))
    for row in rows:
        if row["status"] in ("failed", "abandoned"):
            console.print(render.failed_run(row), highlight=False)


JobName = Annotated[str, typer.Argument(help=f"The job: {job_names()}.", show_default=False)]


@app.command()
def run(
    job: JobName,
    as_of: Annotated[str, typer.Option("--as-of", help="Reference time (default now).")] = "now",
    as_json: JsonFlag = False,
) -> None:
    """Run one job now, with the scheduled runs' guarantees (no overlap, history, retries).

    Exit 0 when it succeeded, 1 when a step failed, 3 when it was skipped because another
    run of the job holds it."""
    from ..catalog.jobs import get_job_spec as get_job
    from ..operations.runs import manual_run

    get_job(job)  # an unknown job is a usage error before anything connects
    ref = past(as_of, "--as-of")
    check_schema(job)  # the runner opens its own session
    with translate_errors():
        result = manual_run(job, get_settings(), as_of=ref, actor=cli_actor(),
                            source=audit_log.local_source("cli"))
    show_run(result, as_json=as_json)


def show_run(result: RunResult, *, as_json: bool) -> NoReturn:
    """A run's outcome as `aggjobs run` prints it, and its exit code."""
    if as_json:
        print(render.to_json(render.run_json(result)))
    else:
        console.print(render.run_table(result))
    raise typer.Exit({"succeeded": 0, "skipped": 3}.get(result.status, 1))


@app.command()
def retry(
    run_id: Annotated[int, typer.Argument(min=1, max=2**63 - 1, help=(
        "The failed or abandoned run's id (`aggjobs runs`)."))],
    as_json: JsonFlag = False,
) -> None:
    """Run a failed or abandoned run's job again, for the same reference time (its
    `as_of`), as the dashboard's retry button does; audited (`retry`, linking both runs).

    Exit codes as `aggjobs run`; 2 for an unknown run or one that did not fail."""
    from ..operations.runs import retry_run

    with session("retry") as conn:
        result = retry_run(conn, run_id, get_settings(), actor=cli_actor(),
                           source=audit_log.local_source("cli"))
    show_run(result, as_json=as_json)


@app.command("cancel-backfill")
def cancel_backfill(
    backfill_id: Annotated[int, typer.Argument(min=1, max=2**63 - 1, help=(
        "The backfill's id (the dashboard, `GET /api/backfills`)."))],
) -> None:
    """Cancel a backfill, as the dashboard's cancel button does: a queued one at once; a
    running one, whoever runs it (a worker, `aggjobs backfill` in a terminal), before its
    next chunk; what it recomputed stays, and backfilling the range again resumes it.
    Audited (`backfill.cancel`). Exit 2 for an unknown backfill or one that has ended."""
    from ..operations import Requester
    from ..operations.backfill import cancel_backfill as cancel

    with session("cancel-backfill") as conn:
        done = cancel(conn, backfill_id,
                      who=Requester(cli_actor(), audit_log.local_source("cli")))
    console.print(f"backfill {done['id']} of {done['rollup']}: "
                  + ("cancelled" if done["status"] == "cancelled"
                     else "asked to stop before its next chunk"))


def celery(*args: str) -> None:
    """Replace this process with Celery's own command on the aggjobs app."""
    argv = [sys.executable, "-m", "celery", "-A", "aggjobs.jobs.app", *args]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


QUEUE_KINDS = ("light", "heavy")


def worker_queues(text: str) -> list[str]:
    """`light`, `heavy` or `light,heavy` as the broker queues they name (deduplicated: the
    two are one queue unless AGGJOBS_HEAVY_QUEUE is set)."""
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in QUEUE_KINDS]
    if bad or not kinds:
        raise ConfigError(f"--queues {text!r}: use light, heavy or light,heavy")
    settings = get_settings()
    return list(dict.fromkeys(settings.queue_of(kind == "heavy") for kind in kinds))


@app.command()
def worker(
    beat: Annotated[bool, typer.Option("--beat", help="Also run the scheduler (one per "
                                       "deployment is enough; more are harmless).")] = False,
    queues: Annotated[str, typer.Option(
        "--queues", "-Q",
        help=f"Which jobs this worker takes: light ({job_names(heavy=False)}; queue "
        f"AGGJOBS_QUEUE), heavy ({job_names(heavy=True)}; queue AGGJOBS_HEAVY_QUEUE, by "
        "default the same queue) or light,heavy.")] = "light,heavy",
    concurrency: Annotated[int, typer.Option(min=1, max=MAX_CONCURRENCY,
                                             help="Jobs run at once.")] = 2,
    hostname: Annotated[str | None, typer.Option(
        "--hostname", "-n", help="Celery node name, e.g. heavy@%h (default celery@%h); "
        "workers on one host need distinct names.", show_default=False)] = None,
    loglevel: Annotated[str, typer.Option(help="Celery's log level.")] = "INFO",
    quiet: Annotated[bool, typer.Option("--quiet", help="No start-up banner.")] = False,
) -> None:
    """Run a Celery worker executing the jobs (Celery's `worker` command).

    By default it takes every job. With AGGJOBS_HEAVY_QUEUE set, run workers with
    `--queues light` and `--queues heavy` (e.g. on different hosts) so that a long daily or
    cleanup run never delays the hourly rollup."""
    chosen = worker_queues(queues)
    check_schema("worker")
    celery(*(["--quiet"] if quiet else []), "worker", "-Q", ",".join(chosen),
           "--concurrency", str(concurrency),
           "--loglevel", loglevel, *(["-n", hostname] if hostname else []),
           *(["--beat"] if beat else []))


@app.command()
def beat(loglevel: Annotated[str, typer.Option(help="Celery's log level.")] = "INFO") -> None:
    """Run the scheduler that sends the jobs at their times (Celery's `beat` command)."""
    check_schema("beat")
    celery("beat", "--loglevel", loglevel)


@app.command()
def up(
    demo_days: Annotated[int, typer.Option(
        min=0, max=400,
        help="Days of demo data to load when the sources are empty (0: none).")] = 7,
    concurrency: Annotated[int, typer.Option(min=1, max=MAX_CONCURRENCY,
                                             help="Jobs run at once.")] = 2,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the API and "
                                      "dashboard (on 127.0.0.1).")] = 8700,
    token_hours: Annotated[float, typer.Option(
        min=0.01, max=24 * 366, callback=finite,
        help="Hours the admin token in the dashboard's address is valid (it is revoked "
        "when `up` stops anyway).")] = 12.0,
) -> None:
    """Everything in one process tree: the database (embedded when AGGJOBS_DATABASE_URL is
    unset, with the C functions built for it where a C compiler is; one line says which
    path the rollups run, and why) migrated, demo data if it is empty, the rollups caught
    up, then the API with the dashboard (`aggjobs serve` on 127.0.0.1:PORT) and a worker
    with the scheduler, their output in AGGJOBS_DATA_DIR/logs. Once all runs, prints the
    dashboard's address with a fresh admin token in it, last. Ctrl-C stops it all and
    revokes the token; the embedded database and broker keep running (`aggjobs db stop`)."""
    from ..operations import up as stack

    settings = get_settings()
    with translate_errors():
        native, line = stack.native_for_embedded(settings)
    if line:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    with session("up", require_schema=False) as conn:
        token = stack.prepare(
            conn, settings, demo_days=demo_days, token_hours=token_hours, native=native,
            loading=lambda days: console.print(f"loading {days} days of demo data ..."))
    address = f"http://127.0.0.1:{port}/?token={token.secret}"
    try:
        with translate_errors():
            stack.catch_up(settings,
                           done=lambda result: console.print(render.run_table(result)))
        console.print("starting the API, then the worker with the scheduler ...")
        stack.supervise(settings, port=port, concurrency=concurrency,
                        ready=lambda _: up_banner(address, token, settings))
    finally:
        up_farewell(address, token, settings, stack.revoke_token(token, settings))


def up_banner(address: str, token: UpToken, settings: Settings) -> None:
    """The dashboard's address, last and set apart, once everything runs."""
    logs = settings.data_dir.expanduser().resolve() / "logs"
    expires = token.expires_at.strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{RULE}\naggjobs is up: API, dashboard, worker and scheduler.\n\n"
          f"dashboard: {address}\n\n"
          f"(admin token {token.name}, valid until {expires} or until this stops;\n"
          f" logs in {logs}; Ctrl-C stops it all)\n{RULE}\n", flush=True)


def up_farewell(address: str, token: UpToken, settings: Settings,
                not_revoked: str | None) -> None:
    """On the way out: the address again, the token's fate, how to start again, and what
    keeps running."""
    fate = (f"its token {token.name} is revoked" if not_revoked is None
            else f"its token {token.name} could not be revoked ({not_revoked}); it expires anyway")
    lines = ["", RULE, "aggjobs stopped (API, dashboard, worker and scheduler).",
             f"dashboard was: {address}", f"               ({fate})",
             "start again:   aggjobs up   (prints a new address)"]
    if not settings.database_url:
        where = settings.data_dir.expanduser().resolve()
        what = "PostgreSQL" if settings.broker_url else "PostgreSQL and broker"
        lines += [f"still running: the embedded {what} under {where}",
                  "               (aggjobs db status; stop: aggjobs db stop)"]
    print("\n".join([*lines, RULE]), flush=True)


class ReportFormat(str, enum.Enum):
    md = "md"
    html = "html"
    json = "json"
    csv = "csv"


def report_day(text: str) -> date:
    """A UTC date that is over: its report can only be built from complete data."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidTimestamp(f"--day {text!r} is not a date: use YYYY-MM-DD") from None
    if not SUPPORTED_FROM.date() <= day < SUPPORTED_UNTIL.date():
        raise InvalidTimestamp(f"--day {day} is outside the supported times "
                               f"[{SUPPORTED_FROM:%Y-%m-%d}, {SUPPORTED_UNTIL:%Y-%m-%d}) UTC")
    if day >= datetime.now(UTC).date():
        raise InvalidRange(f"--day {day} is not over yet (days are UTC): pick an earlier day")
    return day


@app.command()
def report(
    day: Annotated[str, typer.Option("--day", help="UTC date, YYYY-MM-DD.",
                                     show_default=False)],
    workspace: Annotated[int | None, typer.Option(
        "--workspace", min=BIGINT_MIN, max=BIGINT_MAX,
        help="This workspace's report (default: the platform's).")] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = (
        ReportFormat.md),
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file instead of standard output.",
        dir_okay=False)] = None,
) -> None:
    """The daily report of a day: the stored one (analytics.daily_reports) if the daily job
    made it, else built from the rollups on the fly (not stored)."""
    from .. import reports

    wanted = report_day(day)
    with session("report") as conn:
        chosen = reports.day_report(conn, wanted, workspace)
    text = reports.render(chosen.report, fmt.value)
    err_console.print(f"report: {chosen.origin}", highlight=False, soft_wrap=True)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise reports.ReportError(f"cannot write {output}: {exc.strerror}") from None
        err_console.print(f"written to {output}", highlight=False, soft_wrap=True)


# -- HTTP API and its tokens (docs/api.md) ------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8700,
) -> None:
    """The HTTP API: dashboard at /, JSON under /api/, /metrics, /healthz, docs at /docs.
    Every route but /healthz needs a token (`aggjobs token create`)."""
    import uvicorn

    from ..api.app import create_api, redact_access_log

    check_schema("serve")  # before anything listens
    # Every route but /healthz answers 401 without a token: say so beside the address.
    console.print(f"aggjobs API on http://{host}:{port}/ (docs at /docs; Ctrl-C stops it): "
                  "open it with ?token=<secret> from `aggjobs token create`", highlight=False)
    redact_access_log()  # `?token=` secrets stay out of the access log
    # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1, so
    # that any local client could write the address of its choice into the audit log. The
    # app honours it only from AGGJOBS_TRUSTED_PROXIES.
    uvicorn.run(create_api(get_settings()), host=host, port=port, log_level="info",
                proxy_headers=False)


token_app = typer.Typer(help="API tokens for `aggjobs serve`: create, list, rotate, revoke.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")


class TokenRole(str, enum.Enum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


def cli_actor() -> str:
    """`cli:<user>@<host>`: who the audit log says did what this command does."""
    return audit_log.local_source("cli")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses it; unique among the "
                                      "tokens not revoked.",
                                      show_default=False)],
    role: Annotated[TokenRole, typer.Option("--role", help="viewer reads; operator also "
                                            "runs jobs and backfills; admin manages tokens "
                                            "and retention.", show_default=False)],
    expires_days: Annotated[float | None, typer.Option(
        "--expires-days", min=0.001, max=36500, callback=finite,
        help="Expire after this many days (default: never).")] = None,
) -> None:
    """Create a token and print its secret, once: only its SHA-256 is stored."""
    from ..operations import tokens

    with session("token") as conn:
        secret, row = tokens.create(conn, name, role.value, actor=cli_actor(),
                                    expires_days=expires_days,
                                    source=audit_log.local_source("cli"))
    show_secret(secret, row, "created")


def show_secret(secret: str, row: dict, done: str) -> None:
    """The secret alone on stdout (for `$(aggjobs token create ...)`), the rest on stderr."""
    expires = row["expires_at"].strftime("%Y-%m-%d %H:%M UTC") if row["expires_at"] else "never"
    err_console.print(f"token {row['name']!r} {done}: role {row['role']}, expires {expires}.",
                      highlight=False)
    err_console.print("[yellow]warning:[/yellow] copy the secret now: it is not shown again "
                      "(only its hash is stored).", highlight=False)
    print(secret)


@token_app.command("rotate")
def token_rotate(
    name: Annotated[str, typer.Argument(help="The token's name.", show_default=False)],
) -> None:
    """Replace a token's secret: a new token of the same name and role (and lifetime, from
    now) is created and the old one revoked, at once. Prints the new secret, once. Audited
    (token.rotate)."""
    from ..operations import tokens

    with session("token") as conn:
        secret, row = tokens.rotate(conn, name, actor=cli_actor(),
                                    source=audit_log.local_source("cli"))
    show_secret(secret, row, "rotated (the old secret is revoked)")


@token_app.command("list")
def token_list(as_json: JsonFlag = False) -> None:
    """Every token: name, role, created, expires, revoked, last used (never the secret)."""
    from ..operations import tokens

    with session("token") as conn:
        rows = tokens.list_tokens(conn)
    if as_json:
        print(render.to_json(rows))
        return
    console.print(render.tokens_table(rows))


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.", show_default=False)],
) -> None:
    """Revoke a token: requests bearing it are refused from now on."""
    from ..operations import tokens

    with session("token") as conn:
        tokens.revoke(conn, name, actor=cli_actor(), source=audit_log.local_source("cli"))
    console.print(f"token {name!r} revoked", highlight=False)


@app.command()
def audit(
    since: Annotated[str | None, typer.Option(help="Entries at or after, ISO 8601.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Entries shown at most.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """The audit log, newest first: who did what, when, with which parameters, and how it
    ended (manual runs, backfills, repairs, token changes, denied requests, cleanups)."""
    start = past(since, "--since") if since else None
    with session("audit") as conn:
        rows = audit_log.entries(conn, since=start, limit=limit)
    if as_json:
        print(render.to_json(rows))
        return
    console.print(render.audit_table(rows))
