"""Daily health scores per workspace, from the rollup tables (formula in formula.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib.resources import files

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ..catalog import Grain, get_rollup
from ..engine import state
from ..engine.recompute import native_installed
from ..sql import named, query, with_merges
from .formula import BURST_MIN_RUNS, Health, Inputs, score

INPUTS = named(files(__package__).joinpath("inputs.sql").read_text())


def inputs(conn: psycopg.Connection, day: date) -> list[dict]:
    """Every active workspace's inputs (inputs.sql), one dict each."""
    statement = with_merges(INPUTS, "inputs", native=native_installed(conn))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(statement, {"day": day, "burst_min_runs": BURST_MIN_RUNS}).fetchall()


def compute(conn: psycopg.Connection, day: date) -> list[Health]:
    return [score(Inputs(**row)) for row in inputs(conn, day)]


def store(conn: psycopg.Connection, day: date, healths: list[Health]) -> int:
    """Replace the day's scores (one transaction: readers see the old set or the new)."""
    with conn.transaction():
        conn.execute(query("delete_health_day"), (day,))
        with conn.cursor() as cur:
            cur.executemany(
                query("insert_health"),
                [(h.workspace_id, day, h.score, h.status, Jsonb(h.components))
                 for h in healths],
            )
    return len(healths)


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
    healths = compute(conn, day)
    by_status: dict[str, int] = {}
    for h in healths:
        by_status[h.status] = by_status.get(h.status, 0) + 1
    return DayScores(day, rows=store(conn, day, healths), by_status=by_status)
