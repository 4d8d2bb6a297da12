"""The console tells the truth: its screens answer with the functions the engine sends with, and its
configuration and gateway forms load what is stored and save all of it or nothing.

Each "which gateway / which template" test compares what a screen shows (AppTest reading the rendered
page) with what a real generate then does: the delivery row's gateway, and the text a fake Twilio server on
127.0.0.1 received.
"""
from __future__ import annotations

import base64
import json
import re

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from core.admin.gateway_forms import GatewayForm, save_gateway_form
from core.admin.gateways import GatewayRefused, save_gateway
from core.db.models import GatewayConfigBase
from core.enums import Action
from core.issuing.action_config import ConfigRefused
from core.runtime import Runtime, run
from core.services.generation import generate
from tests.conftest import configure, make_settings
from tests.console_app import on_page, signed_in, texts
from tests.fakes import Answer, FakeProvider

PHONE = "+919955882233"
SID, TOKEN = "AC0123456789abcdef", "tok-secret-0123456789wxyz"


@pytest.fixture
def twilio_fake():
    with FakeProvider() as fake:
        yield fake


def add_twilio(rt, admin, fake, *, name="twilio-main", default=True, enabled=True, sid=SID, token=TOKEN):
    with rt.session() as db:
        save_gateway(db, rt.box, actor=admin, credentials={"account_sid": sid, "auth_token": token},
                     config=GatewayConfigBase(name=name, channel="SMS", provider="twilio_sms", endpoint=fake.url,
                                              sender="+15005550006", options=json.dumps({"timeout_seconds": 5}),
                                              is_default=default, enabled=enabled), org_id=1)
    rt.configuration_changed()


def delivery_gateways(rt) -> list[str]:
    with rt.db.connect() as conn:
        return list(conn.execute(text("SELECT gateway FROM delivery ORDER BY id")).scalars())


def gen(rt, number=PHONE, action="COUPON", **body):
    return run(generate(rt, {"entityType": "MOBILE", "entityValue": number, "action": action, **body}, org_id=1))


def elements(node):
    """Every element of the page in the order it is drawn (columns and tabs included)."""
    for child in getattr(node, "children", {}).values():
        yield child
        yield from elements(child)


def errors_after(at: AppTest, key: str) -> list[str]:
    """The error messages drawn right after the widget with this key: the ones "next to its field"."""
    found, after = [], False
    for element in elements(at.main):
        if after:
            if type(element).__name__ == "Error":
                found.append(element.value)
                continue
            if type(element).__name__ not in ("Block", "Column"):
                break
        elif getattr(element, "key", None) == key:
            after = True
    return found


def frame(at: AppTest, *columns: str):
    """The first table on the page with these columns."""
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def audit_count(rt, action: str) -> int:
    with rt.db.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM audit_log WHERE action = :a"), {"a": action}).scalar()


# --- one answer to "which gateway sends" ----------------------------------------------------------------

def test_status_shows_the_gateway_each_generate_then_uses(db_url, tmp_path, clock, team, twilio_fake):
    rt = Runtime(make_settings(db_url, tmp_path, test_numbers="+919000000001"), clock=clock)
    add_twilio(rt, team["admin"], twilio_fake)
    add_twilio(rt, team["admin"], twilio_fake, name="twilio-backup", default=False)
    configure(rt, Action.REGISTRATION, gateways="SMS=twilio-backup")
    at = signed_in(rt, team["viewer"]).run()
    assert not at.exception
    table = frame(at, "channel", "action", "gateway", "why")
    shown = {(r.channel, r.action): (r.gateway, r.why) for r in table.itertuples()}
    assert shown[("SMS", "every other action")] == ("twilio-main", "channel default")
    assert shown[("SMS", "REGISTRATION")] == ("twilio-backup", "action override (REGISTRATION: SMS=twilio-backup)")
    assert shown[("EMAIL", "every other action")] == ("outbox", "OTP_GATEWAY_EMAIL=outbox (no enabled default gateway)")
    assert shown[("every channel", "test numbers")][0] == "outbox"

    gen(rt, action="COUPON")
    gen(rt, "+919812345678", action="REGISTRATION")
    gen(rt, "+919000000001", action="COUPON")
    assert delivery_gateways(rt) == [shown[("SMS", "every other action")][0], shown[("SMS", "REGISTRATION")][0],
                                     shown[("every channel", "test numbers")][0]]
    assert len(twilio_fake.requests) == 2  # the test number never reached Twilio
    rt.db.dispose()


