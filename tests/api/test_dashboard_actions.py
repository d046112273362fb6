"""The dashboard acted on in a real browser: a real `aggjobs serve`, a real Celery worker on
a real broker (Redis), Debian's headless Chromium driven by Selenium through Debian's
chromedriver. Clicks a run's link, "run now", starts a backfill that the worker runs to
success, cancels a queued one; a viewer's page has no action. Screenshots are kept
(tests/browser.py: $AGGJOBS_TEST_ARTIFACTS, else the test's tmp dir)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from aggjobs.api import tokens
from tests.api.serve import serving
from tests.browser import artifacts, webdriver
from tests.celery.conftest import Workers, broker_url, poll, workers  # noqa: F401  (fixtures)

from .conftest import NOW

LO, HI = NOW - timedelta(hours=4), NOW - timedelta(hours=1)
WAIT_S = 60


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    driver = webdriver(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, tmp_path: Path, name: str) -> Path:
    path = artifacts(tmp_path) / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    return path


def opened(driver, url: str) -> None:
    driver.get(url)
    poll(lambda: driver.find_element("tag name", "body").get_attribute("data-ready") == "1",
         WAIT_S, f"{url} to be ready")


def confirm(driver, expected: str) -> None:
    """Accept the action's confirmation, checking what it asks."""
    alert = poll(lambda: alert_or_none(driver), 10, "the confirmation")
    assert expected in alert.text, alert.text
    alert.accept()


def alert_or_none(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def result_text(driver) -> str:
    return driver.find_element("id", "action-result").text


def backfill_status(conn: psycopg.Connection, backfill_id: int) -> str:
    return conn.execute("SELECT status FROM aggjobs.backfills WHERE id = %s",
                        (backfill_id,)).fetchone()[0]


def start_backfill(driver, rollup: str) -> int:
    """Fill the form (the datetime inputs set by script: their typing is locale-bound),
    submit, confirm; the id of the backfill queued."""
    for box in driver.find_elements("css selector", "input[name=rollup]"):
        if box.is_selected() != (box.get_attribute("value") == rollup):
            box.click()  # the form keeps what was ticked before
    driver.execute_script(
        "var f = document.getElementById('backfill-form');"
        "f.elements.from.value = arguments[0]; f.elements.to.value = arguments[1];",
        f"{LO:%Y-%m-%dT%H:%M}", f"{HI:%Y-%m-%dT%H:%M}")
    driver.find_element("css selector", "#backfill-form button[type=submit]").click()
    confirm(driver, f"Backfill {rollup} from")
    text = poll(lambda: re.search(r"backfill (\d+) queued", result_text(driver)), WAIT_S,
                "the backfill to be queued")
    return int(text.group(1))


def row(driver, backfill_id: int) -> dict | None:
    """The backfill's row as the page shows it now (read in one script: the page's refresh
    replaces its elements at any time)."""
    return driver.execute_script(
        "var r = document.querySelector('tr.backfill[data-id=\"' + arguments[0] + '\"]');"
        "return r ? {status: r.className.split(' ')[1], text: r.innerText} : null;",
        backfill_id)


def row_status(driver, backfill_id: int) -> str | None:
    found = row(driver, backfill_id)
    return found["status"] if found else None


def test_operators_act_from_the_dashboard_in_chromium(
        browser, board, conn, workers: Workers, tmp_path) -> None:  # noqa: F811
    operator = tokens.create(conn, "oncall", "operator", actor="tests")[0]
    viewer = tokens.create(conn, "wallboard", "viewer", actor="tests")[0]
    with serving(workers.env(AGGJOBS_API_RATE_LIMIT="off")) as served:
        board_url = f"{served.base}/?token={operator}"
        opened(browser, board_url)
        # a run's link opens its page, with its steps; the token travels with it
        failed = conn.execute("SELECT max(id) FROM aggjobs.job_runs WHERE job = 'hourly_rollup'"
                              " AND status = 'failed'").fetchone()[0]
        browser.find_element("css selector",
                             f'#failures-section li[data-run="{failed}"] a.run-link').click()
        poll(lambda: f"/runs/{failed}?" in browser.current_url, WAIT_S, "the run's page")
        assert f"token={operator}" in browser.current_url
        steps = browser.find_elements("css selector", "#steps tr.step")
        assert "execution_metrics.hour" in [s.get_attribute("data-step") for s in steps]
        assert browser.find_element("id", "timeline")
        assert browser.find_elements("css selector", f'button[data-url="/api/runs/{failed}/retry"]')
        shot(browser, tmp_path, "run-page")

        # run now -> confirm -> the new run, linked from the jobs table
        opened(browser, board_url)
        before = conn.execute("SELECT max(id) FROM aggjobs.job_runs").fetchone()[0]
        browser.find_element(
            "css selector", 'button[data-url="/api/jobs/refresh_materialized_views/run"]').click()
        confirm(browser, "Run refresh_materialized_views now")
        poll(lambda: "of refresh_materialized_views: succeeded" in result_text(browser),
             WAIT_S, "the run's answer")
        new = conn.execute("SELECT max(id) FROM aggjobs.job_runs").fetchone()[0]
        assert new > before
        poll(lambda: browser.execute_script(
            "return document.querySelector(arguments[0]) !== null;",
            f'#jobs tr[data-job="refresh_materialized_views"] a[href^="/runs/{new}?"]'),
            WAIT_S, "the new run in the table")
        shot(browser, tmp_path, "run-now")

        # no worker yet: a backfill stays queued, and is cancelled from its row
        queued = start_backfill(browser, "credit_consumption")
        poll(lambda: row_status(browser, queued) == "queued", WAIT_S, "the queued row")
        browser.find_element(
            "css selector", f'button[data-url="/api/backfills/{queued}/cancel"]').click()
        confirm(browser, f"Cancel backfill {queued} of credit_consumption")
        poll(lambda: row_status(browser, queued) == "cancelled", WAIT_S, "the cancelled row")
        assert backfill_status(conn, queued) == "cancelled"

        # with a worker: a backfill runs to success, its progress on the page
        workers.start()
        done = start_backfill(browser, "user_activity")
        poll(lambda: row_status(browser, done) == "succeeded", WAIT_S * 2, "the backfill's end")
        text = row(browser, done)["text"]
        assert "100%" in text and "api:oncall" in text
        browser.execute_script("document.getElementById('backfills-section').scrollIntoView()")
        shot(browser, tmp_path, "backfills")

        # a viewer sees no action
        opened(browser, f"{served.base}/?token={viewer}")
        assert browser.find_elements("css selector", "button") == []
        assert browser.find_elements("id", "backfill-form") == []
        shot(browser, tmp_path, "viewer")
    audited = conn.execute("SELECT action, outcome, actor FROM aggjobs.audit_log"
                           " WHERE actor = 'api:oncall' ORDER BY id").fetchall()
    assert [(a, o.split(":")[0]) for a, o, _ in audited] == [
        ("run", "succeeded"), ("backfill", "queued"), ("backfill.cancel", "cancelled"),
        ("backfill", "queued"), ("backfill", "started"), ("backfill", "succeeded")]
