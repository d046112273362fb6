"""Alerts: fired once per incident, resolved once when it clears, to the log and to a real
webhook receiver over HTTP."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS, Grain
from aggjobs.monitor import alerts
from tests.integration.test_monitor import NOW, fresh, hourly, poison  # noqa: F401 (fixture)


class Receiver:
    """A local webhook endpoint recording what it is sent; `fail_next` answers 500s first."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(500)
                else:
                    receiver.received.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str]]:
        return [(e["event"], e["incident"]) for e in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def break_hourly(conn) -> None:
    conn.execute("DELETE FROM analytics.execution_metrics_hourly")
    conn.execute("UPDATE aggjobs.watermarks SET watermark = NULL WHERE grain = 'hour'")
    poison(conn, True)


def test_an_incident_fires_once_and_resolves_once(conn, fresh, receiver, caplog):  # noqa: F811
    settings = fresh.model_copy(update={"alert_webhook_url": receiver.url,
                                        "quarantine_after": 10})
    assert hourly(settings) == "succeeded"
    break_hourly(conn)
    caplog.set_level(logging.INFO, logger="aggjobs.alerts")
    assert hourly(settings) == "failed"
    assert receiver.events() == []  # one failure: not yet an incident
    assert hourly(settings) == "failed"
    assert receiver.events() == [("fired", "failing:hourly_rollup")]
    fired = receiver.received[0]
    assert fired["source"] == "aggjobs" and "2 runs failed in a row" in fired["message"]
    assert "aggjobs runs --job hourly_rollup" in fired["todo"]
    assert hourly(settings) == "failed"  # still the same incident: nothing new sent
    assert receiver.events() == [("fired", "failing:hourly_rollup")]

    poison(conn, False)
    assert hourly(settings) == "succeeded"
    assert receiver.events() == [("fired", "failing:hourly_rollup"),
                                 ("resolved", "failing:hourly_rollup")]
    logged = [(r.levelname, r.status) for r in caplog.records if r.name == "aggjobs.alerts"]
    assert logged == [("ERROR", "fired"), ("INFO", "resolved")]
    rows = conn.execute("SELECT key, resolved_at IS NOT NULL FROM aggjobs.alerts").fetchall()
    assert rows == [("failing:hourly_rollup", True)]


def test_a_stale_table_is_an_incident_until_caught_up(conn, fresh, receiver):  # noqa: F811
    settings = fresh.model_copy(update={"alert_webhook_url": receiver.url})
    assert hourly(settings) == "succeeded"
    five_hours_on = NOW + timedelta(hours=5)
    events = alerts.evaluate(conn, settings, now=five_hours_on)
    stale = sorted(e["incident"] for e in events if e["event"] == "fired")
    assert stale == sorted(f"stale:analytics.{r.table(Grain.HOUR)}" for r in BUILTIN_ROLLUPS)
    assert alerts.evaluate(conn, settings, now=five_hours_on) == []  # once per incident
    events = alerts.evaluate(conn, settings)  # back to the present: fresh again
    assert sorted(e["incident"] for e in events if e["event"] == "resolved") == stale
    assert [e for e, _ in receiver.events()] == ["fired"] * len(stale) + ["resolved"] * len(stale)


def test_a_webhook_down_is_retried_and_never_fails_the_job(conn, fresh, receiver):  # noqa: F811
    settings = fresh.model_copy(update={"alert_webhook_url": receiver.url, "alert_failures": 1})
    break_hourly(conn)
    receiver.fail_next = 2  # two 500s, then accepted: delivered on the third attempt
    assert hourly(settings) == "failed"
    assert receiver.events() == [("fired", "failing:hourly_rollup")]
    receiver.server.shutdown()  # now nobody listens at all
    receiver.server.server_close()
    poison(conn, False)
    assert hourly(settings) == "succeeded"  # the resolve could not be delivered: no matter
    assert conn.execute("SELECT count(*) FROM aggjobs.alerts WHERE resolved_at IS NULL"
                        ).fetchone()[0] == 0
