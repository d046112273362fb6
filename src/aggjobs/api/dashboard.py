"""The dashboard at `/`: one self-contained, server-rendered HTML page (docs/api.md).

`gather()` reads everything the page shows in one pass over the database; `render()` is a
pure function of that dict filling the template dashboard.html (string.Template). Every value
put into the page goes through `esc()`: error texts come from the database. Charts are inline
SVG drawn here, with their times and values on hover (`<title>`); every run shown links to its
page (run_page.py). The style (dashboard.css) and the small script (dashboard.js) are inlined:
the page loads nothing from elsewhere. The script refreshes the content, carries a `?token=`
from the address into the page's links, and sends the actions (run now, retry, backfill,
cancel: drawn only for an operator's or an admin's token) to the API with the same token.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import cache
from html import escape
from importlib.resources import files
from string import Template

import psycopg
from psycopg.rows import dict_row

from ..catalog import rollups as declared_rollups
from ..catalog.jobs import JOB_SPECS as JOBS
from ..db.connect import scalar
from ..monitor import overview, run_history
from ..settings import Settings
from ..sql import query

RUNS_CHARTED = 40
FAILURES_SHOWN = 10
BAD = ("failed", "abandoned")
BACKFILLS_SHOWN = 20  # the newest; queued and running ones first
UNDER_WAY = ("queued", "running")  # a backfill that can still be cancelled
CLEANUP_JOB = "cleanup_old_data"  # deletes data: only an admin's page offers to run it
# The freshness table's "computed by" column: engine.status.compute_path's values.
PATH_LABELS = {"native": "C functions", "portable": "portable SQL",
               "sql": "SQL, no quantile or distinct count"}


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
    """aggjobs.backfills rows, running first, then queued, then newest, each with its
    progress fraction."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            query("list_backfills"),
            {"status": status, "limit": limit}).fetchall()
    return [{**row, "progress": progress(row)} for row in rows]


def backfill(conn: psycopg.Connection, backfill_id: int) -> dict | None:
    """One aggjobs.backfills row with its progress fraction; None if there is none."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("backfill_row"), {"id": backfill_id}).fetchone()
    return None if row is None else {**row, "progress": progress(row)}


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


def gather(conn: psycopg.Connection, settings: Settings, now: datetime | None = None,
           role: str = "viewer") -> dict:
    """Everything the page shows; `role`: the token's, which decides the actions drawn."""
    state = overview(conn, settings, now).as_dict()
    runs = {job: run_history(conn, job=job, limit=RUNS_CHARTED) for job in JOBS}
    for row in state["rollups"]:
        row["target_seconds"] = settings.freshness_target(row["grain"])
    return {**state, "runs": runs, "failures": failures(run_history(conn, limit=500)),
            "backfills": backfills(conn, limit=BACKFILLS_SHOWN),
            "report_day": latest_report_day(conn), "role": role,
            "rollup_names": [r.name for r in declared_rollups()]}


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


def run_link(run_id: object, text: str | None = None) -> str:
    """A link to a run's page (`/runs/{id}`); the script adds the page's token."""
    return (f'<a class="run-link" data-auth href="/runs/{esc(run_id)}">'
            f'{esc(text or f"run {run_id}")}</a>')


def may_act(state: dict, job: str | None = None) -> bool:
    """Whether the page's token may trigger: an operator's or an admin's; retention (the
    cleanup job) needs an admin's."""
    role = state.get("role", "viewer")
    if job == CLEANUP_JOB:
        return role == "admin"
    return role in ("operator", "admin")


def action_button(url: str, label: str, question: str, *, danger: bool = False) -> str:
    """A button the script POSTs to `url` after asking `question` (dashboard.js)."""
    return (f'<button type="button" class="action{" danger" if danger else ""}" '
            f'data-url="{esc(url)}" data-confirm="{esc(question)}">{esc(label)}</button>')


def run_now_button(state: dict, job: str) -> str:
    if not may_act(state, job):
        return ""
    return action_button(f"/api/jobs/{job}/run", "run now",
                         f"Run {job} now (as of now)?", danger=job == CLEANUP_JOB)


