"""The dashboard at `/`: one self-contained, server-rendered HTML page (docs/api.md).

`gather()` reads everything the page shows in one pass over the database; `render()` is a
pure function of that dict filling the template dashboard.html (string.Template). Every value
put into the page goes through `esc()`: error texts come from the database. Charts are inline
SVG drawn here; the page's small script only refreshes the content every 15 s and carries a
`?token=` from the address into the page's links.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import cache
from html import escape
from importlib.resources import files
from string import Template

import psycopg
from psycopg.rows import dict_row

from ..catalog.jobs import JOB_SPECS as JOBS
from ..db.connect import scalar
from ..monitor import overview, run_history
from ..settings import Settings
from ..sql import query

RUNS_CHARTED = 40
FAILURES_SHOWN = 10
BAD = ("failed", "abandoned")


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


# -- reading -------------------------------------------------------------------------------------
def progress(row: dict) -> float:
    """The fraction of a backfill's range done: 1.0 once it succeeded."""
    if row["status"] == "succeeded":
        return 1.0
    total = (row["range_end"] - row["range_start"]).total_seconds()
    done = (row["done_until"] - row["range_start"]).total_seconds()
    return round(min(1.0, max(0.0, done / total)), 4) if total > 0 else 0.0


def backfills(conn: psycopg.Connection, status: str | None = None, limit: int = 100
              ) -> list[dict]:
    """aggjobs.backfills rows, running first then newest, each with its progress fraction."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            query("list_backfills"),
            {"status": status, "limit": limit}).fetchall()
    return [{**row, "progress": progress(row)} for row in rows]


def latest_report_day(conn: psycopg.Connection) -> date | None:
    """The latest day with a stored platform report (analytics.daily_reports)."""
    return scalar(conn, query("latest_report_day"))


def failures(history: list[dict], limit: int = FAILURES_SHOWN) -> list[dict]:
    """The newest failed or abandoned runs, each with its failed steps' errors."""
    found = []
    for run in history:
        if run["status"] not in BAD:
            continue
        steps = [{"name": s.get("name"), "error": s.get("error")}
                 for s in run.get("steps") or [] if s.get("status") == "failed"]
        found.append({**run, "failed_steps": steps})
        if len(found) == limit:
            break
    return found


def gather(conn: psycopg.Connection, settings: Settings, now: datetime | None = None) -> dict:
    state = overview(conn, settings, now)
    runs = {job: run_history(conn, job=job, limit=RUNS_CHARTED) for job in JOBS}
    for row in state["rollups"]:
        row["target_seconds"] = settings.freshness_target(row["grain"])
    return {**state, "runs": runs, "failures": failures(run_history(conn, limit=500)),
            "backfills": backfills(conn, status="running"),
            "report_day": latest_report_day(conn)}


# -- formatting ----------------------------------------------------------------------------------
def when(ts: datetime | None, now: datetime) -> str:
    """`2026-03-10 04:05 UTC (12 min ago)`, escaped."""
    if ts is None:
        return "–"
    delta = (now - ts).total_seconds()
    rel = f"{ago(abs(delta))} {'ago' if delta >= 0 else 'from now'}"
    return (f'<time datetime="{esc(ts.astimezone(UTC).isoformat())}">'
            f'{esc(ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))}</time> '
            f'<span class="rel">({esc(rel)})</span>')


def ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 120 else ago(seconds)


def status_badge(status: str | None) -> str:
    return f'<span class="badge {esc(status or "none")}">{esc(status or "never run")}</span>'


# -- sections ------------------------------------------------------------------------------------
def jobs_table(state: dict, now: datetime) -> str:
    rows = []
    for j in state["jobs"]:
        fails = j["consecutive_failures"] or 0
        rows.append(
            f'<tr class="job {esc(j["last_status"] or "none")}" data-job="{esc(j["job"])}">'
            f'<td class="name">{esc(j["job"])}<div class="sub">{esc(j.get("schedule"))}</div></td>'
            f'<td>{status_badge(j["last_status"])}</td>'
            f'<td>{when(j["last_started"], now)}</td>'
            f'<td class="num">{esc(duration(j["last_seconds"]))}</td>'
            f'<td>{when(j["next_run"], now)}</td>'
            f'<td class="num{" bad" if fails else ""}">{esc(fails)}</td>'
            f'<td class="err">{esc(j["last_error"]) if j["last_error"] else ""}</td></tr>')
    return "".join(rows)


