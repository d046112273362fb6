"""Versioned, transactional, idempotent migrations, then the catalog's generated objects.

Numbered files in `migrations/` run once each, in order, recorded in
aggjobs.schema_migrations; `schema.sql` is what they add up to (a test keeps the two in
agreement). After them, `sync_catalog` creates what the catalog declares: one table per
rollup and grain, its watermark rows, and the change-tracking triggers of each source. All
of it runs in one transaction under an advisory lock, so concurrent `migrate`s serialize and
a failure changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from importlib.resources import files

import psycopg
from psycopg import sql

from ..catalog import BUILTIN_SOURCES, Source, rollups, rollups_on, sources
from ..errors import LockBusy
from ..sql import NATIVE_VERSION, native_query, query, tracking
from ..sql import rollup as rollup_sql
from . import definitions, live_views, locks
from .check import check_sources
from .cluster import is_citus
from .connect import scalar
from .script import execute_script
from .view_caches import update_view_caches

MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in files(__package__).joinpath("migrations").iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def canonical_schema() -> str:
    return files(__package__).joinpath("schema.sql").read_text()


@dataclass(frozen=True)
class Migrated:
    """What a migrate did (or, planned only, would do)."""

    applied: list[Migration]
    plan: definitions.Plan
    dropped: list[str] = field(default_factory=list)  # retired tables dropped


def migrate(conn: psycopg.Connection, *, native: bool = True, prune: bool = False,
            force: bool = False, retired_grace_s: float | None = None,
            lock_wait_s: float = 300.0) -> Migrated:
    """Apply pending migrations, then the rollup definitions' plan (db/definitions.py), then
    sync the catalog. `native`: install extension aggjobs_native where the server has it
    (else drop it); `prune`: drop every retired table now, else those retired longer than
    `retired_grace_s` seconds (None: none); `force`: apply a plan that loses history. Another
    migrate in progress is waited for `lock_wait_s` seconds at most (LockBusy)."""
    with conn.transaction():
        take_migrate_lock(conn, lock_wait_s)
        conn.execute(query("bootstrap"))
        applied = pending(conn)
        for m in applied:
            execute_script(conn, m.sql)
            conn.execute(query("record_migration"), (m.version, m.name))
        # before anything is made for the sources: a mismatch rolls all of it back
        check_sources(conn, rollups())
        the_plan = definitions.plan(conn, rollups())
        for name in the_plan.reshaped():  # made again by sync_catalog, over the new columns
            live_views.drop(conn, name)
        definitions.apply(conn, the_plan, force=force)
        sync_native(conn, wanted=native)
        sync_catalog(conn)
        grace = 0.0 if prune else retired_grace_s
        dropped = [] if grace is None else definitions.drop_retired_tables(conn, grace_s=grace)
    return Migrated(applied, the_plan, dropped)


def take_migrate_lock(conn: psycopg.Connection, wait_s: float) -> None:
    """The transaction's migrate lock: concurrent migrates run one after the other."""
    deadline = time.monotonic() + wait_s
    while not scalar(conn, query("try_migrate_lock")):
        if time.monotonic() >= deadline:
            held = locks.held_by(conn, "migrate")
            raise LockBusy(f"another `aggjobs migrate` is running (waited {wait_s:g} s, "
                           "AGGJOBS_LOCK_WAIT_S); try again when it has finished"
                           + (f"; its lock is {held}" if held else ""))
        time.sleep(0.2)


def pending(conn: psycopg.Connection) -> list[Migration]:
    done = {row[0] for row in conn.execute(query("applied_migrations"))}
    return [m for m in migrations() if m.version not in done]


def plan_only(conn: psycopg.Connection) -> Migrated:
    """What `migrate` would do, read without changing anything (nor taking a lock that
    would make the platform's writers wait): the pending migrations and the plan."""
    exists = scalar(conn, query("migrations_table"))
    applied = pending(conn) if exists else migrations()
    fresh = any(m.version == 1 for m in applied)  # 0001 creates the built-in sources if missing
    check_sources(conn, [r for r in rollups() if not (fresh and r.source in BUILTIN_SOURCES)])
    return Migrated(applied, definitions.plan(conn, rollups()))


log = logging.getLogger(__name__)


def sync_native(conn: psycopg.Connection, *, wanted: bool) -> None:
    """Install the optional C functions (docs/native.md) if wanted and the server has them
    (`native_installed` says whether they are). Without them, or without the privilege to create a C
    extension (superuser), the rollups run the portable SQL: same results, more time."""
    if not wanted:
        if scalar(conn, query("native_present")):  # the live views use it: made again,
            for name in definitions.stored_definitions(conn):  # portable, by sync_catalog
                live_views.drop(conn, name)
        conn.execute(query("drop_native_extension"))
        conn.execute(query("drop_native_schema"))
        return
    if not scalar(conn, native_query("native_available")):
        log.info("extension aggjobs_native (version %s) is not on this server: portable SQL",
                 NATIVE_VERSION)
        return
    try:
        with conn.transaction():
            conn.execute(query("create_native_schema"))
            conn.execute(query("create_native_extension"))
            conn.execute(native_query("update_native_extension"))
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("extension aggjobs_native not installed (%s): portable SQL", exc)


