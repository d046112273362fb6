"""Build the daily reports of a day from the rollup tables, and store them.

`build(conn, day)` returns {None: platform report, workspace_id: report, ...} for every active
workspace (any run or user event that day). A report is a JSON-ready dict (strings, numbers,
lists, dicts), the same whether it was just built or read back from analytics.daily_reports,
so that every renderer works on either. docs/reports.md describes each section.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cache
from importlib.resources import files
from typing import Any, overload

import orjson
import psycopg
from psycopg import pq, sql
from psycopg.rows import dict_row

from ..db.cluster import is_citus
from ..db.connect import scalar
from ..engine.recompute import native_installed, set_local, storage_changes
from ..errors import AggjobsError, DatabaseUnavailable
from ..sql import named, query, with_merges

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: `hourly` as columns (docs/reports.md, "The report")
LEDGER_TOLERANCE = Decimal("0.01")  # credits: a difference beyond this is a mismatch
TOP_N = 10  # top workspaces by runs / by credits
MOVERS_N = 5  # per direction
HOT_SPOTS_N = 5  # worst hours, worst workspaces; worst agents: TOP_N platform-wide
LEDGER_LISTED = 100  # mismatches listed in the platform report (all are counted)
CHUNK = 2_000  # workspace reports built and written at a time (memory: one chunk's rows)
ROLLUPS_READ = ("execution_metrics", "user_activity", "credit_consumption")
# Read by the worst agents alone, which say so while it lags (a deployment that has just
# added it catches its history up) instead of holding the whole report back.
AGENTS_ROLLUP = "agent_executions"

# (key, label, kind): the order of the totals in every format. kind drives formatting.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("runs", "Runs", "count"),
    ("successful_runs", "Successful runs", "count"),
    ("failed_runs", "Failed runs", "count"),
    ("success_rate", "Success rate", "rate"),
    ("p95_runtime", "p95 runtime (s)", "seconds"),
    ("run_credits", "Credits consumed by runs", "credits"),
    ("credits_used", "Credits used (ledger)", "credits"),
    ("credits_refunded", "Credits refunded", "credits"),
    ("credits_granted", "Credits granted", "credits"),
    ("net_credits", "Net credits", "credits"),
    ("active_users", "Active users", "count"),
    ("events", "Events", "count"),
)
HEALTH_SEVERITY = {"healthy": 0, "at_risk": 1, "critical": 2}


class ReportError(AggjobsError):
    """The report cannot be produced."""


class UnknownWorkspace(ReportError):
    """No workspace has that id."""


class NoReportData(ReportError):
    """There is no data for that day."""


# -- SQL ----------------------------------------------------------------------------------------
@cache
def queries() -> dict[str, str]:
    return named(files(__package__).joinpath("queries.sql").read_text())


def fetch(conn: psycopg.Connection, name: str, **params: Any) -> list[dict]:
    statement = with_merges(queries(), name, native=native_installed(conn))
    with conn.cursor(row_factory=dict_row, binary=True) as cur:
        return cur.execute(statement, params).fetchall()


# -- values -------------------------------------------------------------------------------------
def num(value: Any, digits: int | None = None) -> float | int | None:
    """JSON-ready number: Decimal -> float (credits keep their 4 decimals), ints stay ints."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    out = float(value)
    return round(out, digits) if digits is not None else out


def ratio(part: Any, whole: Any) -> float | None:
    return None if not whole else float(part) / float(whole)


def pct_change(value: Any, before: Any) -> tuple[Any, float | None]:
    """Absolute and relative (%) change; None when either side is unknown, % None from 0."""
    if value is None or before is None:
        return None, None
    diff = value - before
    if isinstance(diff, float):
        diff = round(diff, 4)
    pct = None if before == 0 else round((value - before) / abs(before) * 100, 2)
    return diff, pct


def day_bounds(day: date) -> tuple[datetime, datetime]:
    lo = datetime.combine(day, time(), tzinfo=UTC)
    return lo, lo + timedelta(days=1)


