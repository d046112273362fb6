"""A run's page, `/runs/{id}` (docs/api.md): what ran, for whom, where, each step's timing,
rows and error, and the audit rows naming it; a "retry" button for an operator's or an
admin's token when the run failed or was abandoned. Server-rendered like the dashboard
(dashboard.py: the same escaping, style and script), from `monitor.run_detail`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from .dashboard import duration, esc, page, retry_button, run_link, status_badge, when

TIMELINE = {"width": 640, "row": 18, "left": 190, "right": 60, "top": 4, "axis": 22}


def facts(run: dict, now: datetime) -> str:
    """The run's facts as a definition list."""
    worker = f"{run['host']} (pid {run['pid']})"
    items = [
        ("job", esc(run["job"])), ("status", status_badge(run["status"])),
        ("trigger", esc(run["trigger"])), ("asked by", esc(run["who"])),
        ("as of", when(run["as_of"], now)),
        ("scheduled slot", when(run["slot"], now) if run["slot"] else "–"),
        ("started", when(run["started_at"], now)),
        ("finished", when(run["finished_at"], now)),
        ("duration", esc(duration(run["seconds"]))), ("attempt", esc(run["attempt"])),
        ("worker", esc(worker)), ("Celery task", esc(run["task_id"] or "– (not a task)")),
        ("database session", esc(run["backend_pid"] or "–")),
    ]
    return ('<dl class="facts" id="facts">'
            + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")


def compact(value: object) -> str:
    """JSON on one line, escaped, for a step's detail or an audit row's parameters."""
    return esc(json.dumps(value, separators=(",", ":"), sort_keys=True, default=str))


def step_rows(run: dict) -> str:
    steps = run["steps"] or []
    if not steps:
        return '<p class="none">No step recorded (the run was skipped, or died first).</p>'
    rows = "".join(
        f'<tr class="step {esc(s.get("status"))}" data-step="{esc(s.get("name"))}">'
        f'<td>{esc(s.get("name"))}</td><td>{status_badge(s.get("status"))}</td>'
        f'<td title="{esc(s.get("started_at"))}">{esc(since_start(s, run))}</td>'
        f'<td class="num">{esc(duration(s.get("seconds")))}</td>'
        f'<td class="num">{esc(s.get("rows"))}</td><td class="num">{esc(s.get("attempts"))}</td>'
        f'<td><code class="params">{compact(s.get("detail") or {})}</code></td>'
        f'<td>{error_block(s.get("error"))}</td></tr>'
        for s in steps)
    return ('<table id="steps"><tr><th>step</th><th>status</th><th>began</th>'
            '<th>duration</th><th>rows</th><th>attempts</th><th>detail</th><th>error</th>'
            f'</tr>{rows}</table>')


def error_block(error: object) -> str:
    return f"<pre>{esc(error)}</pre>" if error else ""


def since_start(step: dict, run: dict) -> str:
    """When a step began, from the run's start (its timestamp in the cell's title)."""
    if not step.get("started_at"):
        return "–"
    return f"+{offset(step, run['started_at']):.3f} s"


def offset(step: dict, start: datetime) -> float:
    """Seconds from the run's start to the step's (0 when not recorded)."""
    began = step.get("started_at")
    if not began:
        return 0.0
    moment = datetime.fromisoformat(str(began))
    return max(0.0, (moment - start).total_seconds())


def timeline(run: dict) -> str:
    """The steps as bars on the run's own time axis (seconds from its start): which ran
    side by side, which took the time. Each bar's values on hover."""
    steps = run["steps"] or []
    if not steps:
        return ""
    t = TIMELINE
    spans = [(s, offset(s, run["started_at"]), float(s.get("seconds") or 0.0)) for s in steps]
    total = max([a + d for _, a, d in spans] + [float(run["seconds"] or 0.0), 0.001])
    plot_w = t["width"] - t["left"] - t["right"]
    height = t["top"] + len(spans) * t["row"] + t["axis"]
    parts = [f'<svg class="timeline" id="timeline" viewBox="0 0 {t["width"]} {height}" '
             f'width="{t["width"]}" height="{height}" role="img"><title>steps of run '
             f'{esc(run["id"])} on its time axis</title>']
    for i, (s, at, secs) in enumerate(spans):
        y = t["top"] + i * t["row"]
        x, w = t["left"] + plot_w * at / total, max(2.0, plot_w * secs / total)
        parts.append(
            f'<text x="{t["left"] - 6}" y="{y + 12}" text-anchor="end">{esc(s.get("name"))}'
            f'</text><rect class="step {esc(s.get("status"))}" x="{x:.1f}" y="{y + 2}" '
            f'width="{w:.1f}" height="{t["row"] - 5}"><title>{esc(s.get("name"))}: '
            f'{esc(s.get("status"))}, starts at +{at:.2f} s, {esc(duration(secs))}, '
            f'{esc(s.get("rows"))} rows</title></rect>')
    axis_y = t["top"] + len(spans) * t["row"] + 4
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = t["left"] + plot_w * frac
        parts.append(f'<text class="tick" x="{x:.1f}" y="{axis_y + 10}" text-anchor="middle">'
                     f'+{esc(duration(total * frac))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def audit_rows(run: dict, now: datetime) -> str:
    rows = run.get("audit") or []
    if not rows:
        return '<p class="none">No audit row names this run (scheduled runs have none).</p>'
    body = "".join(
        f'<tr><td>{when(a["at"], now)}</td><td>{esc(a["actor"])}</td>'
        f'<td>{esc(a["action"])}</td><td>{esc(a["outcome"])}</td><td>{esc(a["source"])}</td>'
        f'<td><code class="params">{compact(a["params"])}</code> {retry_link(run, a)}</td></tr>'
        for a in rows)
    return ('<table id="audit"><tr><th>at</th><th>actor</th><th>action</th><th>outcome</th>'
            f'<th>source</th><th>parameters</th></tr>{body}</table>')


def retry_link(run: dict, row: dict) -> str:
    """In a `retry` row: a link to the other run (the retry, or the run it retried)."""
    params = row["params"] or {}
    if row["action"] != "retry":
        return ""
    other = params.get("run") if params.get("retry_of") == run["id"] else params.get("retry_of")
    return run_link(other, f"→ run {other}") if other else ""


def render_run(run: dict, role: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    state = {"role": role}
    return page(
        "run.html",
        run_id=esc(run["id"]), job=esc(run["job"]), status=esc(run["status"]),
        badge=status_badge(run["status"]),
        live=" data-live" if run["status"] == "running" else "",  # refreshed every 3 s
        checked_at=esc(now.strftime("%Y-%m-%d %H:%M:%S UTC")),
        facts=facts(run, now),
        actions=f'<p id="actions">{retry_button(state, run)}</p>',
        error=f'<pre class="error">{esc(run["error"])}</pre>' if run["error"] else "",
        timeline=timeline(run), steps=step_rows(run), audit=audit_rows(run, now),
    )
