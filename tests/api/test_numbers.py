"""Every JSON answer of the API gives numbers as JSON numbers, never as strings ("12.5000"):
PostgreSQL's numeric (a run's seconds, a rollup's credits) included."""

from __future__ import annotations

import re
from datetime import timedelta

from .conftest import NOW, auth

NUMBER_TEXT = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def strings_that_are_numbers(value: object, path: str = "") -> list[str]:
    if isinstance(value, str):
        return [f"{path}={value!r}"] if NUMBER_TEXT.fullmatch(value) else []
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in strings_that_are_numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [bad for i, v in enumerate(value) for bad in strings_that_are_numbers(v, f"{path}[{i}]")]
    return []


def test_every_reading_route_answers_numbers_as_numbers(client, history, keys):
    window = {"from": (NOW - timedelta(hours=6)).isoformat(), "to": NOW.isoformat()}
    reads = [("/api/jobs", {}), ("/api/jobs/hourly_rollup/runs", {}), ("/api/rollups", {}),
             ("/api/backfills", {}), ("/api/retention", {}), ("/api/tokens", {}),
             ("/api/reports/latest", {}),
             ("/api/rollups/execution_metrics/hour/rows", {**window, "live": "true"})]
    for path, params in reads:
        got = client.get(path, params=params, headers=auth(keys["admin"]))
        assert got.status_code in (200, 404), (path, got.text)  # 404: no report yet
        assert strings_that_are_numbers(got.json()) == [], path
    runs = client.get("/api/jobs/hourly_rollup/runs", headers=auth(keys["viewer"])).json()
    assert runs and all(isinstance(r["seconds"], float) for r in runs)
    rows = client.get("/api/rollups/execution_metrics/hour/rows",
                      params={**window, "live": "true"}, headers=auth(keys["viewer"])).json()
    # numeric(14,4) sums of credits and numeric averages, as numbers
    assert rows["rows"] and all(r["total_credits"] == 1.5 for r in rows["rows"])