@overload
def figures(row: dict) -> dict: ...
@overload
def figures(row: None) -> None: ...
@overload
def figures(row: dict | None) -> dict | None: ...
def figures(row: dict | None) -> dict | None:
    """The totals of one scope and day from a query row (None: no data that day)."""
    if row is None:
        return None
    return {
        "runs": int(row["runs"]),
        "successful_runs": int(row["successful_runs"]),
        "failed_runs": int(row["failed_runs"]),
        "success_rate": ratio(row["successful_runs"], row["runs"]),
        "p95_runtime": num(row["p95_runtime"]),
        "run_credits": num(row["run_credits"], 4),
        "credits_used": num(row["credits_used"], 4),
        "credits_refunded": num(row["credits_refunded"], 4),
        "credits_granted": num(row["credits_granted"], 4),
        "net_credits": num(row["net_credits"], 4),
        "active_users": int(row["active_users"]),
        "events": int(row["events"]),
    }


def totals(today: dict, previous: dict | None, last_week: dict | None) -> dict:
    out = {}
    for key, _, _ in METRICS:
        value = today[key]
        prev = previous[key] if previous else None
        week = last_week[key] if last_week else None
        dod, dod_pct = pct_change(value, prev)
        wow, wow_pct = pct_change(value, week)
        out[key] = {"value": value, "previous_day": prev, "day_over_day": dod,
                    "day_over_day_pct": dod_pct, "same_day_last_week": week,
                    "week_over_week": wow, "week_over_week_pct": wow_pct}
    return out


@cache
def hour_labels(day: date) -> tuple[str, ...]:
    """The ISO strings of the day's 24 UTC hours (made once a day, not once a report)."""
    lo, _ = day_bounds(day)
    return tuple((lo + timedelta(hours=i)).isoformat() for i in range(24))


# What hourly_by_workspace and hourly_platform return: `hour` the UTC hour (0-23) of each
# element of the other columns.
HOUR_COLUMNS = ("hour", "runs", "successful_runs", "failed_runs", "p95_runtime",
                "run_credits", "credits_used")
NO_HOURS: dict[str, list] = {c: [] for c in HOUR_COLUMNS}  # a workspace without hourly rows
# The report's `hourly`: one list of 24 per name, element i the day's UTC hour i.
HOURLY_FIELDS = ("hour", "runs", "successful_runs", "failed_runs", "failure_rate",
                 "p95_runtime", "run_credits", "credits_used")


def hourly_series(day: date, hours: dict[str, list]) -> dict[str, list]:
    """The report's `hourly`: the day's 24 UTC hours as columns (HOURLY_FIELDS), zeros where
    no rollup row. `hours`: the rows' columns (HOUR_COLUMNS) in any order, as
    hourly_by_workspace returns them (50,000 reports a day: columns, not a dict per hour)."""
    at = hours["hour"]

    def spread(name: str, empty: Any) -> list:
        out = [empty] * 24
        for i, value in zip(at, hours[name], strict=True):
            out[i] = value
        return out

    runs, failed = spread("runs", 0), spread("failed_runs", 0)
    return {
        "hour": list(hour_labels(day)),
        "runs": runs,
        "successful_runs": spread("successful_runs", 0),
        "failed_runs": failed,
        "failure_rate": [ratio(f, r) for f, r in zip(failed, runs, strict=True)],
        "p95_runtime": spread("p95_runtime", None),
        # Sums of numeric(14,4): as floats, already what num(·, 4) would make of them.
        "run_credits": spread("run_credits", 0.0),
        "credits_used": spread("credits_used", 0.0),
    }


def hour_rows(hourly: dict[str, list]) -> list[dict]:
    """A report's `hourly` as 24 rows (dicts of HOURLY_FIELDS), for those who read it by hour."""
    return [dict(zip(HOURLY_FIELDS, values, strict=True))
            for values in zip(*(hourly[f] for f in HOURLY_FIELDS), strict=True)]


def columns(rows: list[dict]) -> dict[str, list]:
    """Query rows (dicts) as HOUR_COLUMNS' lists, for hourly_series."""
    return {c: [r[c] for r in rows] for c in HOUR_COLUMNS}


