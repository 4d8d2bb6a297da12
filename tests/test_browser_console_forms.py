"""The console's forms in a real browser: `streamlit run console.py` on a fresh SQLite database, headless Chromium.

Edit a stored Twilio gateway (the form loads it, credentials only as hints, saving keeps the provider), send
a test message through it to a fake Twilio server on 127.0.0.1, see Status name that gateway for SMS, and
watch the OTP configuration refuse an unknown gateway and a code length of 3 next to the fields, saving
nothing. A screenshot of each screen goes to tests/artifacts/forms-*.png.
"""
from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import text

from core.admin.gateways import save_gateway
from core.admin.staff import StaffIdentity, create_first_admin
from core.db.models import GatewayConfigBase
from core.runtime import Runtime
from core.settings import Settings
from tests.browser import ARTIFACTS, console_server, go, headless_chromium, require_chromium, settled, shot, wait_text
from tests.fakes import Answer, FakeProvider

SID, TOKEN = "AC0123456789abcdef", "tok-secret-0123456789wxyz"
pytestmark = pytest.mark.browser
require_chromium()


@pytest.fixture
def twilio_fake():
    with FakeProvider() as fake:
        fake.script = [Answer(201, {"sid": "SMbrowser1"})]
        yield fake


@pytest.fixture
def seeded(tmp_path, twilio_fake):
    """A fresh database with an admin and a Twilio gateway for SMS (pointed at the fake), as the console sees it."""
    env = {**os.environ, "OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}",
           "OTP_SECRET_KEY_FILE": str(tmp_path / "secret.key"), "OTP_LOGIN_FAILURE_DELAY_SECONDS": "0.1"}
    env.pop("OTP_SECRET_KEY", None)
    rt = Runtime(Settings(database_url=env["OTP_DATABASE_URL"], secret_key_file=tmp_path / "secret.key",
                          secret_key=""))
    with rt.session() as db:
        admin = create_first_admin(db, username="ada", password="correct horse 1")
        save_gateway(db, rt.box, actor=StaffIdentity(admin.id, admin.username, admin.role),
                     credentials={"account_sid": SID, "auth_token": TOKEN},
                     config=GatewayConfigBase(name="twilio-main", channel="SMS", provider="twilio_sms",
                                              endpoint=twilio_fake.url, sender="+15005550006",
                                              options=json.dumps({"timeout_seconds": 5}), is_default=True), org_id=1)
    yield env, rt
    rt.db.dispose()


@pytest.fixture
def console_url(seeded):
    env, _rt = seeded
    with console_server(env) as url:
        yield url


@pytest.fixture
def page():
    with headless_chromium() as chromium:
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        context.close()


def test_gateway_and_configuration_forms_in_chromium(console_url, page, seeded, twilio_fake):
    from playwright.sync_api import expect
    _env, rt = seeded
    page.goto(console_url)
    wait_text(page, "Sign in to the OTP console")
    page.get_by_label("Username", exact=True).fill("ada")
    page.get_by_label("Password", exact=True).fill("correct horse 1")
    page.get_by_role("button", name="Sign in").click()
    wait_text(page, "OTP service status")

    # 1. The Twilio gateway's form loads what is stored; the credentials only as hints.
    go(page, "Gateways", "Gateways")
    page.get_by_label("Gateway", exact=True).click()
    page.get_by_role("option", name="twilio-main").click()
    sender = page.get_by_label("From number (E.164)", exact=True)
    sender.wait_for(timeout=30_000)
    settled(page)
    assert sender.input_value() == "+15005550006"
    assert page.get_by_label("Name", exact=True).input_value() == "twilio-main"
    assert page.get_by_label("API base URL (empty: the provider's public API)").input_value() == twilio_fake.url
    token = page.get_by_label("Auth token", exact=True)
    assert token.input_value() == "" and f"••••{TOKEN[-4:]}" in token.get_attribute("placeholder")
    assert TOKEN not in page.content() and SID not in page.content()
    shot(page, "forms-gateway-edit")

    # Saved with a reason only: still Twilio, credentials kept.
    page.get_by_label("Why this change (kept in the audit log; required)").fill("checked the settings")
    page.get_by_role("button", name="Save gateway").click()
    wait_text(page, "Saved gateway twilio-main (twilio_sms for SMS)")
    settled(page)
    expect(page.get_by_label("Why this change (kept in the audit log; required)")).to_have_value("")

    # 2. A test message through it reaches the fake Twilio server, and its answer is shown.
    page.get_by_label("Send to (phone number or email address)").fill("+14155550100")
    page.get_by_role("button", name="Send a test message").click()
    wait_text(page, "Provider answer: sent")
    wait_text(page, "SMbrowser1")
    page.get_by_text("Provider answer: sent").scroll_into_view_if_needed()
    [seen] = twilio_fake.requests
    assert seen.form()["Body"].startswith("Test message from the OTP console")
    assert seen.form()["To"] == "+14155550100"
    shot(page, "forms-gateway-test")

    # 3. Status names the gateway the engine uses for SMS, and why.
    go(page, "Status", "OTP service status")
    page.locator("td[role=gridcell]", has_text="twilio-main").first.wait_for(state="attached", timeout=30_000)
    page.locator("td[role=gridcell]", has_text="channel default").first.wait_for(state="attached", timeout=30_000)
    wait_text(page, "Demo traffic")  # the end of the page: it is drawn
    shot(page, "forms-status")

    # 4. OTP configuration: an unknown gateway and a code length of 3 are refused next to their fields.
    go(page, "OTP configuration", "OTP configuration")
    page.get_by_label("Code length (4 to 50)").fill("3")
    page.get_by_label("Gateways for this action (e.g. SMS=twilio-main,EMAIL=smtp; empty: defaults)").fill("SMS=nope")
    page.get_by_label("Why this change (kept in the audit log; required)").fill("try it")
    page.get_by_role("button", name="Save configuration").click()
    wait_text(page, "Not saved: 2 problems")
    wait_text(page, "code length must be between 4 and 50")
    wait_text(page, "there is no gateway named 'nope'")
    assert page.get_by_text("Saved the configuration").count() == 0
    assert page.get_by_label("Code length (4 to 50)").input_value() == "3"  # the input is kept
    shot(page, "forms-config-errors")
    page.get_by_text("there is no gateway named 'nope'").scroll_into_view_if_needed()
    shot(page, "forms-config-errors-gateway")
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT code_length, gateways FROM action_config WHERE action='COUPON'")).one() \
            == (6, "")
        assert conn.execute(text("SELECT count(*) FROM audit_log WHERE action='config.update'")).scalar() == 0
    for name in ("forms-gateway-edit", "forms-gateway-test", "forms-status", "forms-config-errors",
                 "forms-config-errors-gateway"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
