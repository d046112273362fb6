"""Terminal and JSON renderings of engine reports (no logic, no I/O)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from rich import box
from rich.table import Table

from ..db.migrate import Migrated
from ..engine.backfill import BackfillReport
from ..engine.rebuild import RebuildReport
from ..engine.refresh import GrainReport, RefreshReport
from ..engine.verify import Mismatch, VerifyReport, describe
from ..jobs.runner import RunResult


def plural(n: int, noun: str) -> str:
    """`1 bucket`, `2 buckets`, `0 mismatches`."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n:,} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def ts(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M %Z")


def new_table(title: str | None = None) -> Table:
    """Every command's one table style: a rule under the header, no frame, the title
    flush left."""
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def refresh_table(reports: list[RefreshReport]) -> Table:
    table = new_table("refresh")
    for col in ("rollup", "grain", "watermark", "new buckets", "dirty groups",
                "rows written", "seconds", "note"):
        table.add_column(col, justify="right" if col[0] in "nrds" and col != "rollup" else "left")
    for report in reports:
        for g in report.grains:
            table.add_row(report.rollup, g.grain.value, ts(g.watermark_after), str(g.new_buckets),
                          f"{g.dirty_groups}" + (f" ({g.coalesced_buckets} whole buckets)"
                                                 if g.coalesced_buckets else "")
                          + (f" ({g.scanned_buckets} buckets by one scan)"
                             if g.scanned_buckets else ""),
                          f"{g.rows.written:,}", f"{g.seconds:.2f}", grain_note(g))
        if report.rebuild is not None:
            r = report.rebuild
            table.add_row(f"{report.rollup} v{r.version}", "rebuild", "", str(r.new_hours), "",
                          f"{r.rows:,}", "", rebuild_note(r))
    return table


def rebuild_note(r: RebuildReport) -> str:
    if r.swapped:
        return f"[green]checked ({r.checked}) and swapped in: v{r.version} is live[/green]"
    return f"{r.progress:.0%} rebuilt" + (f"; {r.note}" if r.note else "")


def grain_note(g: GrainReport) -> str:
    notes = [g.held_back] if g.held_back else []
    if g.quarantined:
        notes.append(f"[yellow]{plural(len(g.quarantined), 'bucket')} quarantined from "
                     f"{ts(g.quarantined[0])}: see `aggjobs status`[/yellow]")
    return "; ".join(notes)


def refresh_json(report: RefreshReport) -> dict:
    return {
        "rollup": report.rollup,
        "as_of": iso(report.as_of),
        "reset": report.reset,
        "grains": [
            {
                "grain": g.grain.value,
                "watermark_before": iso(g.watermark_before),
                "watermark_after": iso(g.watermark_after),
                "new_buckets": g.new_buckets,
                "dirty_groups": g.dirty_groups,
                "coalesced_buckets": g.coalesced_buckets,
                "scanned_buckets": g.scanned_buckets,
                "rows_deleted": g.rows.deleted,
                "rows_written": g.rows.written,
                "coarser_groups_marked": g.rows.marked,
                "held_back": g.held_back,
                "quarantined": [iso(b) for b in g.quarantined],
                "seconds": round(g.seconds, 3),
            }
            for g in report.grains
        ],
        "rebuild": None if report.rebuild is None else {
            "version": report.rebuild.version, "new_hours": report.rebuild.new_hours,
            "rows": report.rebuild.rows, "progress": round(report.rebuild.progress, 4),
            "caught_up": report.rebuild.caught_up, "checked": report.rebuild.checked,
            "mismatches": len(report.rebuild.mismatches), "swapped": report.rebuild.swapped,
            "note": report.rebuild.note,
        },
    }


def backfill_line(report: BackfillReport) -> str:
    line = (f"{report.rollup}: backfill #{report.backfill_id}"
            f"{' (resumed)' if report.resumed else ''} recomputed {report.buckets:,} buckets, "
            f"{report.rows.written:,} rows")
    if report.beyond_watermark:
        parts = ", ".join(f"{g} from {ts(wm)}" for g, wm in report.beyond_watermark.items())
        line += f"; not materialized yet (run `aggjobs refresh`): {parts}"
    return line


def backfill_json(report: BackfillReport) -> dict:
    return {"rollup": report.rollup, "backfill_id": report.backfill_id,
            "resumed": report.resumed, "buckets": report.buckets,
            "rows_deleted": report.rows.deleted, "rows_written": report.rows.written,
            "beyond_watermark": {g: iso(wm) for g, wm in report.beyond_watermark.items()}}