def worst_hours(hourly: dict[str, list]) -> list[dict]:
    """The hours with the most failures (of a report's `hourly`), worst first."""
    failed, rate = hourly["failed_runs"], hourly["failure_rate"]
    hot = sorted((i for i in range(24) if failed[i] > 0),
                 key=lambda i: (-failed[i], -(rate[i] or 0), i))
    return [{"hour": hourly["hour"][i], "runs": hourly["runs"][i], "failed_runs": failed[i],
             "failure_rate": rate[i]} for i in hot[:HOT_SPOTS_N]]


def agents(rows: list[dict], limit: int, unavailable: str | None) -> dict:
    """The agents with the most failures; `unavailable` says why there is no list."""
    if unavailable:
        return {"items": None, "note": unavailable}

    def rank(r: dict) -> tuple:
        return (-r["failed_runs"], -(ratio(r["failed_runs"], r["runs"]) or 0),
                r["workspace_id"], r["agent_id"] or 0)

    # nsmallest is sorted(...)[:limit], without an item made for each of the platform's
    # agents first (328,000 at 50,000 workspaces: 0.72 s against 0.08 s)
    return {"items": [{"workspace_id": r["workspace_id"], "agent_id": r["agent_id"],
                       "runs": r["runs"], "failed_runs": r["failed_runs"],
                       "failure_rate": ratio(r["failed_runs"], r["runs"])}
                      for r in heapq.nsmallest(limit, rows, key=rank)],
            "note": None}


# -- build --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Days:
    """The day of the reports, the two it is compared with, and when they were made."""

    day: date
    generated_at: str

    @property
    def previous(self) -> date:
        return self.day - timedelta(days=1)

    @property
    def week_before(self) -> date:
        return self.day - timedelta(days=7)

    @property
    def all(self) -> list[date]:
        return [self.day, self.previous, self.week_before]

    def head(self, kind: str, ws: int | None, has_data: bool, prev_has: bool,
             week_has: bool) -> dict:
        """The fields every report starts with."""
        return {"schema_version": SCHEMA_VERSION, "kind": kind, "day": self.day.isoformat(),
                "workspace_id": ws, "generated_at": self.generated_at, "has_data": has_data,
                "compared_with": {"previous_day": self.previous.isoformat(),
                                  "previous_day_has_data": prev_has,
                                  "same_day_last_week": self.week_before.isoformat(),
                                  "same_day_last_week_has_data": week_has}}


@dataclass(frozen=True)
class Rows:
    """What the reports of a day are built from: the rollups' rows, by scope."""

    platform: dict[date, dict]  # the day and the two compared with
    by_workspace: dict[tuple[int, date], dict]
    hourly: list[dict]
    agents_missing: str | None  # why there are no worst agents, if there are none
    agents: list[dict]
    agents_of: dict[int, list[dict]]  # per workspace, in the query's order
    health_of: dict[int, dict]
    ledger: list[dict]
    ledger_of: dict[int, dict]


def by_workspace(rows: list[dict]) -> dict[int, list[dict]]:
    """`rows` grouped by their workspace_id, each group in the rows' order."""
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["workspace_id"], []).append(r)
    return out


def read_rows(conn: psycopg.Connection, days: Days) -> Rows:
    """The rows of every query the reports of `days.day` are built from."""
    lo, hi = day_bounds(days.day)
    platform = {r["day"]: r for r in fetch(conn, "daily_platform", days=days.all)}
    ws_rows = {(r["workspace_id"], r["day"]): r
               for r in fetch(conn, "daily_by_workspace", days=days.all)}
    hourly = fetch(conn, "hourly_platform", lo=lo, hi=hi)
    agents_missing = agents_unavailable(conn, days.day)
    agent_rows = [] if agents_missing else fetch(conn, "worst_agents", day=days.day)
    health = fetch(conn, "health", day=days.day)
    ledger = fetch(conn, "ledger", day=days.day, tolerance=LEDGER_TOLERANCE)
    return Rows(platform=platform, by_workspace=ws_rows, hourly=hourly,
                agents_missing=agents_missing,
                agents=agent_rows, agents_of=by_workspace(agent_rows),
                health_of={r["workspace_id"]: r for r in health}, ledger=ledger,
                ledger_of={r["workspace_id"]: r for r in ledger})


