"""A report (the dict of build.py, fresh or read back from analytics.daily_reports) as json,
Markdown, CSV or a single self-contained HTML page. Pure functions, no I/O."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from html import escape
from typing import Any

from .build import METRICS, hour_rows
from .charts import Series, chart

FORMATS = ("md", "html", "json", "csv")
KIND = {key: kind for key, _, kind in METRICS}
NA = "–"


def render(report: dict, fmt: str) -> str:
    return {"json": to_json, "md": to_markdown, "csv": to_csv, "html": to_html}[fmt](report)


# -- formatting ---------------------------------------------------------------------------------
def fmt(value: Any, kind: str = "count") -> str:
    if value is None:
        return NA
    if kind == "rate":
        return f"{value * 100:.1f}%"
    if kind == "seconds":
        return f"{value:,.2f}"
    if kind == "credits":
        return f"{value:,.2f}"
    if kind == "pct":
        return f"{value:+.1f}%"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def change(value: Any, kind: str) -> str:
    """A signed change: counts and credits as numbers, rates in percentage points."""
    if value is None:
        return NA
    if kind == "rate":
        return f"{value * 100:+.1f} pt"
    if kind == "count":
        return f"{value:+,}"
    return f"{value:+,.2f}"


def title(report: dict) -> str:
    scope = ("platform" if report["workspace_id"] is None
             else f"workspace {report['workspace_id']}")
    return f"Daily report {report['day']} — {scope}"


def hour_label(iso: str) -> str:
    return iso[11:16]


def subtitle(report: dict) -> str:
    cw = report["compared_with"]
    return (f"UTC day {report['day']}, compared with {cw['previous_day']} (previous day) and "
            f"{cw['same_day_last_week']} (same weekday last week). Generated "
            f"{report['generated_at'][:19].replace('T', ' ')} UTC; report schema "
            f"{report['schema_version']}.")


Section = tuple[str, list[str], list[list[str]], str | None]  # heading, columns, rows, note


def sections(report: dict) -> Iterator[Section]:
    """Every table of the report, in reading order: (heading, columns, rows, note). Markdown
    and HTML both render these, so that they never disagree."""
    yield totals_section(report)
    if "top_workspaces" in report:
        yield from top_sections(report["top_workspaces"])
    if "movers" in report:
        yield from movers_sections(report["movers"])
    yield from hot_spot_sections(report["failure_hot_spots"])
    yield health_section(report)
    yield ledger_section(report)
    yield ("Hourly", ["hour (UTC)", "runs", "failed", "p95 runtime (s)", "credits by runs",
                      "credits used (ledger)"],
           [[hour_label(h["hour"]), fmt(h["runs"]), fmt(h["failed_runs"]),
             fmt(h["p95_runtime"], "seconds"), fmt(h["run_credits"], "credits"),
             fmt(h["credits_used"], "credits")] for h in hour_rows(report["hourly"])], None)


def totals_section(report: dict) -> Section:
    tot = report["totals"]
    return ("Totals", ["metric", "value", "previous day", "Δ day", "Δ day %",
                       "same day last week", "Δ week", "Δ week %"],
            [[label, fmt(t["value"], kind), fmt(t["previous_day"], kind),
              change(t["day_over_day"], kind), fmt(t["day_over_day_pct"], "pct"),
              fmt(t["same_day_last_week"], kind), change(t["week_over_week"], kind),
              fmt(t["week_over_week_pct"], "pct")]
             for key, label, kind in METRICS for t in [tot[key]]],
            None if report["compared_with"]["previous_day_has_data"]
            and report["compared_with"]["same_day_last_week_has_data"]
            else "– : the comparison day has no data.")


def top_sections(top: dict) -> Iterator[Section]:
    """The platform's top workspaces, by runs and by credits used."""
    yield ("Top workspaces by runs", ["#", "workspace", "runs", "failed", "success rate",
                                      "share"],
           [[str(i), str(r["workspace_id"]), fmt(r["runs"]), fmt(r["failed_runs"]),
             fmt(r["success_rate"], "rate"), f"{r['share_pct']:.1f}%"]
            for i, r in enumerate(top["by_runs"], 1)], None)
    yield ("Top workspaces by credits used", ["#", "workspace", "credits used (ledger)",
                                              "credits consumed by runs", "share"],
           [[str(i), str(r["workspace_id"]), fmt(r["credits_used"], "credits"),
             fmt(r["run_credits"], "credits"),
             NA if r["share_pct"] is None else f"{r['share_pct']:.1f}%"]
            for i, r in enumerate(top["by_credits"], 1)], None)


