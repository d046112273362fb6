"""A raw row outside the supported times (issue 21, finding 1), and the state an older version
left for it, never make the dashboard, the API or the metrics answer 500; /api/jobs names it."""

from __future__ import annotations

from tests import platform as p
from tests.api.conftest import NOW, H, auth, hourly


def test_a_row_at_minus_infinity_is_a_problem_not_a_500(client, keys, conn, api_settings):
    p.run(conn, ws=1, at=NOW - 2 * H, runtime=2.0)
    assert hourly(api_settings) == "succeeded"
    conn.execute("INSERT INTO agent_runs (id, workspace_id, user_id, agent_id, status,"
                 " started_at, runtime_seconds, credits_consumed)"
                 " VALUES (990000003, 1, 1, 1, 'completed', '-infinity', 5, 1)")
    conn.execute("INSERT INTO aggjobs.pending_groups (rollup, grain, bucket, workspace_id)"
                 " VALUES ('execution_metrics', 'hour', '-infinity', 1)")  # an old fan-out's
    viewer = auth(keys["viewer"])
    for path in ("/", "/api/jobs", "/api/rollups", "/metrics"):
        assert client.get(path, headers=viewer).status_code == 200, path
    problems = client.get("/api/jobs", headers=viewer).json()["problems"]
    assert any("public.agent_runs: 1 row(s)" in x for x in problems), problems
    assert hourly(api_settings) == "succeeded"
    assert conn.execute("SELECT count(*) FROM aggjobs.pending_groups").fetchone()[0] == 0
