"""Daily health scores per workspace, from the rollup tables (formula in formula.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib.resources import files

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ..catalog import Grain, get_rollup
from ..engine import state
from ..engine.recompute import native_installed, planner_settings
from ..sql import named, query, with_merges
from .formula import BURST_MIN_RUNS, Health, Inputs, score

INPUTS = named(files(__package__).joinpath("inputs.sql").read_text())
# The rollups inputs.sql reads (their hours and days): in the daily job, the scores start as
# these have ended, beside the others (docs/jobs.md).
ROLLUPS_READ = ("execution_metrics", "credit_consumption")


CHUNK = 5_000  # workspaces scored and written at a time: the worker's memory stays bounded


def statement(conn: psycopg.Connection) -> sql.Composed:
    return with_merges(INPUTS, "inputs", native=native_installed(conn))


# No nested loop: inputs.sql joins one row per workspace from each of its parts, never a
# nested loop's work. With statistics that say a table is empty while it holds rows (taken
# once it was emptied, by a reset say, its pages kept, until autovacuum analyzes it again)
# the planner nested the loops over every workspace: at 50,000 workspaces past 11 minutes,
# against 1.3 s without them (docs/health.md).
PLAN = {"enable_nestloop": "off"}


def inputs(conn: psycopg.Connection, day: date) -> list[dict]:
    """Every active workspace's inputs (inputs.sql), one dict each."""
    with conn.transaction(), conn.cursor(row_factory=dict_row, binary=True) as cur:
        return read_inputs(conn, cur, day).fetchall()


def read_inputs(conn: psycopg.Connection, cur: psycopg.Cursor[dict],
                day: date) -> psycopg.Cursor[dict]:
    """`cur` with the inputs of `day` (in a transaction: the plan's settings are local)."""
    with planner_settings(conn, PLAN):
        return cur.execute(statement(conn), params(day))


def params(day: date) -> dict[str, object]:
    return {"day": day, "burst_min_runs": BURST_MIN_RUNS}


def copy_scores(conn: psycopg.Connection, day: date, healths: Iterable[Health]) -> None:
    with conn.cursor() as cur, cur.copy(query("copy_health")) as copy:
        for h in healths:
            copy.write_row((h.workspace_id, day, h.score, h.status,
                            encode(h.components)))


def encode(components: dict) -> str:
    """Compact JSON (jsonb keeps no formatting) by orjson, a NaN as null: 0.07 s for 50,000
    workspaces' components, where the standard library's encoder took 0.8 s."""
    return orjson.dumps(components).decode()


def score_and_store(conn: psycopg.Connection, day: date) -> dict[str, int]:
    """Score every active workspace of `day` and replace the day's scores, CHUNK workspaces
    at a time: one transaction (readers see the old set or the new). The inputs' result stays
    in libpq's memory (a few hundred bytes a workspace), made into Python rows a chunk at a
    time; not a server-side cursor, whose plan is chosen for its first rows
    (cursor_tuple_fraction: 30x the CPU here). COPY, not one INSERT a row: at 50,000
    workspaces the INSERTs' round trips were most of the step."""
    by_status: dict[str, int] = {}
    with conn.transaction():
        conn.execute(query("delete_health_day"), (day,))
        with conn.cursor(row_factory=dict_row, binary=True) as cur:
            read_inputs(conn, cur, day)
            while rows := cur.fetchmany(CHUNK):
                healths = [score(Inputs(**row)) for row in rows]
                copy_scores(conn, day, healths)
                for h in healths:
                    by_status[h.status] = by_status.get(h.status, 0) + 1
    return by_status


def last_complete_day(conn: psycopg.Connection, as_of_day: date) -> tuple[date, str | None]:
    """The day before `as_of_day`, and why it cannot be scored yet, if it cannot."""
    day = as_of_day - timedelta(days=1)
    wm = state.watermarks(conn, get_rollup("execution_metrics")).get(Grain.DAY)
    if wm is None or wm.date() <= day:
        return day, f"execution_metrics days are materialized only up to {wm}"
    return day, None


@dataclass(frozen=True)
class DayScores:
    """What scoring the last complete day did: the day, and either why it had to wait or how
    many scores were stored, by status."""

    day: date
    waiting: str | None = None
    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def score_last_day(conn: psycopg.Connection, as_of_day: date) -> DayScores:
    """Score the last complete day before `as_of_day` and store the scores, once the day's
    execution_metrics are materialized (else nothing done, and why)."""
    day, waiting = last_complete_day(conn, as_of_day)
    if waiting:
        return DayScores(day, waiting=waiting)
    by_status = score_and_store(conn, day)
    return DayScores(day, rows=sum(by_status.values()), by_status=by_status)