def movers_sections(movers: dict) -> Iterator[Section]:
    """The platform's biggest movers, against the previous day and the same day last week."""
    for key, what in (("vs_previous_day", "previous day"),
                      ("vs_same_day_last_week", "same weekday last week")):
        m = movers[key]
        if m is None:
            yield (f"Biggest movers vs the {what}", [], [],
                   "No comparison: the platform has no data that day.")
            continue
        rows = [[direction, str(r["workspace_id"]), fmt(r["compared_runs"]), fmt(r["runs"]),
                 change(r["change"], "count"), fmt(r["change_pct"], "pct")]
                for direction in ("up", "down") for r in m[direction]]
        yield (f"Biggest movers vs the {what} ({m['compared_day']})",
               ["direction", "workspace", "runs then", "runs", "change", "change %"],
               rows, None)


def hot_spot_sections(hot: dict) -> Iterator[Section]:
    """Worst hours, workspaces (the platform's report) and agents."""
    yield ("Worst hours", ["hour (UTC)", "runs", "failed", "failure rate"],
           [[hour_label(h["hour"]), fmt(h["runs"]), fmt(h["failed_runs"]),
             fmt(h["failure_rate"], "rate")] for h in hot["worst_hours"]], None)
    if "worst_workspaces" in hot:
        yield ("Workspaces with the most failures", ["workspace", "runs", "failed",
                                                     "failure rate"],
               [[str(w["workspace_id"]), fmt(w["runs"]), fmt(w["failed_runs"]),
                 fmt(w["failure_rate"], "rate")] for w in hot["worst_workspaces"]], None)
    agents = hot["worst_agents"]
    yield ("Worst agents", ["workspace", "agent", "runs", "failed", "failure rate"],
           [[str(a["workspace_id"]), NA if a["agent_id"] is None else str(a["agent_id"]),
             fmt(a["runs"]), fmt(a["failed_runs"]), fmt(a["failure_rate"], "rate")]
            for a in agents["items"] or []],
           agents["note"])


def health_section(report: dict) -> Section:
    """The platform's: the workspaces whose health fell; a workspace's: its health."""
    health = report["health"]
    if report["workspace_id"] is None:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(health["counts"].items()))
        return ("Health: fell to at risk or critical",
                ["workspace", "status", "score", "previous status", "previous score"],
                [[str(h["workspace_id"]), h["status"], fmt(h["score"]), h["previous_status"],
                  fmt(h["previous_score"])] for h in health["fell"]],
                f"Scores of the day: {counts}." if health["scored"]
                else "No health scores for this day.")
    return ("Health", ["status", "score", "previous status", "previous score", "fell"],
            [[health["status"] or NA, fmt(health["score"]),
              health["previous_status"] or NA, fmt(health["previous_score"]),
              "yes" if health["fell"] else "no"]] if health["scored"] else [],
            None if health["scored"] else "No health score for this day.")