def chart(job: str, runs: list[dict]) -> str:
    """Run durations (bars, coloured by status) and failures (red bars with a cross) of the
    job's latest runs, oldest left."""
    runs = [r for r in reversed(runs) if r["status"] != "skipped" or r["seconds"] is not None]
    width, height, left, bottom, top = 360, 110, 34, 16, 8
    head = (f'<svg class="chart" id="chart-{esc(job)}" data-job="{esc(job)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
            f'<title>{esc(job)}: run durations and failures</title>')
    if not runs:
        return head + (f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                       'class="empty">no runs yet</text></svg>')
    peak = max(float(r["seconds"] or 0.0) for r in runs) or 1.0
    plot_w, plot_h = width - left - 4, height - top - bottom
    step = plot_w / max(len(runs), 12)
    parts = [head,
             (f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 4}" '
              f'y2="{top + plot_h}"/>'),
             (f'<text class="tick" x="{left - 3}" y="{top + 8}" text-anchor="end">'
              f'{esc(duration(peak))}</text>'),
             f'<text class="tick" x="{left - 3}" y="{top + plot_h}" text-anchor="end">0</text>']
    for i, r in enumerate(runs):
        secs = float(r["seconds"] or 0.0)
        h = max(2.0, plot_h * secs / peak)
        x = left + i * step + step * 0.15
        w = step * 0.7
        label = (f'run {r["id"]} {r["status"]} at '
                 f'{r["started_at"].astimezone(UTC):%Y-%m-%d %H:%M} UTC, {duration(secs)}')
        if r["status"] in BAD and r.get("error"):
            label += f": {r['error'][:200]}"
        parts.append(
            f'<rect class="run {esc(r["status"])}" data-status="{esc(r["status"])}" '
            f'x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{w:.1f}" height="{h:.1f}">'
            f'<title>{esc(label)}</title></rect>')
        if r["status"] in BAD:
            cx, cy = x + w / 2, top + plot_h + 8
            parts.append(f'<path class="fail-mark" d="M{cx - 3:.1f} {cy - 3:.1f}l6 6m0 -6l-6 6"/>')
    parts.append("</svg>")
    return "".join(parts)


def charts(state: dict) -> str:
    return "".join(
        f'<figure class="card"><figcaption>{esc(job)}</figcaption>{chart(job, runs)}</figure>'
        for job, runs in state["runs"].items())


def freshness_class(lag: float | None, target: float) -> str:
    if lag is None:
        return "unknown"
    return "stale" if lag > target else "late" if lag > target / 2 else "fresh"


def freshness_rows(state: dict, now: datetime) -> str:
    rows = []
    for r in state["rollups"]:
        lag, target = r["lag_seconds"], r["target_seconds"]
        cls = freshness_class(lag, target)
        ratio = 1.0 if lag is None else min(1.0, lag / (2 * target)) if target else 1.0
        rows.append(
            f'<tr class="fresh-row {cls}" data-table="{esc(r["table"])}">'
            f'<td>{esc(r["rollup"])}</td><td>{esc(r["grain"])}</td>'
            f'<td>{when(r["watermark"], now) if r["watermark"] else "never"}</td>'
            f'<td class="num">{esc("–" if lag is None else ago(lag))}</td>'
            f'<td class="num">{esc(ago(target))}</td>'
            f'<td><span class="badge {cls}">{cls}</span>'
            f'<span class="meter"><span style="width:{ratio * 100:.0f}%"></span></span></td>'
            f'<td class="num">{esc(r["pending_groups"])}</td>'
            f'<td class="num{" bad" if r["quarantined_buckets"] else ""}">'
            f'{esc(r["quarantined_buckets"])}</td></tr>')
    return "".join(rows)


def failure_items(state: dict, now: datetime) -> str:
    if not state["failures"]:
        return '<p class="none">No failed or abandoned runs in the recent history.</p>'
    items = []
    for f in state["failures"]:
        steps = "".join(f'<li><b>{esc(s["name"])}</b>: <pre>{esc(s["error"])}</pre></li>'
                        for s in f["failed_steps"])
        items.append(
            f'<li class="failure {esc(f["status"])}" data-run="{esc(f["id"])}">'
            f'{status_badge(f["status"])} <b>{esc(f["job"])}</b> run {esc(f["id"])}, '
            f'{when(f["started_at"], now)} ({esc(f["trigger"])}, {esc(f["who"])})'
            f'<pre class="error">{esc(f["error"] or "(no error recorded)")}</pre>'
            f'{f"<ul class=steps>{steps}</ul>" if steps else ""}</li>')
    return f'<ul class="failures">{"".join(items)}</ul>'