def verify_json(report: VerifyReport, repaired: VerifyReport | None, limit: int) -> dict:
    """A grain's verify: the mismatches found (after a repair: those left), `limit` at most."""
    left = repaired or report
    return {"rollup": report.rollup, "grain": report.grain.value,
            "checked_from": iso(report.checked_from), "checked_to": iso(report.checked_to),
            "groups": report.groups, "repaired": len(report.mismatches) if repaired else 0,
            "mismatches": [mismatch_json(m) for m in left.mismatches[:limit]]}


def mismatch_json(m: Mismatch) -> dict:
    return {"rollup": m.rollup, "grain": m.grain.value, "bucket": m.bucket.isoformat(),
            "workspace_id": m.workspace_id, "further": dict(m.further), "measure": m.measure,
            "stored": m.stored, "expected": m.expected}


def verify_line(report: VerifyReport) -> str:
    n = len(report.mismatches or [])
    verdict = "[green]ok[/green]" if not n else f"[red]{plural(n, 'mismatch')}[/red]"
    line = (f"{report.rollup} {report.grain.value}: {report.groups:,} groups from "
            f"{ts(report.checked_from)} to {ts(report.checked_to)}: {verdict}")
    if report.unmaterialized_from is not None:
        line += f" (not materialized from {ts(report.unmaterialized_from)}: not checked)"
    if report.retained_from is not None:
        line += f" (inputs before {ts(report.retained_from)} deleted by retention: not checked)"
    if report.quarantined:
        first, error = report.quarantined[0]
        line += (f" [yellow]({plural(len(report.quarantined), 'quarantined bucket')} not "
                 "checked, from "
                 f"{ts(first)}: {error}; see `aggjobs status`)[/yellow]")
    return line


def repaired_line(before: VerifyReport, after: VerifyReport) -> str:
    groups = {(m.bucket, m.workspace_id) for m in before.mismatches or []}
    return (f"{before.rollup} {before.grain.value}: repaired {plural(len(groups), 'group')}; "
            f"{plural(len(after.mismatches or []), 'mismatch')} remain")


def mismatch_table(mismatches: list[Mismatch]) -> Table:
    table = new_table()
    for col in ("grain", "bucket", "workspace", "measure", "stored", "expected"):
        table.add_column(col)
    for m in mismatches:
        table.add_row(m.grain.value, str(m.bucket), m.where(), m.measure,
                      describe(m.stored), describe(m.expected))
    return table


def lag(seconds: float | None) -> str:
    return "-" if seconds is None else str(timedelta(seconds=int(seconds)))


def status_table(rows: list[dict]) -> Table:
    table = new_table("rollups (times UTC)")
    for col in ("rollup", "grain", "watermark"):
        table.add_column(col, no_wrap=True)
    table.add_column("lag", justify="right", no_wrap=True)
    table.add_column("dirty", justify="right", no_wrap=True)  # pending groups to recompute
    table.add_column("logged", justify="right", no_wrap=True)  # changes not yet fanned out
    for row in rows:
        behind = row["buckets_behind"]
        colour = "green" if behind is not None and behind <= 1 else "yellow"
        if row["watermark"] is None:
            colour = "red"
        watermark = ts(row["watermark"]).removesuffix(" UTC")
        table.add_row(row["rollup"], row["grain"], f"[{colour}]{watermark}[/{colour}]",
                      lag(row["lag_seconds"]), f"{row['pending_groups']:,}",
                      f"{row['source_changes_not_fanned_out']:,}")
    return table


# How each rollup computes, in the line under the rollups' table.
PATH_LINES = {"native": "quantiles and distinct sets by the C functions (aggjobs_native)",
              "portable": "quantiles and distinct sets by the portable SQL"
                          " (no aggjobs_native: docs/native.md)",
              "sql": "no quantile or distinct count, the same SQL either way"}


def path_line(rows: list[dict]) -> str:
    """Under the rollups' table, which rollups the C functions compute (a line, not a
    column: it is the same for every grain of a rollup, and the table fills 80 columns)."""
    by_path: dict[str, list[str]] = {}
    for row in rows:
        names = by_path.setdefault(row["path"], [])
        if row["rollup"] not in names:
            names.append(row["rollup"])
    return "; ".join(f"{', '.join(names)}: {PATH_LINES.get(path, path)}"
                     for path, names in by_path.items())


