"""GET /api/rollups/{rollup}/{grain}/rows and `aggjobs rows` (docs/api.md, docs/rollups.md
"Live reads"): a rollup's rows from its table or its live view, paged, for viewers; bad input
is a 422 (exit 2) with the reason, never a 500."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from aggjobs.catalog import Grain
from tests import platform as p
from tests.acceptance.test_cli import cli, one_line_error

from .conftest import auth

H = timedelta(hours=1)
OPEN = Grain.HOUR.floor(datetime.now(UTC))


@pytest.fixture
def runs(conn, api_settings):
    """Six hours of runs in workspaces 1 and 2, refreshed up to the hour before the open
    one; then a late run in an old hour and two runs in the open hour, not refreshed."""
    for h in range(1, 7):
        for ws in (1, 2):
            p.run(conn, ws=ws, at=OPEN - h * H + timedelta(minutes=10), runtime=float(h))
    p.refresh_all(conn, api_settings, OPEN)
    p.run(conn, ws=1, at=OPEN - 3 * H + timedelta(minutes=20), runtime=100.0)  # late
    p.run(conn, ws=1, at=OPEN + timedelta(seconds=1), runtime=7.0)
    p.run(conn, ws=2, at=OPEN + timedelta(seconds=2), runtime=9.0)
    return api_settings


def get(client, keys, path: str, **params):
    return client.get(path, params=params, headers=auth(keys["viewer"]))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def totals(body: dict) -> dict:
    return {(r["workspace_id"], at(r["hour"])): r["total_executions"] for r in body["rows"]}


def test_the_table_and_the_live_view_differ_by_what_is_not_refreshed(client, keys, runs):
    path = "/api/rollups/execution_metrics/hour/rows"
    since = (OPEN - 6 * H).isoformat()
    table = get(client, keys, path, **{"from": since})
    live = get(client, keys, path, **{"from": since, "live": "true"})
    assert table.status_code == live.status_code == 200, (table.text, live.text)
    assert table.json()["columns"] == live.json()["columns"] == [
        "workspace_id", "hour", "total_executions", "successful_executions",
        "failed_executions", "avg_runtime", "p95_runtime", "total_credits", "updated_at"]
    old, late = totals(table.json()), totals(live.json())
    three = OPEN - 3 * H
    assert len(old) == 12 and old[(1, three)] == 1
    assert late[(1, three)] == 2  # the late run
    assert late[(1, OPEN)] == 1 and late[(2, OPEN)] == 1  # the open hour
    assert {k: v for k, v in late.items() if k != (1, three) and k[1] != OPEN} \
        == {k: v for k, v in old.items() if k != (1, three)}


def test_one_workspace_paged(client, keys, runs):
    path = "/api/rollups/execution_metrics/hour/rows"
    since = (OPEN - 6 * H).isoformat()
    seen, offset = [], 0
    while offset is not None:
        body = get(client, keys, path, workspace=1, live="true", limit=3, offset=offset,
                   **{"from": since}).json()
        assert len(body["rows"]) <= 3 and body["workspace"] == 1
        seen += body["rows"]
        offset = body["next_offset"]
    assert [at(r["hour"]) for r in seen] == [OPEN - h * H for h in range(6, -1, -1)]
    assert {r["workspace_id"] for r in seen} == {1}


@pytest.mark.parametrize(("path", "params", "words"), [
    ("/api/rollups/nope/hour/rows", {}, "unknown rollup 'nope'"),
    ("/api/rollups/execution_metrics/month/rows", {}, "unknown grain 'month'"),
    ("/api/rollups/agent_executions/week/rows", {}, "has no week grain"),
    ("/api/rollups/execution_metrics/hour/rows", {"from": "yesterday"}, "cannot parse"),
    ("/api/rollups/execution_metrics/hour/rows", {"from": "2026-01-01", "to": "2026-03-01"},
     "AGGJOBS_MAX_ROWS_DAYS (31)"),
    ("/api/rollups/execution_metrics/hour/rows", {"from": "2026-03-01", "to": "2026-01-01"},
     "must be before"),
    ("/api/rollups/execution_metrics/hour/rows", {"to": "2300-01-01"}, "supported times"),
    ("/api/rollups/execution_metrics/hour/rows", {"workspace": "x"}, "workspace"),
    ("/api/rollups/execution_metrics/hour/rows", {"workspace": "-1"}, "workspace"),
    ("/api/rollups/execution_metrics/hour/rows", {"workspace": str(2**70)}, "workspace"),
    ("/api/rollups/execution_metrics/hour/rows", {"limit": "0"}, "limit"),
    ("/api/rollups/execution_metrics/hour/rows", {"live": "maybe"}, "live"),
])
def test_bad_input_is_422_with_the_reason(client, keys, conn, path, params, words):
    response = get(client, keys, path, **params)
    assert response.status_code == 422, response.text
    assert words in response.text


def test_the_cli_prints_the_same_rows(runs, db_url):
    since = (OPEN - 6 * H).isoformat()
    result = cli("rows", "execution_metrics", "--workspace", "2", "--live", "--from", since,
                 "--json", url=db_url)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(at(r["hour"]), r["total_executions"]) for r in rows] == [
        (OPEN - h * H, 1) for h in range(6, -1, -1)]
    refused = cli("rows", "execution_metrics", "--grain", "week", "--from", "2026-01-01",
                  "--to", "2026-06-01", url=db_url)
    assert refused.returncode == 2
    assert "AGGJOBS_MAX_ROWS_DAYS (31)" in one_line_error(refused)
