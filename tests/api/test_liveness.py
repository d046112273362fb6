"""Liveness on the dashboard and in /metrics (docs/jobs.md, "Liveness"), from heartbeat rows
in the three states a process can be in: up, stopped cleanly, silent."""

from __future__ import annotations

import re

import psycopg
import pytest
from fastapi.testclient import TestClient

from aggjobs.api.app import create_api
from aggjobs.settings import Settings

from .conftest import auth
from .test_endpoints import scrape


def processes(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO aggjobs.heartbeats (kind, name, host, pid, queues, version, started_at,"
        " seen_at, stopped_at) VALUES"
        " ('worker', 'up@h', 'h', 11, '{aggjobs}', '0.1.0', now() - interval '1 hour',"
        "  now() - interval '2 seconds', NULL),"
        " ('worker', 'gone@h', 'h', 12, '{aggjobs}', '0.1.0', now() - interval '2 hours',"
        "  now() - interval '30 seconds', now() - interval '30 seconds'),"
        " ('scheduler', 'beat.13@h', 'h', 13, '{}', '0.1.0', now() - interval '1 hour',"
        "  now() - interval '10 minutes', NULL)")


@pytest.fixture
def live_client(settings: Settings, conn: psycopg.Connection):
    processes(conn)
    with TestClient(create_api(settings.model_copy(update={"liveness_seconds": 120}))) as c:
        yield c


def test_metrics_show_each_process_and_how_many_are_up(live_client, keys) -> None:
    m = scrape(live_client, keys)
    assert m[("aggjobs_worker_up", (("name", "up@h"),))] == 1
    assert m[("aggjobs_worker_up", (("name", "gone@h"),))] == 0
    assert m[("aggjobs_scheduler_up", (("name", "beat.13@h"),))] == 0
    assert m[("aggjobs_workers_up", ())] == 1 and m[("aggjobs_schedulers_up", ())] == 0
    assert 2 <= m[("aggjobs_worker_heartbeat_age_seconds", (("name", "up@h"),))] < 30
    assert 600 <= m[("aggjobs_scheduler_heartbeat_age_seconds", (("name", "beat.13@h"),))] \
        < 700


def test_dashboard_shows_each_process_and_the_missing_scheduler(live_client, keys) -> None:
    page = live_client.get("/", params={"token": keys["viewer"]}).text
    section = re.search(r'<section id="liveness-section">(.*?)</section>', page, re.DOTALL)[1]
    states = {name: state for state, name in re.findall(
        r'<tr class="process (\w+)" data-kind="\w+" data-name="([\w.@]+)"', section)}
    assert states == {"up@h": "up", "gone@h": "stopped", "beat.13@h": "silent"}
    assert "10 min ago" in section
    problems = re.search(r'<section id="problems-section">(.*?)</section>', page, re.DOTALL)[1]
    assert "no scheduler: none alive for 6" in problems and "beat.13@h" in problems
    assert "no worker" not in problems
    assert '<span id="verdict">unhealthy</span>' in page


def test_an_empty_install_says_so(client, keys) -> None:
    page = client.get("/", params={"token": keys["viewer"]}).text
    assert "No worker nor scheduler has ever sent a heartbeat." in page
    m = scrape(client, keys)
    assert m[("aggjobs_workers_up", ())] == 0 and m[("aggjobs_schedulers_up", ())] == 0
    assert not [k for k in m if k[0] == "aggjobs_worker_up"]
    assert client.get("/api/jobs", headers=auth(keys["viewer"])).status_code == 200