def retry_button(state: dict, run: dict) -> str:
    if run["status"] not in BAD or not may_act(state, run["job"]):
        return ""
    as_of = run["as_of"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return action_button(f"/api/runs/{run['id']}/retry", "retry",
                         f"Run {run['job']} again for run {run['id']}'s reference time "
                         f"{as_of}?")


# -- sections ------------------------------------------------------------------------------------
def jobs_table(state: dict, now: datetime) -> str:
    rows = []
    for j in state["jobs"]:
        fails = j["consecutive_failures"] or 0
        last = run_link(j["last_id"]) if j.get("last_id") else ""
        rows.append(
            f'<tr class="job {esc(j["last_status"] or "none")}" data-job="{esc(j["job"])}"'
            f'{" data-live" if j.get("running") else ""}>'
            f'<td class="name">{esc(j["job"])}<div class="sub">{esc(j.get("schedule"))}</div></td>'
            f'<td>{status_badge(j["last_status"])} {last}</td>'
            f'<td>{when(j["last_started"], now)}</td>'
            f'<td class="num">{esc(duration(j["last_seconds"]))}</td>'
            f'<td>{when(j["next_run"], now)}</td>'
            f'<td class="num{" bad" if fails else ""}">{esc(fails)}</td>'
            f'<td class="err">{esc(j["last_error"]) if j["last_error"] else ""}</td>'
            f'{"<td>" + run_now_button(state, j["job"]) + "</td>" if may_act(state) else ""}'
            '</tr>')
    return "".join(rows)


def jobs_header(state: dict) -> str:
    return ("<tr><th>job</th><th>last run</th><th>started</th><th>duration</th>"
            "<th>next run</th><th>failures in a row</th><th>last error</th>"
            f'{"<th>action</th>" if may_act(state) else ""}</tr>')


TICK_ROOM_PX = 64  # between two labelled ticks: a "03-10 04:05" label is ~55 px wide
CHART = {"width": 360, "height": 124, "left": 38, "right": 6, "bottom": 28, "top": 8}


def time_label(ts: datetime, runs: list[dict]) -> str:
    """A tick's label: the time of day, with the date when the runs span several days."""
    first, last = runs[0]["started_at"], runs[-1]["started_at"]
    fmt = "%H:%M" if first.astimezone(UTC).date() == last.astimezone(UTC).date() else "%m-%d %H:%M"
    return ts.astimezone(UTC).strftime(fmt)


def time_ticks(runs: list[dict], x_of: list[float], bottom: float) -> list[str]:
    """Ticks under the bars, each labelled with its run's start (UTC): the first run's,
    then every run far enough right of the last labelled one to leave room for its label,
    and never the same label twice."""
    parts, last_x, last_label = [], float("-inf"), None
    for i, r in enumerate(runs):
        label = time_label(r["started_at"], runs)
        if x_of[i] - last_x < TICK_ROOM_PX or label == last_label:
            continue
        last_x, last_label = x_of[i], label
        parts.append(
            f'<line class="axis" x1="{x_of[i]:.1f}" y1="{bottom}" x2="{x_of[i]:.1f}" '
            f'y2="{bottom + 3}"/><text class="tick time" x="{x_of[i]:.1f}" y="{bottom + 18}" '
            f'text-anchor="middle">{esc(label)}</text>')
    return parts


def value_ticks(peak: float, top: float, plot_h: float, left: float, right: float) -> list[str]:
    """Durations on the left: 0, half and the peak, with a light grid line each."""
    parts = []
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 3}" y="{y + 3:.1f}" text-anchor="end">'
            f'{esc(duration(peak * frac) if frac else "0")}</text>')
    return parts


def bar(r: dict, x: float, w: float, top: float, plot_h: float, peak: float) -> str:
    """One run: a bar as tall as its duration, linked to its page, its values on hover."""
    secs = float(r["seconds"] or 0.0)
    h = max(2.0, plot_h * secs / peak)
    label = (f'run {r["id"]} {r["status"]} ({r["trigger"]}) at '
             f'{r["started_at"].astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, {duration(secs)}')
    if r["status"] in BAD and r.get("error"):
        label += f": {r['error'][:200]}"
    mark = ""
    if r["status"] in BAD:
        cx, cy = x + w / 2, top + plot_h + 6
        mark = f'<path class="fail-mark" d="M{cx - 3:.1f} {cy - 3:.1f}l6 6m0 -6l-6 6"/>'
    return (f'<a data-auth href="/runs/{esc(r["id"])}">'
            f'<rect class="run {esc(r["status"])}" data-status="{esc(r["status"])}" '
            f'data-run="{esc(r["id"])}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{w:.1f}" height="{h:.1f}"><title>{esc(label)}</title></rect>{mark}</a>')


def chart(job: str, runs: list[dict]) -> str:
    """Run durations (bars, coloured by status, failures marked with a cross) of the job's
    latest runs, oldest left, one bar per run: the time axis gives the start (UTC) of the
    runs above its ticks, the value axis their duration; hovering a bar gives its run's
    id, status, trigger, start, duration and error; clicking it opens the run's page."""
    runs = [r for r in reversed(runs) if r["status"] != "skipped" or r["seconds"] is not None]
    c = CHART
    width, height, left, top = c["width"], c["height"], c["left"], c["top"]
    head = (f'<svg class="chart" id="chart-{esc(job)}" data-job="{esc(job)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
            f'<title>{esc(job)}: run durations and failures</title>')
    if not runs:
        return head + (f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                       'class="empty">no runs yet</text></svg>')
    peak = max(float(r["seconds"] or 0.0) for r in runs) or 1.0
    plot_w, plot_h = width - left - c["right"], height - top - c["bottom"]
    step = plot_w / max(len(runs), 12)
    x_of = [left + i * step + step / 2 for i in range(len(runs))]
    bottom = top + plot_h
    parts = [head, *value_ticks(peak, top, plot_h, left, width - c["right"]),
             f'<line class="axis" x1="{left}" y1="{bottom}" x2="{width - c["right"]}" '
             f'y2="{bottom}"/>', *time_ticks(runs, x_of, bottom)]
    parts += [bar(r, x_of[i] - step * 0.35, step * 0.7, top, plot_h, peak)
              for i, r in enumerate(runs)]
    parts.append(f'<text class="tick" x="{width - c["right"]}" y="{height - 1}" '
                 'text-anchor="end">run start (UTC)</text></svg>')
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
            f'{esc(r["quarantined_buckets"])}</td>'
            f'<td>{esc(PATH_LABELS.get(r["path"], r["path"]))}</td></tr>')
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
            f'{status_badge(f["status"])} <b>{esc(f["job"])}</b> {run_link(f["id"])}, '
            f'{when(f["started_at"], now)} ({esc(f["trigger"])}, {esc(f["who"])}) '
            f'{retry_button(state, f)}'
            f'<pre class="error">{esc(f["error"] or "(no error recorded)")}</pre>'
            f'{f"<ul class=steps>{steps}</ul>" if steps else ""}</li>')
    return f'<ul class="failures">{"".join(items)}</ul>'


