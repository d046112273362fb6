"""`aggjobs audit [--since TS] [--limit N] [--json]` as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AGGJOBS = str(Path(sys.executable).with_name("aggjobs"))


def aggjobs(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGGJOBS_DATABASE_URL": db_url, "COLUMNS": "200"}
    return subprocess.run([AGGJOBS, *args], env=env, capture_output=True, text=True,
                          check=False, timeout=60)


def test_audit_lists_newest_first(db_url, conn):
    for i, at in enumerate(("2026-01-01T00:00Z", "2026-02-01T00:00Z", "2026-03-01T00:00Z")):
        conn.execute("INSERT INTO aggjobs.audit_log (at, actor, action, target, params, outcome,"
                     " source) VALUES (%s, %s, 'run', 'hourly_rollup', %s, 'succeeded', %s)",
                     (at, f"actor{i}", json.dumps({"n": i}), "10.1.2.3" if i == 2 else None))

    out = aggjobs(db_url, "audit", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["actor"] for r in rows] == ["actor2", "actor1", "actor0"]
    assert rows[0]["params"] == {"n": 2} and rows[0]["source"] == "10.1.2.3"

    since = json.loads(aggjobs(db_url, "audit", "--since", "2026-01-15", "--json").stdout)
    assert [r["actor"] for r in since] == ["actor2", "actor1"]
    limited = json.loads(aggjobs(db_url, "audit", "--limit", "1", "--json").stdout)
    assert [r["actor"] for r in limited] == ["actor2"]

    table = aggjobs(db_url, "audit")
    assert table.returncode == 0 and "actor2" in table.stdout and "10.1.2.3" in table.stdout

    bad = aggjobs(db_url, "audit", "--since", "yesterday-ish")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
