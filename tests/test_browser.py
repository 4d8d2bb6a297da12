"""The console in a real browser: `streamlit run console.py` driven by headless Chromium through Playwright.

First-admin setup, adding an approver, editing a template, approval by the second person, a test send, the
outbox, then the Status page's demo-traffic button (core.simulate through the real engine) and the three
dashboards it fills; a screenshot of each page is saved under tests/artifacts/.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ROOT
from tests.fakes import free_port
from tests.servers import stop, wait_until_up

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def console_url(tmp_path):
    port = free_port()
    env = {**os.environ, "OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}",
           "OTP_SECRET_KEY_FILE": str(tmp_path / "secret.key"), "OTP_LOGIN_FAILURE_DELAY_SECONDS": "0.1"}
    env.pop("OTP_SECRET_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "console.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health")
        yield url
    finally:
        stop(server)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(400)  # let Streamlit finish painting
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_text(page, text: str, timeout: float = 20_000) -> None:
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)


def sign_in(page, url: str, username: str, password: str) -> None:
    page.goto(url)
    wait_text(page, "Sign in to the OTP console")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    wait_text(page, "OTP service status")


def go(page, title: str, heading: str) -> None:
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=heading).first.wait_for(timeout=20_000)


def test_console_end_to_end_in_chromium(console_url, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()

    # 1. First start: create the admin.
    page.goto(console_url)
    wait_text(page, "create the first admin")
    shot(page, "01-first-admin")
    page.get_by_label("Username", exact=True).fill("ada")
    page.get_by_label("Password (at least 10 characters)", exact=True).fill("correct horse 1")
    page.get_by_label("Repeat the password", exact=True).fill("correct horse 1")
    page.get_by_role("button", name="Create admin account").click()
    wait_text(page, "OTP service status")
    wait_text(page, "Database reachable")
    shot(page, "02-status")

    # 2. The admin adds an approver.
    go(page, "Staff and API clients", "Staff and API clients")
    page.get_by_label("Username", exact=True).fill("abe")
    page.get_by_label("Initial password", exact=True).fill("password-123")
    page.get_by_label("Role", exact=True).click()
    page.get_by_role("option", name="approver").click()
    page.get_by_role("button", name="Add").click()
    wait_text(page, "Added abe as approver")
    shot(page, "03-staff")

    # 3. The admin edits the COUPON SMS template and submits it.
    go(page, "Templates", "Templates")
    editor = page.get_by_label("Text", exact=True)
    editor.fill("Acme: {{ validation_code }} is your code ({{ expiry_minutes }} min)")
    editor.press("Tab")
    wait_text(page, "All checks pass.")
    wait_text(page, "GSM-7")
    shot(page, "04-template-edit")
    page.get_by_role("button", name="Save and submit for review").click()
    wait_text(page, "awaits approval")

    # 4. The approver (a second person) approves it.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, console_url, "abe", "password-123")
    go(page, "Templates", "Templates")
    page.get_by_role("tab", name="Versions").click()
    page.get_by_role("button", name="Approve and activate").click()
    wait_text(page, "approved and active")
    shot(page, "05-template-approved")

    # 5. A test send through the engine, then the outbox.
    go(page, "Test send", "Test send")
    page.get_by_label("Mobile number or email", exact=True).fill("9955882233")
    page.get_by_role("button", name="Send test OTP").click()
    wait_text(page, "what the recipient sees")
    body = page.get_by_text("Acme: ").first.inner_text()
    assert body.startswith("Acme: ") and "is your code (10 min)" in body
    shot(page, "06-test-send")

    go(page, "Outbox", "Outbox")
    page.get_by_test_id("stDataFrame").first.wait_for(timeout=20_000)
    # The grid draws on a canvas; its accessible cells carry the text.
    page.locator("td[role=gridcell]", has_text="+919955882233").first.wait_for(state="attached", timeout=20_000)
    shot(page, "07-outbox")

    # 6. Demo traffic from the Status page, then the three dashboards it fills.
    go(page, "Status", "OTP service status")
    page.get_by_role("button", name="Simulate a little traffic").click()
    wait_text(page, "Simulated 3 days", timeout=120_000)
    for link, heading, filled, name in (("Daily usage", "Daily usage", "Per day and action", "08-dash-usage"),
                                        ("Delivery", "Delivery", "Per channel and gateway", "09-dash-delivery"),
                                        ("Rate limits", "Rate limits", "Most refused users", "10-dash-limits")):
        go(page, link, heading)
        wait_text(page, filled, timeout=60_000)
        page.get_by_test_id("stVegaLiteChart").first.wait_for(timeout=60_000)
        page.get_by_test_id("stDataFrame").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # the charts draw after their data arrives
        values = [v.inner_text() for v in page.get_by_test_id("stMetricValue").all()]
        assert values and any(v.strip() not in ("0", "–", "0.0%") for v in values), (heading, values)
        shot(page, name)
    context.close()
    for name in ("01-first-admin", "02-status", "03-staff", "04-template-edit", "05-template-approved",
                 "06-test-send", "07-outbox", "08-dash-usage", "09-dash-delivery", "10-dash-limits"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