def build(conn: psycopg.Connection, day: date) -> dict[int | None, dict]:
    """The platform report (key None) and one per active workspace for the UTC `day`."""
    return {ws: report for batch in report_batches(conn, day) for ws, report in batch}


def report_batches(conn: psycopg.Connection, day: date, hourly: HourlyRead | None = None
                   ) -> Iterator[Iterator[tuple[int | None, dict]]]:
    """The reports of `day` (workspace None: the platform's), a batch at a time: the
    platform's, then CHUNK workspaces each. Advancing the outer iterator runs the queries;
    a batch itself only builds, so the connection is free (for a COPY) while it is read.
    Only one chunk's hourly rows and reports are Python objects at once. `hourly`: the
    workspaces' hourly rows, if already under way (else read here, after the others)."""
    days = Days(day, datetime.now(UTC).isoformat())
    rows = read_rows(conn, days)
    active = sorted(ws for (ws, d), r in rows.by_workspace.items()
                    if d == day and (r["has_runs"] or r["has_events"]))
    today_ws = {ws: rows.by_workspace[(ws, day)] for ws in active}
    yield iter([(None, platform_report(days, rows, today_ws))])
    with (hourly or HourlyRead(conn, day)).cursor() as cur:
        # The whole result waits in the driver (a few kB a workspace); Python rows are made
        # a chunk at a time, and the connection stays free for the COPYs meanwhile.
        rows_of = HourlyRows(cur)
        for i in range(0, len(active), CHUNK):
            chunk = active[i:i + CHUNK]
            yield workspace_reports(days, rows, chunk, rows_of.up_to(chunk[-1]))


class HourlyRead:
    """hourly_by_workspace, the longest of the reports' queries (2.8 s of their 5.7 s at
    50,000 workspaces). Given `open_session`, it starts at once on a session of its own,
    reading the snapshot of `conn`'s transaction (exported, imported: the same rows as a
    read on `conn` would give), while `conn` runs the other queries; its rows then wait in
    that session's driver. Otherwise (or if no second session can be opened: the server's
    or the role's connection limit) it runs on `conn` when asked for. Not on Citus, whose
    distributed reads do not take an imported snapshot."""

    def __init__(self, conn: psycopg.Connection, day: date,
                 open_session: Callable[[], psycopg.Connection] | None = None) -> None:
        lo, hi = day_bounds(day)
        self.conn, self.params = conn, {"lo": lo, "hi": hi}
        self.session: psycopg.Connection | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.started: Future[psycopg.Cursor[dict] | None] | None = None
        if open_session is not None and not is_citus(conn):
            snapshot: str = scalar(conn, query("export_snapshot"))
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="reports-hourly")
            self.started = self.pool.submit(self.read_beside, open_session, snapshot)

    def read_beside(self, open_session: Callable[[], psycopg.Connection],
                    snapshot: str) -> psycopg.Cursor[dict] | None:
        try:
            self.session = open_session()
        except DatabaseUnavailable as exc:  # no session to spare: read on the step's own
            log.warning("daily reports: no second session (%s); the hourly rows are read"
                        " after the other queries", exc)
            return None
        with self.session.transaction():
            self.session.execute(query("read_only_repeatable_read"))
            self.session.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                sql.Literal(snapshot)))
            return self.read(self.session)

    def read(self, conn: psycopg.Connection) -> psycopg.Cursor[dict]:
        cur = conn.cursor(row_factory=dict_row, binary=True)
        return cur.execute(queries()["hourly_by_workspace"], self.params)

    @contextmanager
    def cursor(self) -> Iterator[psycopg.Cursor[dict]]:
        """The rows' cursor, once they are all read; the other session closed after."""
        try:
            beside = self.started.result() if self.started else None
            cur = beside if beside is not None else self.read(self.conn)
            with cur:
                yield cur
        finally:
            self.close()

    def close(self) -> None:
        """Stop the read if it still runs (an error, an interruption), close its session."""
        if self.pool is None:
            return
        if self.session is not None and self.started and not self.started.done():
            self.session.cancel_safe()
        self.pool.shutdown(wait=True)
        if self.session is not None:
            self.session.close()
        self.pool = None


