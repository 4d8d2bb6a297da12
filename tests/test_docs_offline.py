"""/docs renders in a real headless Chromium with every request off this machine refused.

FastAPI's own pages load Swagger UI from a CDN: on a host without internet access they stay blank.
The app serves the files itself (fastapi-offline); the browser here may reach 127.0.0.1 and nothing else.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import headless_chromium, require_chromium
from tests.conftest import TEST_KEY
from tests.servers import ApiServer, cli

pytestmark = pytest.mark.browser
require_chromium()


@pytest.fixture
def browser():
    with headless_chromium() as chromium:
        yield chromium
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


@pytest.fixture
def docs_server(tmp_path):
    env = {"OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY}
    cli(env, "migrate")
    with ApiServer(env) as server:  # uvicorn api:app, as the README says
        yield server


def _offline_page(browser):
    """A page whose requests to anywhere but loopback are aborted, and the list of those it aborted."""
    context = browser.new_context()
    refused: list[str] = []

    def only_loopback(route) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    return context, context.new_page(), refused


def test_swagger_ui_renders_every_operation_with_no_internet(docs_server, browser):
    context, page, refused = _offline_page(browser)
    try:
        page.goto(f"{docs_server.url}/docs", wait_until="load")
        page.locator(".opblock").first.wait_for(state="visible", timeout=30_000)
        operations = {line.strip() for line in page.locator(".opblock-summary-path").all_inner_texts()}
        assert {"/v2/otp/generate", "/v2/otp/validate", "/health"} <= operations, operations
        assert page.locator(".information-container .title").first.inner_text().startswith("OTP service")
    finally:
        context.close()
    assert refused == [], refused  # nothing even tried to leave the machine


def test_there_is_no_redoc_page_to_reach_out_for_its_logo(docs_server):
    """ReDoc's bundle loads its vendor's logo from a CDN: the app offers /docs only."""
    assert httpx.get(f"{docs_server.url}/redoc", timeout=30).status_code == 404
