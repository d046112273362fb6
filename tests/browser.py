"""Debian's Chromium, headless, for the tests that open pages in a real browser."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    """The browser's path; without one the test skips, or fails under CI (which installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (CI must install it: see .ci/run)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--disable-extensions", "--disable-background-networking",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=90, check=True)


def chromedriver() -> str:
    """Debian's chromedriver (package chromium-driver); skip, or fail under CI, without it."""
    found = shutil.which("chromedriver")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromedriver is not installed (CI must install it: see .ci/run)")
    pytest.skip("chromedriver is not installed (apt-get install -y chromium-driver)")


def webdriver(profile: Path, width: int = 1280, height: int = 1600):
    """Selenium driving Debian's headless Chromium through Debian's chromedriver: both paths
    given, so that Selenium Manager downloads nothing (SE_OFFLINE too)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver as selenium
    from selenium.webdriver.chrome.service import Service

    options = selenium.ChromeOptions()
    options.binary_location = chromium()
    for arg in ("--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
                "--disable-extensions", "--disable-background-networking",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return selenium.Chrome(options=options, service=Service(executable_path=chromedriver()))


def artifacts(tmp_path: Path) -> Path:
    """Where browser tests keep their screenshots: $AGGJOBS_TEST_ARTIFACTS, else a directory
    of the test's pytest tmp dir."""
    where = Path(os.environ.get("AGGJOBS_TEST_ARTIFACTS") or tmp_path / "artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where