LIVENESS_COLOUR = {"up": "green", "stopped": "yellow", "silent": "red"}


def heartbeat_age(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{timedelta(seconds=int(seconds))} ago"


def liveness_table(live: dict) -> Table:
    """Each worker and scheduler seen, with the age of its last heartbeat."""
    table = Table(title="workers and schedulers (heartbeats)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for col in ("kind", "name", "state", "last heartbeat", "started", "pid", "queues"):
        table.add_column(col, no_wrap=True, justify="right" if col == "pid" else "left")
    for row in live["workers"] + live["schedulers"]:
        colour = LIVENESS_COLOUR[row["state"]]
        table.add_row(row["kind"], row["name"], f"[{colour}]{row['state']}[/{colour}]",
                      heartbeat_age(row["age_seconds"]), ts(row["started_at"]),
                      str(row["pid"]), ",".join(row["queues"]) or "-")
    return table


def quarantine_lines(rows: list[dict]) -> list[str]:
    """What needs a human: buckets skipped after repeated failures, or failing now."""
    lines = []
    for row in rows:
        q, f = row["quarantined_buckets"], row["failing_buckets"]
        if q or f:
            lines.append(f"[red]{row['rollup']} {row['grain']}: {plural(q, 'bucket')} "
                         f"quarantined, {f} failing[/red]: see aggjobs.quarantine; fix the "
                         "cause, then `aggjobs backfill` the bucket")
    return lines


STATUS_COLOUR = {"succeeded": "green", "skipped": "yellow", "failed": "red",
                 "running": "cyan", "abandoned": "red"}


def rebuild_lines(rows: list[dict]) -> list[str]:
    """`execution_metrics v2: 63% rebuilt (v1 live until the swap)`."""
    return [f"rebuilding: {r['rollup']} v{r['version']}: {r['progress']:.0%} rebuilt (v"
            f"{r['live_version']} live until the swap; hours up to {ts(r['hour_watermark'])})"
            for r in rows]


def run_table(result: RunResult) -> Table:
    colour = STATUS_COLOUR.get(result.status, "white")
    title = f"{result.job}: run {result.id} [{colour}]{result.status}[/{colour}]"
    if result.status == "skipped":
        title += f" ({result.error})"
    table = new_table(title)
    for col in ("step", "status", "rows", "seconds", "tries"):
        table.add_column(col, justify="right" if col in ("rows", "seconds", "tries") else "left",
                         no_wrap=True)
    table.add_column("detail / error", overflow="fold")
    for step in result.steps:
        colour = STATUS_COLOUR.get(step.status, "white")
        note = step.error or step_note(step.detail)
        table.add_row(step.name, f"[{colour}]{step.status}[/{colour}]", f"{step.rows:,}",
                      f"{step.seconds:.2f}", str(step.attempts), note)
    return table


def step_note(detail: dict) -> str:
    """The parts of a step's detail worth a glance: why it held back or skipped."""
    notes = [detail[k] for k in ("reason", "held_back") if detail.get(k)]
    notes += [f"{g}: {d['held_back']}" for g, d in detail.items()
              if isinstance(d, dict) and d.get("held_back")]
    return "; ".join(notes)


def run_json(result: RunResult) -> dict:
    return {"id": result.id, "job": result.job, "status": result.status,
            "error": result.error, "steps": [asdict(s) for s in result.steps]}


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    now = now or datetime.now(value.tzinfo)
    seconds = int((now - value).total_seconds())
    return f"{timedelta(seconds=abs(seconds))} {'ago' if seconds >= 0 else 'from now'}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def jobs_table(jobs: list[dict]) -> Table:
    table = new_table("jobs (times UTC)")
    for col in ("job", "last run", "started", "took", "next", "fails"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("took", "fails") else "left")
    for job in jobs:
        status = job["last_status"]
        colour = STATUS_COLOUR.get(status or "", "white")
        last = f"[{colour}]{status}[/{colour}] #{job['last_id']}" if status else "never"
        fails = job["consecutive_failures"]
        table.add_row(job["job"], last, ago(job["last_started"]), seconds(job["last_seconds"]),
                      ts(job["next_run"]).removesuffix(" UTC") if job["next_run"] else "off",
                      f"[red]{fails}[/red]" if fails else "0")
    return table


def runs_table(rows: list[dict]) -> Table:
    table = new_table("runs, newest first (times UTC)")
    for col in ("id", "job", "status", "trigger", "started", "took", "steps"):
        table.add_column(col, no_wrap=col != "steps", justify="right" if col in ("id", "took")
                         else "left")
    for row in rows:
        colour = STATUS_COLOUR.get(row["status"], "white")
        steps = row["steps"] or []
        failed = sum(1 for s in steps if s["status"] == "failed")
        summary = f"{len(steps)} ({failed} failed)" if failed else str(len(steps))
        table.add_row(str(row["id"]), row["job"], f"[{colour}]{row['status']}[/{colour}]",
                      row["trigger"], ts(row["started_at"]).removesuffix(" UTC"),
                      seconds(row["seconds"]), summary)
    return table


def failed_run(row: dict) -> str:
    """A failed run's errors, step by step: the lines the on-call engineer reads first."""
    failed = [s for s in row["steps"] or [] if s["status"] == "failed"]
    head = f"[red]run {row['id']} {row['job']} {row['status']}[/red] on {row['host']} " \
           f"pid {row['pid']}"
    lines = [head if failed else f"{head}: {row['error'] or ''}"]
    # a step is tried again only on transient errors, whose text says how many times
    lines += [f"  {s['name']}: {s['error']}" for s in failed]
    return "\n".join(lines)


def rows_table(columns: list[str], rows: list[dict]) -> Table:
    table = new_table()
    for name in columns:
        table.add_column(name, justify="left" if name in ("hour", "day", "week") else "right")
    for row in rows:
        table.add_row(*("" if row[c] is None else ts(row[c]) if isinstance(row[c], datetime)
                        else f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c])
                        for c in columns))
    return table