def ledger_section(report: dict) -> Section:
    """The platform's: the mismatched workspaces and the sums; a workspace's: its line."""
    ledger = report["ledger"]
    cols = ["workspace", "usage (ledger)", "credits consumed by runs", "difference"]
    if report["workspace_id"] is None:
        return ("Credit ledger reconciliation (mismatches)", cols,
                [[str(m["workspace_id"]), fmt(m["usage_credits"], "credits"),
                  fmt(m["run_credits"], "credits"), change(m["difference"], "credits")]
                 for m in ledger["mismatches"]],
                (f"{ledger['workspaces_checked']} workspaces checked, "
                 f"{ledger['mismatch_count']} beyond ±{ledger['tolerance']} credits; in total "
                 f"usage {fmt(ledger['usage_credits'], 'credits')} vs runs "
                 f"{fmt(ledger['run_credits'], 'credits')}."))
    return ("Credit ledger reconciliation", [*cols, "mismatch"],
            [[str(ledger["workspace_id"]), fmt(ledger["usage_credits"], "credits"),
              fmt(ledger["run_credits"], "credits"), change(ledger["difference"], "credits"),
              "YES" if ledger["mismatch"] else "no"]],
            f"A mismatch is a difference beyond ±{ledger['tolerance']} credits.")


# -- json ---------------------------------------------------------------------------------------
def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


# -- markdown -----------------------------------------------------------------------------------
def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(report: dict) -> str:
    out = [f"# {title(report)}", "", subtitle(report), ""]
    if not report["has_data"]:
        out += ["**No runs, events or credit transactions in the rollups for this day.**", ""]
    if report["workspace_id"] is None:
        out += [f"Active workspaces: {report['active_workspaces']:,}.", ""]
    for heading, cols, rows, note in sections(report):
        out += [f"## {heading}", ""]
        if rows:
            out.append("| " + " | ".join(cols) + " |")
            out.append("| " + " | ".join("---:" if i else "---" for i in range(len(cols))) + " |")
            out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif cols:
            out += ["_None._", ""]
        if note:
            out += [f"_{note}_", ""]
    return "\n".join(out)


# -- csv ----------------------------------------------------------------------------------------
def csv_rows(report: dict) -> Iterator[tuple[str, str, str, Any]]:
    """(section, key, field, value): every scalar of the report, long format.

    Top-level scalars are section `report`; a dict of dicts (totals) gives key = the inner
    dict's name; a list gives key = its 1-based position; nested dicts make dotted names."""

    def flat(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from flat(v, f"{prefix}.{k}" if prefix else k)
        elif isinstance(obj, list):
            yield prefix, json.dumps(obj)
        else:
            yield prefix, obj

    def walk(obj: dict, section: str) -> Iterator[tuple[str, str, str, Any]]:
        for k, v in obj.items():
            name = f"{section}.{k}" if section != "report" else k
            if isinstance(v, list):
                for i, item in enumerate(v, 1):
                    for field, value in flat(item):
                        yield name, str(i), field, value
            elif k == "totals":
                for key, sub in v.items():
                    for field, value in flat(sub):
                        yield name, key, field, value
            elif isinstance(v, dict):
                scalars = {a: b for a, b in v.items() if not isinstance(b, (dict, list))}
                for a, b in scalars.items():
                    yield name, a, "", b
                rest = {a: b for a, b in v.items() if isinstance(b, (dict, list))}
                yield from walk(rest, name)
            else:
                yield section, k, "", v

    # The hourly columns as one entry per hour (key: 1-24), like the report's other lists.
    yield from walk({**report, "hourly": hour_rows(report["hourly"])}, "report")


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["section", "key", "field", "value"])
    for section, key, field, value in csv_rows(report):
        writer.writerow([section, key, field,
                         "" if value is None else str(value).lower()
                         if isinstance(value, bool) else value])
    return buf.getvalue()


# -- html ---------------------------------------------------------------------------------------
CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --bg: #fff; --good: #2f855a;
        --bad: #c53030; --accent: #2b6cb0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color: var(--ink); background: var(--bg); margin: 0 auto; max-width: 980px;
       padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
     padding-bottom: 4px; }
