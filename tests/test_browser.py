"""The console in a real browser: `streamlit run console.py` driven by headless Chromium through Playwright.

First-admin setup, adding an approver, editing a template, approval by the second person, a test send, the
outbox, then the Status page's demo-traffic button (simulate through the real engine) and the three
dashboards it fills; a screenshot of each page is saved under tests/artifacts/.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import (ARTIFACTS, console_server, go, headless_chromium, require_chromium, settled, shot, sign_in,
                           sign_out, wait_text)

pytestmark = pytest.mark.browser
require_chromium()


@pytest.fixture
def console_url(tmp_path):
    env = {**os.environ, "OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}",
           "OTP_SECRET_KEY_FILE": str(tmp_path / "secret.key"), "OTP_LOGIN_FAILURE_DELAY_SECONDS": "0.1"}
    env.pop("OTP_SECRET_KEY", None)
    with console_server(env) as url:
        yield url


@pytest.fixture
def browser():
    with headless_chromium() as chromium:
        yield chromium


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
    sign_out(page)
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
        settled(page)
        values = [v.inner_text() for v in page.get_by_test_id("stMetricValue").all()]
        assert values and any(v.strip() not in ("0", "–", "0.0%") for v in values), (heading, values)
        # No KPI value is cut off ("12.3 s / 45.6 s" was), and no unchanged KPI claims a change ("↑ +0").
        clipped = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stMetricValue"]')]
            .filter(v => v.scrollWidth > v.clientWidth + 1).map(v => v.innerText)""")
        assert clipped == [], (heading, clipped)
        deltas = page.get_by_test_id("stMetricDelta").all()
        texts = [d.inner_text().strip() for d in deltas]
        assert not [t for t in texts if t.startswith(("+0", "-0")) and t.lstrip("+-").strip() in ("0", "0.0 pp")], texts
        arrows = [d.locator("svg").count() for d in deltas]
        assert all(not a for a, t in zip(arrows, texts) if t == "0"), texts  # grey, no arrow
        assert all(a for a, t in zip(arrows, texts) if t != "0"), texts  # (a real change has one)
        shot(page, name)

    # 7. The dashboard filters stay put across pages.
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_label("Action", exact=True).click()
    page.get_by_role("option", name="COUPON", exact=True).click()
    settled(page)
    for link, heading in (("Daily usage", "Daily usage"), ("Status", "OTP service status"), ("Delivery", "Delivery")):
        go(page, link, heading)
    settled(page)
    chosen = sidebar.get_by_label("Action", exact=True).input_value()
    assert chosen == "COUPON", chosen
    shot(page, "11-filters-kept")
    context.close()
    for name in ("01-first-admin", "02-status", "03-staff", "04-template-edit", "05-template-approved",
                 "06-test-send", "07-outbox", "08-dash-usage", "09-dash-delivery", "10-dash-limits",
                 "11-filters-kept"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


def heading(page, text: str) -> None:
    page.get_by_role("heading", name=text).first.wait_for(timeout=20_000)


def choose(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    settled(page)


def test_sessions_audit_and_admin_screens_in_chromium(console_url, browser):
    """A reload keeps the session; a signed-out reload of a page lands on the sign-in form and then on that
    page; every sign-in, failure, test send and change is in the audit log, filtered and exported; a taken
    username keeps the form; Disable and Revoke ask first."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(console_url)
    wait_text(page, "create the first admin")
    page.get_by_label("Username", exact=True).fill("ada")
    page.get_by_label("Password (at least 10 characters)", exact=True).fill("correct horse 1")
    page.get_by_label("Repeat the password", exact=True).fill("correct horse 1")
    page.get_by_role("button", name="Create admin account").click()
    heading(page, "OTP service status")

    # 1. A reload keeps the session: the cookie holds a random token, the URL holds nothing secret.
    go(page, "Templates", "Templates")
    settled(page)
    [cookie] = [c for c in context.cookies() if c["name"] == "otp_console_session"]
    assert len(cookie["value"]) >= 40 and cookie["value"] not in page.url
    page.reload()
    heading(page, "Templates")
    wait_text(page, "Signed in as")
    assert page.url.endswith("/templates")
    shot(page, "20-reload-keeps-session")

    # 2. Sign out, then reload a page: the sign-in form, no "Page not found", and back to that page after.
    page.get_by_role("button", name="Sign out").click()
    heading(page, "Sign in to the OTP console")
    settled(page)
    assert not [c for c in context.cookies() if c["name"] == "otp_console_session"]
    page.goto(f"{console_url}/templates")
    heading(page, "Sign in to the OTP console")
    settled(page)
    assert page.get_by_text("Page not found").count() == 0
    shot(page, "21-signed-out-reload")
    page.get_by_label("Username", exact=True).fill("ada")
    page.get_by_label("Password", exact=True).fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    wait_text(page, "Unknown username or wrong password.")
    page.get_by_label("Password", exact=True).fill("correct horse 1")
    page.get_by_role("button", name="Sign in").click()
    heading(page, "Templates")
    assert page.url.endswith("/templates")

    # 3. Add staff: a taken username keeps what was typed; then the right name saves and empties the form.
    go(page, "Staff and API clients", "Staff and API clients")
    page.get_by_label("Username", exact=True).fill("ada")
    page.get_by_label("Initial password", exact=True).fill("password-123")
    choose(page, "Role", "approver")
    page.get_by_role("button", name="Add").click()
    wait_text(page, "the username ada is taken")
    settled(page)
    assert page.get_by_label("Username", exact=True).input_value() == "ada"
    assert page.get_by_label("Initial password", exact=True).input_value() == "password-123"
    assert page.get_by_label("Role", exact=True).input_value() == "approver"
    shot(page, "22-staff-taken-name-kept")
    page.get_by_label("Username", exact=True).fill("abe")
    page.get_by_role("button", name="Add").click()
    wait_text(page, "Added abe as approver")
    settled(page)
    assert page.get_by_label("Username", exact=True).input_value() == ""
    grid = page.get_by_test_id("stDataFrame").first
    grid.locator("td[role=gridcell]", has_text="UTC").first.wait_for(state="attached")
    assert grid.locator("td[role=gridcell]", has_text="None").count() == 0

    # 4. Disable asks first; Cancel leaves the account alone.
    page.get_by_role("button", name="Disable account").click()
    wait_text(page, "Disable abe?")
    shot(page, "23-disable-asks-first")
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Disable abe?").wait_for(state="detached")
    settled(page)
    assert page.get_by_text("can no longer sign in").count() == 0

    # 5. Revoke asks first, then revokes.
    page.get_by_role("tab", name="API clients").click()
    page.get_by_label("Client name", exact=True).fill("shop")
    page.get_by_role("button", name="Create client").click()
    wait_text(page, "Copy the secret now")
    settled(page)
    page.get_by_role("tab", name="API clients").click()
    page.get_by_role("button", name="Revoke").click()
    wait_text(page, "Revoke shop?")
    shot(page, "24-revoke-asks-first")
    page.get_by_role("button", name="Yes, revoke shop").click()
    wait_text(page, "Revoked shop.")

    # 6. A test send and a validation, audited without the code.
    go(page, "Test send", "Test send")
    page.get_by_label("Mobile number or email", exact=True).fill("9955882233")
    page.get_by_role("button", name="Send test OTP").click()
    wait_text(page, "what the recipient sees")
    settled(page)
    code = page.evaluate(r"""() => [...document.querySelectorAll('[data-testid="stText"]')]
        .map(t => t.innerText).find(t => /\d{4,}/.test(t))""").rsplit(" ", 1)[-1].rstrip(".")
    page.get_by_label("Try a code", exact=True).fill(code)
    page.get_by_role("button", name="Validate").click()
    wait_text(page, "Valid: the code is now used.")

    # 7. The audit log: filtered by kind, exported as CSV without a password or a code.
    go(page, "Audit log", "Audit log")
    choose(page, "Kind", "Sign-ins and sign-outs")
    grid = page.get_by_test_id("stDataFrame").first
    grid.locator("td[role=gridcell]", has_text="staff.create").first.wait_for(state="detached")
    for action in ("session.sign_in_failed", "session.sign_out", "session.sign_in"):
        grid.locator("td[role=gridcell]", has_text=action).first.wait_for(state="attached")
    shot(page, "25-audit-sign-ins")
    choose(page, "Kind", "everything")
    # The rerun may not have begun when choose() returns: wait for the table to show every kind again.
    grid.locator("td[role=gridcell]", has_text="staff.create").first.wait_for(state="attached")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    exported = Path(download.value.path()).read_text()
    for action in ("session.sign_in_failed", "session.sign_out", "test.send", "test.validate", "staff.create",
                   "client.create", "client.revoke"):
        assert action in exported, action
    assert "correct horse" not in exported and "not the password" not in exported and code not in exported
    assert "9955882233" not in exported
    shot(page, "26-audit-all")
    context.close()


def test_a_deep_link_right_after_the_console_starts_lands_on_its_frame(console_url, browser):
    """Until console.py's frame has run once, Streamlit routes /config straight to pages/config.py; that page must
    hand over to the frame (sign-in or first admin), not show a KeyError and a sidebar of file names."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{console_url}/config")  # the first request this server gets
    wait_text(page, "create the first admin")
    settled(page)
    body = page.inner_text("body")
    assert "KeyError" not in body and "Traceback" not in body and "dash limits" not in body, body[:500]
    shot(page, "27-deep-link-after-start")
