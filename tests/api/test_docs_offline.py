"""`/docs` (Swagger UI) and `/redoc` render offline: their scripts and styles come from the
app (the fastapi-offline package's copies), never from a CDN. Checked in headless Chromium
with every host but 127.0.0.1 made unresolvable, as on a machine with no network."""

from __future__ import annotations

import os
import re

import httpx
import pytest

from tests.browser import chromium, headless

from .serve import serving

OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


@pytest.fixture
def served(db_url):
    with serving({**os.environ, "AGGJOBS_DATABASE_URL": db_url}) as server:
        yield server


def test_docs_pages_load_nothing_from_another_host(served):
    for page in ("/docs", "/redoc"):
        html = httpx.get(served.base + page, timeout=10).text
        sources = re.findall(r'(?:src|href)=["\']([^"\']+)', html)
        assert sources, page
        assert all(s.startswith("/static/docs/") for s in sources), (page, sources)
        for source in sources:
            asset = httpx.get(served.base + source, timeout=10)
            assert asset.status_code == 200 and len(asset.content) > 1000, source


def test_swagger_ui_renders_the_routes_offline(served, tmp_path):
    dom = headless(chromium(), tmp_path / "profile", OFFLINE, "--virtual-time-budget=10000",
                   "--dump-dom", f"{served.base}/docs").stdout
    assert 'class="swagger-ui' in dom
    operations = re.findall(r'data-path="([^"]+)"', dom)
    assert {"/api/jobs", "/api/jobs/{job}/run", "/metrics"} <= set(operations)


def test_redoc_renders_the_routes_offline(served, tmp_path):
    dom = headless(chromium(), tmp_path / "profile", OFFLINE, "--virtual-time-budget=10000",
                   "--dump-dom", f"{served.base}/redoc").stdout
    assert "/api/jobs/{job}/runs" in dom  # ReDoc lists each route's path once rendered
    assert "aggjobs" in dom