p.sub, p.note { color: var(--muted); margin: 4px 0 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
         gap: 10px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .k { color: var(--muted); font-size: 12px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .d { font-size: 12px; color: var(--muted); }
.up { color: var(--good); } .down { color: var(--bad); }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; font-variant-numeric:
        tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { font-weight: 600; background: #f5f7fa; }
figure { margin: 12px 0 20px; } figcaption { color: var(--muted); font-size: 12px; }
svg.chart { max-width: 100%; height: auto; }
svg .grid { stroke: #eef2f6; } svg .axis { stroke: #9aa5b1; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg .chart-title { font-size: 13px; font-weight: 600; fill: var(--ink); }
svg .empty { font-size: 14px; }
.banner { background: #fff5f5; border: 1px solid #feb2b2; padding: 8px 12px; border-radius: 6px; }
@media print { body { padding: 0; } h2 { break-after: avoid; } figure, table {
  break-inside: avoid; } }
"""

CARDS = ("runs", "success_rate", "failed_runs", "p95_runtime", "credits_used", "active_users")


def card(key: str, label: str, t: dict) -> str:
    kind = KIND[key]
    deltas = []
    for field, pct_field, what in (("day_over_day", "day_over_day_pct", "vs prev. day"),
                                   ("week_over_week", "week_over_week_pct", "vs last week")):
        d = t[field]
        cls = "" if not d else ("up" if d > 0 else "down")
        if key in ("failed_runs", "p95_runtime") and cls:
            cls = "down" if cls == "up" else "up"  # more failures or latency is bad
        pct = f" ({fmt(t[pct_field], 'pct')})" if t[pct_field] is not None else ""
        deltas.append(f'<span class="{cls}">{escape(change(d, kind))}{escape(pct)}</span> '
                      f'{what}')
    return (f'<div class="card"><div class="k">{escape(label)}</div>'
            f'<div class="v">{escape(fmt(t["value"], kind))}</div>'
            f'<div class="d">{"<br>".join(deltas)}</div></div>')


def charts(report: dict) -> list[tuple[str, str]]:
    hourly = report["hourly"]
    labels = [hour_label(h) for h in hourly["hour"]]
    other = [r - s - f for r, s, f in zip(hourly["runs"], hourly["successful_runs"],
                                          hourly["failed_runs"], strict=True)]
    return [
        (chart("chart-runs", "Runs and failures per hour", labels, [
            Series("succeeded", hourly["successful_runs"], "#4c78a8"),
            Series("other (running, cancelled)", other, "#bab0ac"),
            Series("failed", hourly["failed_runs"], "#e45756"),
        ]), "Runs started in each UTC hour, stacked by outcome (execution_metrics_hourly)."),
        (chart("chart-p95", "p95 runtime per hour (seconds)", labels, [
            Series("p95 runtime", hourly["p95_runtime"], "#f58518", "line"),
        ], unit=" s"), ("95th percentile of the runtime of the runs started in each hour; "
                         "gaps: no finished run.")),
        (chart("chart-credits", "Credits per hour", labels, [
            Series("used (ledger)", hourly["credits_used"], "#54a24b"),
            Series("consumed by runs", hourly["run_credits"], "#2b6cb0", "line"),
        ]), ("Usage transactions in the credit ledger (bars) against the credits of the "
             "runs started in the hour (line).")),
    ]


def html_table(cols: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: dict) -> str:
    heading = title(report)
    parts = [f"<h1>{escape(heading)}</h1>", f'<p class="sub">{escape(subtitle(report))}</p>']
    if not report["has_data"]:
        parts.append('<p class="banner">No runs, events or credit transactions in the rollups '
                     'for this day.</p>')
    labels = {key: label for key, label, _ in METRICS}
    parts.append('<div class="cards">' + "".join(
        card(k, labels[k], report["totals"][k]) for k in CARDS) + "</div>")
    parts.append("<h2>Hourly</h2>")
    for svg, caption in charts(report):
        parts.append(f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>")
    for name, cols, rows, note in sections(report):
        if name == "Hourly":
            continue
        parts.append(f"<h2>{escape(name)}</h2>")
        if rows:
            parts.append(html_table(cols, rows))
        elif cols:
            parts.append('<p class="note">None.</p>')
        if note:
            parts.append(f'<p class="note">{escape(note)}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(heading)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