class HourlyRows:
    """The rows of hourly_by_workspace (one a workspace, in workspace order), read off
    `cur` up to a workspace at a time: each its columns of the day's hours."""

    def __init__(self, cur: psycopg.Cursor[dict]) -> None:
        self.cur = cur
        self.row = cur.fetchone()

    def up_to(self, last: int) -> dict[int, dict[str, list]]:
        out: dict[int, dict[str, list]] = {}
        while self.row is not None and self.row["workspace_id"] <= last:
            out[self.row["workspace_id"]] = self.row
            self.row = self.cur.fetchone()
        return out


def workspace_reports(days: Days, rows: Rows, chunk: list[int],
                      hourly_of: dict[int, dict[str, list]]) -> Iterator[tuple[int | None, dict]]:
    for ws in chunk:
        yield ws, workspace_report(days, rows, ws, hourly_of.get(ws, NO_HOURS))


def platform_report(days: Days, rows: Rows, today_ws: dict[int, dict]) -> dict:
    """The platform-wide report; `today_ws`: the day's row of each active workspace."""
    p_today, p_prev, p_week = (rows.platform[d] for d in days.all)
    today_fig = figures(p_today)
    prev_fig = figures(p_prev) if p_prev["has_data"] else None
    week_fig = figures(p_week) if p_week["has_data"] else None
    hourly = hourly_series(days.day, columns(rows.hourly))
    platform = days.head("platform", None, p_today["has_data"], prev_fig is not None,
                         week_fig is not None)
    platform["active_workspaces"] = len(today_ws)
    platform["totals"] = totals(today_fig, prev_fig, week_fig)
    platform["top_workspaces"] = top_workspaces(today_ws, today_fig)
    platform["movers"] = {
        "vs_previous_day": movers(rows.by_workspace, days.day, days.previous)
        if prev_fig else None,
        "vs_same_day_last_week": movers(rows.by_workspace, days.day, days.week_before)
        if week_fig else None,
    }
    platform["failure_hot_spots"] = {
        "worst_hours": worst_hours(hourly),
        "worst_workspaces": worst_workspaces(today_ws),
        "worst_agents": agents(rows.agents, TOP_N, rows.agents_missing),
    }
    platform["health"] = platform_health(rows.health_of)
    platform["ledger"] = platform_ledger(rows.ledger)
    platform["hourly"] = hourly
    return platform


def worst_workspaces(today_ws: dict[int, dict]) -> list[dict]:
    worst = sorted((r for r in today_ws.values() if r["failed_runs"] > 0),
                   key=lambda r: (-r["failed_runs"], -(ratio(r["failed_runs"], r["runs"]) or 0),
                                  r["workspace_id"]))
    return [{"workspace_id": r["workspace_id"], "runs": r["runs"],
             "failed_runs": r["failed_runs"], "failure_rate": ratio(r["failed_runs"], r["runs"])}
            for r in worst[:HOT_SPOTS_N]]


def workspace_report(days: Days, rows: Rows, ws: int, hourly: dict[str, list]) -> dict:
    """The report of the active workspace `ws`; `hourly`: its row of hourly_by_workspace."""
    prev = rows.by_workspace.get((ws, days.previous))
    week = rows.by_workspace.get((ws, days.week_before))
    report = days.head("workspace", ws, True, prev is not None, week is not None)
    report["totals"] = totals(figures(rows.by_workspace[(ws, days.day)]), figures(prev),
                              figures(week))
    ws_hourly = hourly_series(days.day, hourly)
    report["failure_hot_spots"] = {
        "worst_hours": worst_hours(ws_hourly),
        "worst_agents": agents(rows.agents_of.get(ws, []), HOT_SPOTS_N, rows.agents_missing),
    }
    report["health"] = workspace_health(rows.health_of.get(ws))
    report["ledger"] = (ledger_item(rows.ledger_of.get(ws), ws)
                        | {"tolerance": float(LEDGER_TOLERANCE)})
    report["hourly"] = ws_hourly
    return report