def apply_canonical_schema(conn: psycopg.Connection) -> None:
    """Create the schema from schema.sql directly (for tests comparing it with migrations)."""
    with conn.transaction():
        conn.execute(query("bootstrap"))
        execute_script(conn, canonical_schema())
        for m in migrations():
            conn.execute(query("record_migration"), (m.version, m.name))
        definitions.apply(conn, definitions.plan(conn, rollups()))
        sync_native(conn, wanted=True)
        sync_catalog(conn)


def sync_catalog(conn: psycopg.Connection) -> None:
    """Create the live rollup tables, watermarks, source triggers and the materialized views
    over the rollup tables, if missing. Live: while a changed rollup is rebuilt, its tables
    in analytics are those of the version before (db/definitions.py)."""
    versions = definitions.ensure_current(conn, rollups())
    live = [v.live for v in versions.values()]
    tracked = list(dict.fromkeys([*sources(), *(r.source for r in live)]))
    for source in tracked:
        conn.execute(query("upsert_source"),
                     (source.name, source.schema, source.table, source.time_column,
                      source.key_column))
        repair_threshold(conn, source)
        threshold = scalar(conn, query("source_threshold"), (source.name,))
        conn.execute(tracking.create_function(source))
        for stmt in tracking.create_triggers(source, threshold):
            conn.execute(stmt)
    for rollup in live:
        for grain in rollup.grains:
            conn.execute(rollup_sql.create_table(rollup, grain))
            conn.execute(rollup_sql.create_bucket_index(rollup, grain))
            conn.execute(query("ensure_watermark"), (rollup.name, grain.value))
    live_views.sync(conn, live)
    for declared in rollups():  # a version being rebuilt: its live views, for the swap
        if (version := versions[declared.name].version) is not None:
            live_views.hand_over(conn, declared, version)
    sync_views(conn)
    sync_grants(conn, tracked)


def repair_threshold(conn: psycopg.Connection, source: Source) -> None:
    """Put back a tracking threshold outside its bounds (0011: infinite, BC, far ahead of
    now), which move_tracking_threshold refuses to move and psycopg cannot even read, to the
    end of what the source's rollups materialized; the caller re-creates the triggers."""
    row = conn.execute(query("repair_threshold"), {
        "source": source.name, "rollups": [r.name for r in rollups_on(source)]}).fetchone()
    if row:
        log.warning("tracking threshold of %s was %s, outside [1970-01-01, now + 10 minutes]:"
                    " reset to %s", source.name, row[0], row[1] or "none (nothing materialized)")


WORKER, READER = "aggjobs_worker", "aggjobs_reader"
# The engine's state: the worker reads and writes it. Not aggjobs.sources (it names the
# tables the SECURITY DEFINER functions act on: read-only for the worker), not audit_log
# (append-only: INSERT and SELECT), not schema_migrations, rollup_definitions and
# retired_tables (read-only: migrate writes them), not api_tokens (read-only: changed
# through the audited functions of 0011) and not retention_transactions (the owner's:
# delete_raw_before writes it).
WORKER_STATE_TABLES = ("watermarks", "pending_groups", "invalidation_log", "job_runs",
                       "backfills", "quarantine", "alerts", "heartbeats")
WORKER_READ_ONLY_TABLES = ("sources", "schema_migrations", "api_tokens", "rollup_definitions",
                           "retired_tables")


def sync_grants(conn: psycopg.Connection, tracked: list[Source]) -> None:
    """The privileges of the group roles created by migration 0005 (docs/security.md), on
    every object that exists now, rollup tables and materialized views included; idempotent.

    The materialized views are owned by aggjobs_worker: REFRESH needs their owner (MAINTAIN
    exists only from PostgreSQL 17), and they hold nothing the worker cannot already write."""
    for stmt in (*worker_grants(tracked), *reader_grants()):
        conn.execute(stmt)
    give_views_to_worker(conn)