def test_a_disabled_override_is_shown_as_ignored_and_the_engine_agrees(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    add_twilio(rt, team["admin"], twilio_fake, name="twilio-old", default=False)
    configure(rt, Action.COUPON, gateways="SMS=twilio-old")
    with rt.session() as db:  # disabled after the override was saved
        save_gateway(db, rt.box, actor=team["admin"], credentials=None, config=GatewayConfigBase(
            name="twilio-old", channel="SMS", provider="twilio_sms", endpoint=twilio_fake.url, sender="+1",
            is_default=False, enabled=False), org_id=1)
    rt.configuration_changed()
    at = signed_in(rt, team["viewer"]).run()
    table = frame(at, "channel", "action", "gateway", "why")
    [row] = [r for r in table.itertuples() if (r.channel, r.action) == ("SMS", "COUPON")]
    assert row.gateway == "twilio-main" and "override twilio-old is disabled" in row.why
    gen(rt)
    assert delivery_gateways(rt) == ["twilio-main"]


def test_test_send_dry_run_names_the_gateway_the_send_then_uses(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    at = on_page(rt, team["editor"], "pages/test_send.py")
    at.text_input(key="ts_entity_value").input("9955882233")
    at.checkbox(key="ts_dry").check()
    at.button(key="ts_submit").click().run()
    [caption] = [c.value for c in at.caption if "Gateway:" in c.value]
    assert "Gateway: twilio-main (channel default)" in caption and "builtin" in caption
    assert twilio_fake.requests == []
    at.checkbox(key="ts_dry").uncheck()
    at.button(key="ts_submit").click().run()
    assert list(frame(at, "channel", "to", "gateway")["gateway"]) == ["twilio-main"] == delivery_gateways(rt)


# --- one answer to "which template wins" ----------------------------------------------------------------

def as_pattern(template: str) -> str:
    return re.escape(template).replace(re.escape("{{ validation_code }}"), r"(\d+)").replace(
        re.escape("{{ expiry_minutes }}"), "10")


def test_templates_page_shows_what_twilio_then_receives(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    at = on_page(rt, team["viewer"], "pages/templates.py")
    choice = frame(at, "channel", "used", "why").set_index("channel")
    assert choice.loc["SMS", "used"] == "builtin"
    builtin_text = at.text_area(key="tpl_text_COUPON_SMS").value
    gen(rt)
    assert re.fullmatch(as_pattern(builtin_text), twilio_fake.requests[-1].form()["Body"])

    # A version approved: the page now names it and shows its text, and that is what Twilio gets.
    at = on_page(rt, team["editor"], "pages/templates.py")
    at.text_area(key="tpl_text_COUPON_SMS").input("Acme: {{ validation_code }} opens your coupon").run()
    at.button(key="tpl_submit").click().run()
    at = on_page(rt, team["approver"], "pages/templates.py")
    at.button(key="tpl_approve").click().run()
    choice = frame(at, "channel", "used", "why").set_index("channel")
    assert choice.loc["SMS", "used"] == "approved" and choice.loc["SMS", "version"] == 1
    shown = at.text_area(key="tpl_text_COUPON_SMS").value
    assert shown == "Acme: {{ validation_code }} opens your coupon"
    gen(rt, "+919812345678")
    assert re.fullmatch(as_pattern(shown), twilio_fake.requests[-1].form()["Body"])
    # A template in the request body wins over both, as the page's caption says.
    gen(rt, "+919812345670", channels=[{"type": "SMS", "value": "+919812345670"}],
        template="Body {{ validation_code }} wins")
    assert twilio_fake.requests[-1].form()["Body"].startswith("Body ")


def test_after_approval_the_editor_shows_the_approved_version_at_once(rt, team):
    at = on_page(rt, team["editor"], "pages/templates.py")
    builtin_text = at.text_area(key="tpl_text_COUPON_SMS").value
    at.text_area(key="tpl_text_COUPON_SMS").input("First {{ validation_code }}").run()
    at.button(key="tpl_submit").click().run()

    approver = signed_in(rt, team["approver"]).run()
    approver.switch_page("pages/templates.py").run()
    assert approver.text_area(key="tpl_text_COUPON_SMS").value == builtin_text
    # A first version's approver sees what would change against what is in force: the built-in template.
    diff = next(c.value for c in approver.code if "built-in (in force)" in c.value)
    assert f"-text: {builtin_text}" in diff and "+text: First {{ validation_code }}" in diff
    approver.button(key="tpl_approve").click().run()
    assert "approved and active" in texts(approver)
    # Same session, no page change: the editor and the preview show the approved version.
    assert approver.text_area(key="tpl_text_COUPON_SMS").value == "First {{ validation_code }}"
    assert any(c.value.startswith("First ") for c in approver.code)
    # The Versions tab shows message text as text, not as Python.
    assert all(c.language != "python" for c in approver.code)
    # "Save and submit" now proposes nothing different from what is in force.
    approver.button(key="tpl_submit").click().run()
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT text FROM template_version ORDER BY id DESC")).scalar() \
            == "First {{ validation_code }}"


# --- the OTP configuration form -------------------------------------------------------------------------

def test_config_form_loads_what_is_stored_for_each_action(rt, team):
    configure(rt, Action.REGISTRATION, code_length=8, channel_budgets="SMS=20")
    at = on_page(rt, team["admin"], "pages/config.py")
    assert at.number_input(key="cfg_code_length").value == 6
    at.selectbox(key="cfg_action").select("REGISTRATION").run()
    assert at.number_input(key="cfg_code_length").value == 8
    assert at.text_input(key="cfg_channel_budgets").value == "SMS=20"
    at.selectbox(key="cfg_action").select("COUPON").run()
    assert at.number_input(key="cfg_code_length").value == 6 and at.text_input(key="cfg_channel_budgets").value == ""


def test_config_form_refuses_bad_values_next_to_their_fields_and_saves_nothing(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    at = on_page(rt, team["admin"], "pages/config.py")
    at.number_input(key="cfg_code_length").set_value(3)
    at.text_input(key="cfg_gateways").input("SMS=nope")
    at.text_input(key="cfg_channel_budgets").input("SMS=lots")
    at.number_input(key="cfg_validity").set_value(7)  # a good change: not saved either
    at.text_input(key="cfg_reason").input("shorter codes")
    at.button(key="cfg_save").click().run()
    assert not at.exception
    assert errors_after(at, "cfg_code_length") == ["code length must be between 4 and 50"]
    assert errors_after(at, "cfg_gateways") == ["there is no gateway named 'nope' (gateways for SMS: twilio-main)"]
    assert errors_after(at, "cfg_channel_budgets") == ["the SMS budget must be a whole number of at least 1"]
    assert "Saved" not in texts(at) and "Not saved: 3 problems" in texts(at)
    config = rt.config_for(1, Action.COUPON)
    assert (config.code_length, config.validity_minutes, config.gateways) == (6, 10, "")
    assert audit_count(rt, "config.update") == 0
    # The input is kept; 60 is refused too.
    assert at.text_input(key="cfg_gateways").value == "SMS=nope" and at.number_input(key="cfg_validity").value == 7
    at.number_input(key="cfg_code_length").set_value(60)
    at.button(key="cfg_save").click().run()
    assert errors_after(at, "cfg_code_length") == ["code length must be between 4 and 50"]
    # Errors belong to the submit that made them: the next run shows none.
    at.run()
    assert not at.error
    # Fixed: saved all at once, the reason used once and cleared.
    at.number_input(key="cfg_code_length").set_value(8)
    at.text_input(key="cfg_gateways").input("SMS=twilio-main")
    at.text_input(key="cfg_channel_budgets").input("")
    at.button(key="cfg_save").click().run()
    assert "Saved the configuration of COUPON" in texts(at) and not at.error
    config = rt.config_for(1, Action.COUPON)
    assert (config.code_length, config.validity_minutes, config.gateways) == (8, 7, "SMS=twilio-main")
    assert at.text_input(key="cfg_reason").value == ""
    # An unrelated later change is not logged with the earlier reason: it needs its own.
    at.number_input(key="cfg_validity").set_value(9)
    at.button(key="cfg_save").click().run()
    assert errors_after(at, "cfg_reason") == ["say why you make this change: it is kept in the audit log"]
    assert rt.config_for(1, Action.COUPON).validity_minutes == 7 and audit_count(rt, "config.update") == 1


def test_config_override_must_be_an_enabled_gateway_of_that_channel_everywhere(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    add_twilio(rt, team["admin"], twilio_fake, name="twilio-off", default=False, enabled=False)
    # The same check refuses the CLI's and the tests' path (update_action_config), not only the page.
    for text_, problem in (("SMS=twilio-off", "the gateway 'twilio-off' is disabled"),
                           ("EMAIL=twilio-main", "the gateway 'twilio-main' sends SMS, not EMAIL"),
                           ("SMS", "write CHANNEL=gateway name")):
        with pytest.raises(ConfigRefused) as refused:
            configure(rt, Action.COUPON, gateways=text_)
        assert any(problem in p for p in refused.value.problems["gateways"]), refused.value.problems
    assert rt.config_for(1, Action.COUPON).gateways == ""


# --- the Gateways form ----------------------------------------------------------------------------------

def test_editing_a_twilio_gateway_loads_it_keeps_provider_and_credentials(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    at = on_page(rt, team["admin"], "pages/gateways.py")
    at.selectbox(key="gw_pick").select("twilio-main").run()
    assert not at.exception
    assert at.text_input(key="gw_name").value == "twilio-main"
    assert at.selectbox(key="gw_channel").value == "SMS" and at.selectbox(key="gw_provider").value == "twilio_sms"
    assert at.text_input(key="gw_f_sender").value == "+15005550006"
    assert at.text_input(key="gw_f_endpoint").value == twilio_fake.url
    assert at.text_input(key="gw_f_credentials_auth_token").value == ""  # never shown back...
    assert f"••••{TOKEN[-4:]}" in at.text_input(key="gw_f_credentials_auth_token").placeholder  # ...only a hint
    page = " ".join(str(e.value) for e in elements(at.main) if hasattr(e, "value"))
    assert TOKEN not in page and SID not in page
    # Saved with only a reason: still Twilio, same credentials (Twilio gets the same basic auth).
    at.text_input(key="gw_f_sender").input("+15005550007")
    at.text_input(key="gw_reason").input("new sender number")
    at.button(key="gw_save").click().run()
    assert "Saved gateway twilio-main (twilio_sms for SMS)" in texts(at)
    assert at.text_input(key="gw_f_credentials_auth_token").value == "" and at.text_input(key="gw_reason").value == ""
    gen(rt)
    seen = twilio_fake.requests[-1]
    assert seen.form()["From"] == "+15005550007"
    assert seen.headers["authorization"] == "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    with rt.db.connect() as conn:
        detail, reason = conn.execute(text("SELECT detail, reason FROM audit_log WHERE action='gateway.save' "
                                           "ORDER BY id DESC LIMIT 1")).one()
    detail = json.loads(detail)
    assert reason == "new sender number" and detail["before"]["sender"] == "+15005550006"
    assert detail["after"]["sender"] == "+15005550007" and detail["credentials_changed"] == []
    assert TOKEN not in json.dumps(detail)


def test_gateway_form_saves_nothing_and_lists_every_problem(rt, team):
    at = on_page(rt, team["admin"], "pages/gateways.py")
    at.text_input(key="gw_name").input("tw")
    at.selectbox(key="gw_provider").select("twilio_sms").run()
    at.text_input(key="gw_f_endpoint").input("ftp://twilio")
    at.button(key="gw_save").click().run()
    assert errors_after(at, "gw_f_sender") == ["From number (E.164) is required"]
    assert errors_after(at, "gw_f_endpoint") == ["the URL must start with https:// (or http://)"]
    assert errors_after(at, "gw_f_credentials_auth_token") == ["Auth token is required"]
    assert errors_after(at, "gw_reason") == ["say why you make this change: it is kept in the audit log"]
    assert at.text_input(key="gw_f_endpoint").value == "ftp://twilio"  # the input is kept
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM gateway_config")).scalar() == 0
    assert audit_count(rt, "gateway.save") == 0


def test_a_new_gateway_cannot_overwrite_one_and_a_provider_change_is_explicit(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    form = GatewayForm("twilio-main", "SMS", "webhook_sms", {"endpoint": twilio_fake.url}, editing=None)
    with rt.session() as db, pytest.raises(GatewayRefused) as refused:
        save_gateway_form(db, rt.box, actor=team["admin"], form=form, reason="oops", org_id=1)
    assert "pick it above to edit it" in refused.value.problems["name"][0]
    form.editing = "twilio-main"
    with rt.session() as db, pytest.raises(GatewayRefused) as refused:
        save_gateway_form(db, rt.box, actor=team["admin"], form=form, reason="move to our webhook", org_id=1)
    assert "tick 'Change the provider'" in refused.value.problems["provider"][0]
    assert rt.all_gateway_rows(1)["twilio-main"].provider == "twilio_sms"
    # The programmatic path asks for it too.
    with rt.session() as db, pytest.raises(GatewayRefused):
        save_gateway(db, rt.box, actor=team["admin"], credentials=None, config=GatewayConfigBase(
            name="twilio-main", channel="SMS", provider="outbox"), org_id=1)
    form.change_provider = True
    with rt.session() as db:
        save_gateway_form(db, rt.box, actor=team["admin"], form=form, reason="move to our webhook", org_id=1)
    rt.configuration_changed()
    assert rt.all_gateway_rows(1)["twilio-main"].provider == "webhook_sms"
    with rt.session() as db:  # Twilio's credentials went with Twilio
        from core.admin.gateway_forms import stored_form
        assert stored_form(db, rt.box, "twilio-main", org_id=1).hints == {}


def test_send_a_test_message_through_a_gateway_reports_the_providers_answer(rt, team, twilio_fake):
    add_twilio(rt, team["admin"], twilio_fake)
    at = on_page(rt, team["admin"], "pages/gateways.py")
    at.selectbox(key="gw_pick").select("twilio-main").run()
    twilio_fake.script = [Answer(201, {"sid": "SMtest42"})]
    at.text_input(key="gw_test_to").input("+14155550100")
    at.button(key="gw_test_send").click().run()
    assert any("Provider answer: sent to" in s and "HTTP 201" in s and "SMtest42" in s for s in texts(at).split("\n"))
    [seen] = twilio_fake.requests
    form = seen.form()
    assert form["To"] == "+14155550100" and form["Body"].startswith("Test message from the OTP console")
    assert not re.search(r"\d{4,}", form["Body"])  # no code in it
    assert audit_count(rt, "gateway.test") == 1
    # A refusal is reported with its HTTP status and error, not as a success.
    twilio_fake.script = [Answer(401, {"message": "Authenticate"})]
    at.button(key="gw_test_send").click().run()
    assert any("Provider answer: failed" in e.value and "HTTP 401" in e.value and "Authenticate" in e.value
               for e in at.error)
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM delivery")).scalar() == 0  # a test is no delivery
