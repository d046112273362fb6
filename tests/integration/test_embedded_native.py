"""The C functions on the embedded PostgreSQL 18, as `aggjobs up` builds them (issue 20):
built with the wheel's pg_config into the data directory, found by the server through
extension_control_path and dynamic_library_path, and giving the same rows as the portable SQL.

Embedded run only: CI's other run has PostgreSQL 15 with its own `make native`. The test starts
an embedded server of its own, so the suite's shared one keeps running the portable SQL.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from aggjobs.db import embedded_native
from aggjobs.db.embedded import embedded_url, stop_embedded
from aggjobs.db.migrate import migrate
from aggjobs.engine.recompute import native_installed
from aggjobs.engine.status import rollup_status
from aggjobs.operations.up import native_for_embedded
from aggjobs.settings import Settings
from tests.conftest import create_database
from tests.integration.test_native import T0, assert_same_with_and_without

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AGGJOBS_TEST_DATABASE_URL")),
    reason="the embedded run's test (the other run's server has `make native`'s extension)")


def require_compiler() -> embedded_native.Toolchain:
    tc = embedded_native.toolchain()
    if isinstance(tc, str) and tc.startswith(("no C compiler", "no make")):
        pytest.skip(f"cannot build aggjobs_native here: {tc}")
    assert isinstance(tc, embedded_native.Toolchain), tc
    return tc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An embedded server of this test's own: its data directory and URL."""
    data_dir = tmp_path / "aggjobs"
    data_dir.mkdir()
    try:
        yield data_dir, embedded_url(data_dir)
    finally:
        stop_embedded(data_dir)


def test_the_embedded_server_computes_the_same_rows_with_the_c_functions(
        server: tuple[Path, str]) -> None:
    tc = require_compiler()
    data_dir, url = server
    got = embedded_native.prepare(data_dir, url)
    assert got.ready and got.built, got.reason
    assert embedded_native.prepare(data_dir, url) == embedded_native.NativeBuild(
        True, built=False, version=got.version)  # nothing changed: not built again
    wheel_share = Path(embedded_native.pg_config_value(tc.pg_config, "--sharedir"))
    assert not (wheel_share / "extension" / "aggjobs_native.control").exists()
    db = create_database(url, "aggjobs_native_rows")
    with psycopg.connect(db, autocommit=True) as conn:
        migrate(conn)
        assert native_installed(conn)
        paths = {r["rollup"]: r["path"] for r in rollup_status(conn, now=T0)}
        assert paths["execution_metrics"] == paths["user_activity"] == "native"
        assert paths["credit_consumption"] == "sql"
        assert_same_with_and_without(conn)
        migrate(conn, native=False)
        paths = {r["rollup"]: r["path"] for r in rollup_status(conn, now=T0)}
        assert paths["execution_metrics"] == paths["user_activity"] == "portable"
        assert paths["credit_consumption"] == "sql"


def test_a_failed_build_is_one_line_and_leaves_nothing_installed(
        server: tuple[Path, str], tmp_path: Path) -> None:
    tc = require_compiler()
    data_dir, url = server
    assert embedded_native.prepare(data_dir, url).ready
    broken = tmp_path / "broken"
    shutil.copytree(tc.sources, broken)
    with open(broken / "aggjobs_native.c", "a") as f:
        f.write("\nthis is not C;\n")
    got = embedded_native.prepare(data_dir, url, sources=broken)
    log = data_dir.resolve() / "native" / "build.log"
    assert not got.ready and got.reason == f"the build failed (log: {log})"
    assert "error" in log.read_text()
    assert not embedded_native.installed(data_dir.resolve() / "native")
    with psycopg.connect(url, autocommit=True) as conn:  # the server finds no extension
        assert not conn.execute("SELECT count(*) FROM pg_available_extensions"
                                " WHERE name = 'aggjobs_native'").fetchone()[0]
    assert embedded_native.prepare(data_dir, url).built  # the good sources: built again


def test_the_flags_the_compiler_refuses_are_dropped() -> None:
    tc = require_compiler()
    flags = ["-Wall", "-Wformat-security", "-Wsuch-warning-at-all", "-O2"]
    assert embedded_native.accepted_flags(tc.cc, flags) == ["-Wall", "-Wformat-security", "-O2"]


def test_aggjobs_native_false_builds_nothing_and_says_so(tmp_path: Path) -> None:
    off = Settings(native=False, data_dir=tmp_path, database_url=None)
    assert native_for_embedded(off) == (False, "rollups: portable SQL (AGGJOBS_NATIVE=false)")
    assert not (tmp_path / "native").exists()
    own = Settings(native=True, data_dir=tmp_path, database_url="postgresql://h/db")
    assert native_for_embedded(own) == (True, None)  # the platform's server: `make native`
    assert not (tmp_path / "native").exists()