def top_workspaces(today_ws: dict[int, dict], total: dict) -> dict:
    by_runs = sorted((r for r in today_ws.values() if r["runs"] > 0),
                     key=lambda r: (-r["runs"], r["workspace_id"]))[:TOP_N]
    by_credits = sorted((r for r in today_ws.values() if r["credits_used"] > 0),
                        key=lambda r: (-r["credits_used"], r["workspace_id"]))[:TOP_N]
    return {
        "by_runs": [{"workspace_id": r["workspace_id"], "runs": r["runs"],
                     "failed_runs": r["failed_runs"],
                     "success_rate": ratio(r["successful_runs"], r["runs"]),
                     "share_pct": round(100 * r["runs"] / total["runs"], 2)}
                    for r in by_runs],
        "by_credits": [{"workspace_id": r["workspace_id"],
                        "credits_used": num(r["credits_used"], 4),
                        "run_credits": num(r["run_credits"], 4),
                        "share_pct": round(100 * float(r["credits_used"])
                                           / total["credits_used"], 2)
                        if total["credits_used"] else None}
                       for r in by_credits],
    }


def movers(ws_rows: dict[tuple[int, date], dict], day: date, other: date) -> dict:
    """Workspaces whose runs changed most between `other` and `day` (absent counts as 0)."""
    workspaces = {ws for (ws, d) in ws_rows if d in (day, other)}
    changes = []
    for ws in workspaces:
        now = ws_rows[(ws, day)]["runs"] if (ws, day) in ws_rows else 0
        then = ws_rows[(ws, other)]["runs"] if (ws, other) in ws_rows else 0
        if now != then:
            diff, pct = pct_change(now, then)
            changes.append({"workspace_id": ws, "runs": now, "compared_runs": then,
                            "change": diff, "change_pct": pct})
    up = sorted((c for c in changes if c["change"] > 0),
                key=lambda c: (-c["change"], c["workspace_id"]))
    down = sorted((c for c in changes if c["change"] < 0),
                  key=lambda c: (c["change"], c["workspace_id"]))
    return {"compared_day": other.isoformat(), "up": up[:MOVERS_N], "down": down[:MOVERS_N]}


def fell(row: dict) -> bool:
    """Status worsened into at_risk or critical (from healthy, or at_risk to critical)."""
    now = HEALTH_SEVERITY.get(row["status"])
    before = HEALTH_SEVERITY.get(row["previous_status"] or "")
    return now is not None and now >= 1 and before is not None and now > before


def health_item(row: dict) -> dict:
    return {"workspace_id": row["workspace_id"], "status": row["status"],
            "score": num(row["score"]), "previous_status": row["previous_status"],
            "previous_score": num(row["previous_score"])}


def platform_health(rows: dict[int, dict]) -> dict:
    counts: dict[str, int] = {}
    for r in rows.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    fallen = sorted((r for r in rows.values() if fell(r)),
                    key=lambda r: (-HEALTH_SEVERITY[r["status"]], r["score"] or 0,
                                   r["workspace_id"]))
    return {"scored": bool(rows), "counts": counts,
            "fell": [health_item(r) for r in fallen]}


def workspace_health(row: dict | None) -> dict:
    if row is None:
        return {"scored": False, "status": None, "score": None, "previous_status": None,
                "previous_score": None, "fell": False}
    item = health_item(row)
    del item["workspace_id"]
    return {"scored": True, **item, "fell": fell(row)}


def ledger_item(row: dict | None, ws: int) -> dict:
    if row is None:
        return {"workspace_id": ws, "usage_credits": 0.0, "run_credits": 0.0,
                "difference": 0.0, "mismatch": False}
    return {"workspace_id": row["workspace_id"], "usage_credits": num(row["usage_credits"], 4),
            "run_credits": num(row["run_credits"], 4),
            "difference": num(row["difference"], 4), "mismatch": row["mismatch"]}


def platform_ledger(rows: list[dict]) -> dict:
    mismatches = [ledger_item(r, r["workspace_id"]) for r in rows if r["mismatch"]]
    usage = sum((r["usage_credits"] for r in rows), Decimal(0))
    runs = sum((r["run_credits"] for r in rows), Decimal(0))
    return {"tolerance": float(LEDGER_TOLERANCE), "workspaces_checked": len(rows),
            "usage_credits": num(usage, 4), "run_credits": num(runs, 4),
            "difference": num(usage - runs, 4), "mismatch_count": len(mismatches),
            "mismatches": mismatches[:LEDGER_LISTED]}


