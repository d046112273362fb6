"""`aggjobs doctor`: whether the database is a Citus cluster set up as docs/scaling.md says.

On PostgreSQL it says so and finds nothing. On Citus it reports, as problems: a source or
rollup table not distributed by its key column, tables not co-located with the first
source, the change log not distributed with them, the views' owner unable to log in (on
the coordinator or a worker), citus.enable_unsafe_triggers off, a table with an identity
column made a Citus table; and, as advice, the engine's small state tables not made
reference tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from ..catalog import Rollup, rollups, sources
from ..sql import query
from .cluster import is_citus
from .connect import scalar

VIEW_OWNER = "aggjobs_worker"  # db/migrate.py WORKER: owns the materialized views
CHANGE_LOG = "aggjobs.invalidation_log"
# Small state joined with distributed data: reference tables (a copy on every node).
REFERENCE = ("aggjobs.sources", "aggjobs.watermarks", "aggjobs.pending_groups",
             "aggjobs.retention_transactions")
# Identity columns: Citus cannot undistribute them; keep them plain, on the coordinator.
IDENTITY = ("aggjobs.job_runs", "aggjobs.audit_log", "aggjobs.api_tokens", "aggjobs.alerts",
            "aggjobs.backfills")


@dataclass
class Diagnosis:
    citus: bool
    version: str | None = None
    workers: int = 0
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


def diagnose(conn: psycopg.Connection) -> Diagnosis:
    """What is wrong with the cluster for aggjobs (nothing to check on PostgreSQL)."""
    if not is_citus(conn):
        return Diagnosis(citus=False)
    d = Diagnosis(citus=True, version=scalar(conn, query("citus_version")),
                  workers=scalar(conn, query("citus_workers")))
    check_distribution(conn, d)
    check_state_tables(conn, d)
    check_view_owner(conn, d)
    if scalar(conn, query("citus_setting"), {"name": "citus.enable_unsafe_triggers"}) != "on":
        d.problems.append("citus.enable_unsafe_triggers is off: the tracking triggers cannot "
                          "be made on distributed sources (ALTER SYSTEM SET it on the "
                          "coordinator, then migrate)")
    else:
        d.checked.append("citus.enable_unsafe_triggers is on")
    return d


def placements(conn: psycopg.Connection, tables: list[str]
               ) -> dict[str, tuple[str | None, str | None, int | None]]:
    """Per table: (kind, distribution column, co-location group)."""
    rows = conn.execute(query("citus_tables"), {"tables": tables}).fetchall()
    return {name: (kind, column, group) for name, kind, column, group in rows}


def distributed_tables() -> dict[str, str]:
    """The tables to distribute, each with its key column: the sources, then the rollups."""
    wanted = {f"{s.schema}.{s.table}": s.key_column for s in sources()}
    for rollup in rollups():
        wanted.update(rollup_tables(rollup))
    wanted[CHANGE_LOG] = "workspace_id"
    return wanted


def rollup_tables(rollup: Rollup) -> dict[str, str]:
    return {f"{rollup.schema}.{rollup.table(g)}": rollup.source.key_column
            for g in rollup.grains}


def check_distribution(conn: psycopg.Connection, d: Diagnosis) -> None:
    wanted = distributed_tables()
    found = placements(conn, list(wanted))
    groups = {found[t][2] for t in wanted if found[t][0] == "distributed"}
    problems = []
    for table, column in wanted.items():
        kind, by, _ = found[table]
        if kind != "distributed":
            problems.append(f"{table} is not distributed (create_distributed_table('{table}',"
                            f" '{column}', colocate_with => ...))")
        elif by != column:
            problems.append(f"{table} is distributed by {by}, not {column}")
    if len(groups) > 1:
        problems.append(f"the distributed tables are in {len(groups)} co-location groups, "
                        "not one: statements joining a source and its rollup are not "
                        "pushed down (colocate_with => the first source)")
    d.problems += problems
    if not problems:
        d.checked.append(f"{len(wanted)} tables distributed by their key, co-located")


def check_state_tables(conn: psycopg.Connection, d: Diagnosis) -> None:
    found = placements(conn, [*REFERENCE, *IDENTITY])
    for table in REFERENCE:
        if found[table][0] != "reference":
            d.advice.append(f"{table}: make it a reference table (create_reference_table): "
                            "it is joined with distributed tables")
    for table in IDENTITY:
        if found[table][0] is not None:
            d.problems.append(f"{table} is a Citus {found[table][0]} table: its identity "
                              "column makes undistribute_table refuse it; keep it a plain "
                              "table on the coordinator")


def check_view_owner(conn: psycopg.Connection, d: Diagnosis) -> None:
    """REFRESH runs the views' query as their owner, who connects to the workers."""
    rows = conn.execute(query("citus_role_can_login"), {"role": VIEW_OWNER}).fetchall()
    refused = [node for node, can in rows if not can]
    if refused:
        d.problems.append(f"{VIEW_OWNER}, the materialized views' owner, cannot log in on "
                          f"{', '.join(refused)}: their refresh connects to the workers as "
                          "it (`aggjobs migrate` on the coordinator sets LOGIN)")
    else:
        d.checked.append(f"{VIEW_OWNER} (the views' owner) can log in on every node")
