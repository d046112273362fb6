"""The numbered migrations and the canonical schema.sql produce the same database."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from aggjobs.db.migrate import apply_canonical_schema, migrate, migrations
from tests.conftest import create_database, drop_database

INTROSPECT = {
    "columns": """
        SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema IN ('aggjobs', 'analytics', 'public')
        ORDER BY 1, 2, 3""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname IN ('aggjobs', 'analytics', 'public') ORDER BY 1, 2, 3""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace::regnamespace::text IN ('aggjobs', 'analytics', 'public')
        ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_arguments(p.oid), p.prosrc FROM pg_proc AS p
        WHERE p.pronamespace::regnamespace::text = 'aggjobs' ORDER BY 1, 2""",
    "storage": """
        SELECT c.oid::regclass::text, c.reloptions FROM pg_class AS c
        WHERE c.relnamespace::regnamespace::text IN ('aggjobs', 'analytics')
          AND c.reloptions IS NOT NULL ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2""",
}


def snapshot(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {k: conn.execute(q).fetchall() for k, q in INTROSPECT.items()}


@pytest.fixture
def two_databases(server_url: str):
    names = [f"aggjobs_m_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    urls = [create_database(server_url, n) for n in names]
    yield urls
    for n in names:
        drop_database(server_url, n)


def test_migrations_and_canonical_schema_agree(two_databases) -> None:
    migrated, canonical = two_databases
    with psycopg.connect(migrated, autocommit=True) as conn:
        migrate(conn)
    with psycopg.connect(canonical, autocommit=True) as conn:
        apply_canonical_schema(conn)
    a, b = snapshot(migrated), snapshot(canonical)
    for part in INTROSPECT:
        assert a[part] == b[part], f"{part} differ between migrations and schema.sql"
    assert len(a["triggers"]) == 14  # four per source, two on the audit log


def test_migrate_is_idempotent_and_recorded(two_databases) -> None:
    url = two_databases[0]
    with psycopg.connect(url, autocommit=True) as conn:
        first = migrate(conn)
        before = snapshot(url)
        second = migrate(conn)
        versions = conn.execute("SELECT version FROM aggjobs.schema_migrations").fetchall()
    assert [m.version for m in first.applied] == [m.version for m in migrations()]
    assert second.applied == []
    assert {p.action for p in first.plan.rollups} == {"new"}
    assert {p.action for p in second.plan.rollups} == {"unchanged"}
    assert snapshot(url) == before
    assert [v for (v,) in versions] == [m.version for m in migrations()]


def test_existing_source_tables_are_kept(two_databases) -> None:
    url = two_databases[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""CREATE TABLE public.agent_runs (id bigint PRIMARY KEY,
            workspace_id bigint NOT NULL, user_id bigint, agent_id bigint, status text NOT NULL,
            started_at timestamptz NOT NULL, completed_at timestamptz,
            runtime_seconds double precision, credits_consumed numeric(14,4), extra text)""")
        conn.execute("INSERT INTO agent_runs (id, workspace_id, status, started_at, extra)"
                     " VALUES (1, 1, 'running', now(), 'platform column')")
        migrate(conn)
        row = conn.execute("SELECT extra FROM agent_runs WHERE id = 1").fetchone()
    assert row == ("platform column",)


def test_a_failing_migration_changes_nothing(two_databases, monkeypatch) -> None:
    from aggjobs.db import migrate as m

    broken = [*m.migrations(), m.Migration(9999, "broken", "SELECT 1/0")]
    monkeypatch.setattr(m, "migrations", lambda: broken)
    url = two_databases[0]
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            m.migrate(conn)
        exists = conn.execute("SELECT to_regclass('aggjobs.watermarks')").fetchone()[0]
    assert exists is None


def test_views_are_recreated_only_when_views_sql_changed(two_databases) -> None:
    url = two_databases[0]
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        oid = "SELECT to_regclass('analytics.workspace_overview')::oid"
        first = conn.execute(oid).fetchone()[0]
        migrate(conn)
        assert conn.execute(oid).fetchone()[0] == first  # unchanged text: kept as it is
        # A view made by an older views.sql (its stamp differs) is replaced.
        conn.execute("COMMENT ON MATERIALIZED VIEW analytics.workspace_overview IS 'old'")
        migrate(conn)
        assert conn.execute(oid).fetchone()[0] != first
        stamps = conn.execute(
            "SELECT obj_description(to_regclass(v), 'pg_class') FROM unnest(%s::text[]) AS v",
            (["analytics.workspace_overview", "analytics.platform_daily_overview"],),
        ).fetchall()
        assert stamps[0] == stamps[1] and stamps[0][0].startswith("aggjobs views.sql ")


def test_the_sources_have_the_indexes_the_engine_reads_them_by(conn: psycopg.Connection) -> None:
    """docs/rollups.md: a time index for range scopes, (workspace_id, time) for key scopes."""
    from aggjobs.catalog import BUILTIN_SOURCES

    for source in BUILTIN_SOURCES:
        keys = {row[0] for row in conn.execute(
            "SELECT array_to_string(array_agg(a.attname ORDER BY k.n), ',')"
            " FROM pg_index AS i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
            " JOIN pg_attribute AS a ON a.attnum = k.attnum"
            " WHERE i.indrelid = %s::regclass AND a.attrelid = i.indrelid GROUP BY i.indexrelid",
            (f"{source.schema}.{source.table}",))}
        assert source.time_column in keys, (source.name, keys)
        assert f"{source.key_column},{source.time_column}" in keys, (source.name, keys)