# -- completeness, storage ----------------------------------------------------------------------
def lagging_rollups(conn: psycopg.Connection, day: date,
                    names: tuple[str, ...] = ROLLUPS_READ) -> dict[str, datetime | None]:
    """Rollups whose day grain has not materialized `day` yet (rollup -> its watermark)."""
    _, end = day_bounds(day)
    marks = {r["rollup"]: r["watermark"]
             for r in fetch(conn, "day_watermarks", rollups=list(names))}
    return {name: marks.get(name) for name in names
            if marks.get(name) is None or marks[name] < end}


def agents_unavailable(conn: psycopg.Connection, day: date) -> str | None:
    """Why the day has no worst agents yet, if it has none: the agent rollup lags."""
    behind = lagging_rollups(conn, day, (AGENTS_ROLLUP,))
    if not behind:
        return None
    mark = behind[AGENTS_ROLLUP]
    rerun = (day + timedelta(days=1)).isoformat()
    return (f"{AGENTS_ROLLUP} has not materialized {day} yet (day watermark: "
            f"{mark.isoformat() if mark else 'none'}); once it has, "
            f"`aggjobs run daily_rollup --as-of {rerun}T01:00Z` rebuilds this report")


def store(conn: psycopg.Connection, day: date,
          open_session: Callable[[], psycopg.Connection] | None = None) -> int:
    """Build the day's reports and replace the stored ones, in one transaction: the day's
    rows deleted, the new ones streamed in with COPY a batch at a time (report_batches).
    Readers see the old set or the new one. Returns the number of rows written.
    `open_session`: a second session, for the longest query (HourlyRead)."""
    outermost = conn.info.transaction_status == pq.TransactionStatus.IDLE
    written = 0
    with conn.transaction():
        if outermost:  # one snapshot for every query of the build
            conn.execute(query("one_snapshot"))
        lighter_compression(conn)
        conn.execute(queries()["delete_day_reports"], {"day": day})
        # With a session of its own, the hourly rows are read beside the other queries, in
        # this transaction's snapshot (REPEATABLE READ: the one it took at the DELETE).
        hourly = HourlyRead(conn, day, open_session if outermost else None)
        try:
            with conn.cursor() as cur:
                for batch in report_batches(conn, day, hourly):
                    with cur.copy(queries()["copy_reports"]) as copy:
                        for ws, report in batch:
                            copy.write_row((day, ws, encode(report), report["generated_at"]))
                            written += 1
        finally:
            hourly.close()
    return written


def lighter_compression(conn: psycopg.Connection) -> None:
    """lz4 for the reports written in this transaction, where the server has it: a day's
    reports are 290 MB of JSON at 50,000 workspaces (380 MB in version 1), and pglz (the
    default) compressing them took longer than parsing them (docs/reports.md, "Cost")."""
    for name, value in storage_changes(conn).items():
        conn.execute(set_local(name, value))


def encode(report: dict) -> str:
    """The report as JSON text, each NaN or infinite number as null (JSON has no such
    numbers, and the report's figures and charts none to show; hostile rows give them:
    docs/rollups.md): orjson writes them so, without spaces (jsonb keeps no formatting),
    3.7 times as fast as the standard library's encoder (50,000 reports a day)."""
    return orjson.dumps(report, default=as_float).decode()


def as_float(value: object) -> float:
    """What orjson cannot write itself: a Decimal (as its float; NaN ones as null)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"a report holds {type(value).__name__}, not JSON: {value!r}")


def load_stored(conn: psycopg.Connection, day: date, workspace_id: int | None) -> dict | None:
    rows = fetch(conn, "stored_report", day=day, ws=workspace_id)
    return rows[0]["report"] if rows else None


def workspace_known(conn: psycopg.Connection, workspace_id: int) -> bool:
    return bool(scalar(conn, queries()["workspace_known"], {"ws": workspace_id}))