def backfill_row(state: dict, b: dict, now: datetime) -> str:
    live = b["status"] in UNDER_WAY
    cancel = (action_button(f"/api/backfills/{b['id']}/cancel", "cancel",
                            f"Cancel backfill {b['id']} of {b['rollup']}? What it recomputed "
                            "stays; it stops after its current chunk.", danger=True)
              if live and may_act(state) and not b.get("cancel_requested") else "")
    status = b["status"] + (" (cancelling)" if live and b.get("cancel_requested") else "")
    return (
        f'<tr class="backfill {esc(b["status"])}" data-id="{esc(b["id"])}"'
        f'{" data-live" if live else ""}><td class="num">{esc(b["id"])}</td>'
        f'<td>{esc(b["rollup"])}</td><td>{esc(b["grain"])}</td>'
        f'<td>{esc(b["range_start"].astimezone(UTC).strftime("%Y-%m-%d %H:%M"))} → '
        f'{esc(b["range_end"].astimezone(UTC).strftime("%Y-%m-%d %H:%M"))} UTC</td>'
        f'<td><span class="badge {esc(b["status"])}">{esc(status)}</span></td>'
        f'<td><progress max="1" value="{b["progress"]:.4f}"></progress> '
        f'<span class="pct">{b["progress"] * 100:.0f}%</span></td>'
        f'<td>{when(b["started_at"], now)}</td><td>{when(b["finished_at"], now)}</td>'
        f'<td>{esc(b.get("requested_by") or "")}</td>'
        f'<td class="err">{esc(b["error"] or "")}</td><td>{cancel}</td></tr>')


def backfill_rows(state: dict, now: datetime) -> str:
    """The newest backfills, queued and running ones first: progress, outcome, cancel."""
    if not state["backfills"]:
        return '<p class="none">No backfill yet.</p>'
    rows = "".join(backfill_row(state, b, now) for b in state["backfills"])
    return ('<table id="backfills"><tr><th>id</th><th>rollup</th><th>grain</th><th>range</th>'
            '<th>status</th><th>progress</th><th>started</th><th>finished</th>'
            f'<th>requested by</th><th>error</th><th></th></tr>{rows}</table>')


def backfill_form(state: dict) -> str:
    """The form starting a backfill (an operator's or an admin's page only)."""
    if not may_act(state):
        return ""
    boxes = "".join(f'<label><input type="checkbox" name="rollup" value="{esc(name)}"> '
                    f'{esc(name)}</label> ' for name in state["rollup_names"])
    return ('<section id="actions-section"><h2>Start a backfill</h2>'
            '<form id="backfill-form"><fieldset><legend class="sub">rollups (none ticked: '
            f'all)</legend>{boxes}</fieldset>'
            '<label>from (UTC) <input type="datetime-local" name="from" required></label>'
            '<label>to (UTC) <input type="datetime-local" name="to" required></label>'
            '<button type="submit" class="action">start backfill</button></form>'
            '<p class="sub">Recomputes the materialized buckets of the range, every grain, '
            'as a task of a worker; progress below.</p></section>')


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
def asset(name: str) -> str:
    """A file of this package: the templates, their style and script."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def template(name: str = "dashboard.html") -> Template:
    return Template(asset(name))


def page(name: str, **values: str) -> str:
    """Template `name` filled with `values`, the shared style and script inlined."""
    return template(name).substitute(style=asset("dashboard.css"),
                                     script=asset("dashboard.js"), **values)


def render(state: dict) -> str:
    now = state["checked_at"]
    verdict = "healthy" if state["healthy"] else "unhealthy"
    return page(
        "dashboard.html",
        verdict=verdict,
        checked_at=esc(now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        problems=problem_items(state),
        jobs_header=jobs_header(state),
        jobs=jobs_table(state, now),
        liveness=liveness_rows(state, now),
        charts=charts(state),
        freshness=freshness_rows(state, now),
        failures=failure_items(state, now),
        forms=backfill_form(state),
        backfills=backfill_rows(state, now),
        rebuilds=rebuild_rows(state),
        report=report_link(state),
    )