def backfill_rows(state: dict, now: datetime) -> str:
    if not state["backfills"]:
        return '<p class="none">No backfill running.</p>'
    rows = "".join(
        f'<tr class="backfill" data-id="{esc(b["id"])}"><td>{esc(b["rollup"])}</td>'
        f'<td>{esc(b["grain"])}</td>'
        f'<td>{esc(b["range_start"].astimezone(UTC).strftime("%Y-%m-%d %H:%M"))} → '
        f'{esc(b["range_end"].astimezone(UTC).strftime("%Y-%m-%d %H:%M"))} UTC</td>'
        f'<td><progress max="1" value="{b["progress"]:.4f}"></progress> '
        f'<span class="pct">{b["progress"] * 100:.0f}%</span></td>'
        f'<td>{when(b["started_at"], now)}</td></tr>'
        for b in state["backfills"])
    return ('<table><tr><th>rollup</th><th>grain</th><th>range</th><th>progress</th>'
            f'<th>started</th></tr>{rows}</table>')


def liveness_rows(state: dict, now: datetime) -> str:
    """Each worker and scheduler seen, with the age of its last heartbeat (docs/jobs.md,
    "Liveness"); their absence is also among the problems."""
    live = state["liveness"]
    processes = live["workers"] + live["schedulers"]
    if not processes:
        return '<p class="none">No worker nor scheduler has ever sent a heartbeat.</p>'
    badge = {"up": "succeeded", "stopped": "skipped", "silent": "failed"}
    rows = "".join(
        f'<tr class="process {esc(p["state"])}" data-kind="{esc(p["kind"])}" '
        f'data-name="{esc(p["name"])}"><td>{esc(p["kind"])}</td><td>{esc(p["name"])}</td>'
        f'<td><span class="badge {badge[p["state"]]}">{esc(p["state"])}</span></td>'
        f'<td class="num age">{esc(ago(p["age_seconds"]))} ago</td>'
        f'<td>{when(p["started_at"], now)}</td><td class="num">{esc(p["pid"])}</td>'
        f'<td>{esc(", ".join(p["queues"]) or "–")}</td><td>{esc(p["version"])}</td></tr>'
        for p in processes)
    return ('<table id="processes"><tr><th>kind</th><th>name</th><th>state</th>'
            '<th>last heartbeat</th><th>started</th><th>pid</th><th>queues</th>'
            f'<th>version</th></tr>{rows}</table>')


def rebuild_rows(state: dict) -> str:
    """The changed rollups being rebuilt beside their live version (docs/rollups.md)."""
    if not state["rebuilds"]:
        return '<p class="none">None: every rollup is live under its declared definition.</p>'
    rows = "".join(
        f'<tr><td>{esc(r["rollup"])}</td><td>v{esc(r["version"])} (v{esc(r["live_version"])}'
        f' live until the swap)</td><td><span class="pct">{r["progress"] * 100:.0f}%</span>'
        f'</td><td>{esc(r["check_error"] or "")}</td></tr>' for r in state["rebuilds"])
    return ('<table id="rebuilds"><tr><th>rollup</th><th>version</th><th>rebuilt</th>'
            f'<th>check</th></tr>{rows}</table>')


def problem_items(state: dict) -> str:
    if not state["problems"]:
        return '<p class="none">None: every job and rollup is within its limits.</p>'
    return ('<ul id="problems">'
            + "".join(f"<li>{esc(p)}</li>" for p in state["problems"]) + "</ul>")


def report_link(state: dict) -> str:
    day = state["report_day"]
    if day is None:
        return '<span class="none">no daily report stored yet</span>'
    return (f'<a id="report-link" data-auth href="/reports/{esc(day.isoformat())}">'
            f'daily report {esc(day.isoformat())}</a>')


@cache
def template() -> Template:
    return Template(files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8"))


def render(state: dict) -> str:
    now = state["checked_at"]
    verdict = "healthy" if state["healthy"] else "unhealthy"
    return template().substitute(
        verdict=verdict,
        checked_at=esc(now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        problems=problem_items(state),
        jobs=jobs_table(state, now),
        liveness=liveness_rows(state, now),
        charts=charts(state),
        freshness=freshness_rows(state, now),
        failures=failure_items(state, now),
        backfills=backfill_rows(state, now),
        rebuilds=rebuild_rows(state),
        report=report_link(state),
    )