def worker_grants(tracked: list[Source]) -> list[sql.Composed]:
    """What aggjobs_worker may do: read the sources, write the rollups and the engine's
    state, call the functions (not the internal helpers), build in aggjobs_build, use the
    C functions."""
    I = sql.Identifier
    worker = I(WORKER)
    tables = sql.SQL(", ").join(I(s.schema, s.table) for s in tracked)
    state_tables = sql.SQL(", ").join(I("aggjobs", t) for t in WORKER_STATE_TABLES)
    read_only = sql.SQL(", ").join(I("aggjobs", t) for t in WORKER_READ_ONLY_TABLES)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA public, analytics, aggjobs TO {}").format(worker),
        sql.SQL("GRANT SELECT ON {} TO {}").format(tables, worker),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA analytics"
                " TO {}").format(worker),
        sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA analytics TO {}"
                ).format(worker),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(state_tables, worker),
        sql.SQL("GRANT SELECT ON {} TO {}").format(read_only, worker),
        # Before 0011 the worker could write api_tokens: no longer.
        sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
            read_only, worker),
        sql.SQL("GRANT SELECT, INSERT ON aggjobs.audit_log TO {}").format(worker),
        sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA aggjobs TO {}").format(worker),
        # source_relation is an internal helper of the SECURITY DEFINER functions.
        sql.SQL("REVOKE EXECUTE ON FUNCTION aggjobs.source_relation(text) FROM {}"
                ).format(worker),
        # ... and so is retire_table, of swap_rollup_version's (0014)
        sql.SQL("REVOKE EXECUTE ON FUNCTION aggjobs.retire_table(regclass, text, text, integer,"
                " text) FROM {}").format(worker),
        # A rebuild writes its tables in aggjobs_build; it records why its check failed.
        sql.SQL("GRANT USAGE ON SCHEMA aggjobs_build TO {}").format(worker),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA"
                " aggjobs_build TO {}").format(worker),
        sql.SQL("GRANT UPDATE (check_error) ON aggjobs.rollup_definitions TO {}").format(worker),
        # The C functions, when installed (EXECUTE is PUBLIC's by default).
        sql.SQL("DO $$ BEGIN IF to_regnamespace('aggjobs_native') IS NOT NULL THEN"
                " GRANT USAGE ON SCHEMA aggjobs_native TO {}; END IF; END $$").format(worker),
    ]


def reader_grants() -> list[sql.Composed]:
    """What aggjobs_reader may do: read the rollups and the run history."""
    reader = sql.Identifier(READER)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA analytics, aggjobs TO {}").format(reader),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO {}").format(reader),
        sql.SQL("GRANT SELECT ON aggjobs.job_runs, aggjobs.heartbeats TO {}").format(reader),
    ]


def give_views_to_worker(conn: psycopg.Connection) -> None:
    """Make aggjobs_worker the owner of each materialized view it does not own yet. On
    Citus it may log in: a REFRESH runs the view's query as its owner, and the coordinator
    then connects to the workers as that role (issue 18, point 4). No password is set: the
    workers' pg_hba.conf (or citus.node_conninfo, pg_dist_authinfo) says how it gets in."""
    if is_citus(conn):
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(WORKER)))
    for name in VIEWS:
        owner = scalar(conn, query("relation_owner"), (f"analytics.{name}",))
        if owner != WORKER:
            conn.execute(sql.SQL("ALTER MATERIALIZED VIEW {} OWNER TO {}").format(
                sql.Identifier("analytics", name), sql.Identifier(WORKER)))


VIEWS = ("workspace_overview", "platform_daily_overview")
VIEW_CACHES = ("platform_daily_stats", "workspace_window_stats")  # migration 0007


def sync_views(conn: psycopg.Connection) -> None:
    """(Re)create the materialized views when views.sql, or the SQL of the caches they read
    (sql/view_caches.sql), changed since they were made: each view's comment holds the digest
    of the text that created it. The caches are emptied and refilled first, so that the new
    views start from values computed by the new SQL."""
    text = files(__package__).joinpath("views.sql").read_text()
    caches = files("aggjobs.sql").joinpath("view_caches.sql").read_text()
    digest = hashlib.sha256((text + caches).encode()).hexdigest()[:16]
    stamp = "aggjobs views.sql " + digest
    current = {
        name: comment
        for name, comment in conn.execute(query("analytics_comments"), (list(VIEWS),))
    }
    if all(current.get(name) == stamp for name in VIEWS) and not scalar(
            conn, query("views_on_retired"), {"views": [f"analytics.{v}" for v in VIEWS]}
    ):
        return
    for name in VIEWS:
        conn.execute(sql.SQL("DROP MATERIALIZED VIEW IF EXISTS {}").format(
            sql.Identifier("analytics", name)))
    conn.execute(sql.SQL("TRUNCATE {}").format(
        sql.SQL(", ").join(sql.Identifier("analytics", t) for t in VIEW_CACHES)))
    update_view_caches(conn)
    execute_script(conn, text)
    for name in VIEWS:
        conn.execute(sql.SQL("COMMENT ON MATERIALIZED VIEW {} IS {}").format(
            sql.Identifier("analytics", name), sql.Literal(stamp)))


def current_version(conn: psycopg.Connection) -> int | None:
    row = conn.execute(query("migrations_table_exists")).fetchone()
    if not row or not row[0]:
        return None
    return scalar(conn, query("schema_version"))