def tokens_table(rows: list[dict]) -> Table:
    """`aggjobs token list`: every token, never its secret. A name is never cut (tokens are
    revoked and rotated by name): on a narrow terminal it folds onto more lines."""
    table = new_table("tokens (times UTC)")
    table.add_column("name", overflow="fold", ratio=1)
    for col in ("role", "created", "by", "expires", "revoked", "last used"):
        table.add_column(col, overflow="fold")

    for row in rows:
        table.add_row(row["name"], row["role"], utc(row["created_at"]), row["created_by"],
                      utc(row["expires_at"]) if row["expires_at"] else "never",
                      utc(row["revoked_at"]), utc(row["last_used_at"]))
    return table


def utc(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return value.astimezone(UTC).strftime(fmt) if value else "-"


def audit_table(rows: list[dict]) -> Table:
    """`aggjobs audit`: the audit log's entries, times in UTC; the parameters as compact JSON
    in the room the other columns leave."""
    table = new_table("audit log, newest first (times UTC)")
    params = [compact_json(row["params"]) for row in rows]
    for col in ("at", "actor", "action", "target", "outcome", "source"):
        table.add_column(col, no_wrap=col in ("at", "action"), overflow="fold")
    table.add_column("params", overflow="fold",
                     ratio=1)
    for row, text in zip(rows, params, strict=True):
        table.add_row(utc(row["at"], "%Y-%m-%d %H:%M:%S"), row["actor"], row["action"],
                      row["target"] or "-", row["outcome"], row["source"] or "-", text)
    return table


def compact_json(value: object) -> str:
    """`{"role":"viewer","db_user":"postgres"}`: no spaces, nulls left out."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}
    return json.dumps(value, separators=(",", ":"), default=str)


def to_json(value: object) -> str:
    """JSON for scripts: times in ISO 8601, decimals as numbers."""

    def default(obj: object) -> object:
        if isinstance(obj, datetime | date):
            return obj.isoformat()
        if isinstance(obj, Decimal):
            return float(obj)
        return str(obj)

    return json.dumps(value, indent=2, default=default)


def migrate_lines(done: Migrated, *, planned: bool) -> list[str]:
    """The migrations and, per rollup, what changed (or, planned, what would)."""
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in done.applied) or "none (up to date)"
    lines = [("migrations to apply: " if planned else "migrations applied: ") + names]
    lines += [p.line() for p in done.plan.rollups]
    if done.dropped:
        lines.append("retired tables dropped: " + ", ".join(done.dropped))
    if planned:
        lines.append("nothing changed (--plan)" if done.plan.changes_anything or done.applied
                     else "nothing to change")
    return lines


def migrate_json(done: Migrated, *, planned: bool) -> dict:
    return {
        "planned": planned,
        "migrations": [f"{m.version:04d}_{m.name}" for m in done.applied],
        "rollups": [p.as_json() for p in done.plan.rollups],
        "retired_tables_dropped": done.dropped,
    }
