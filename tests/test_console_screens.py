"""Console screens under AppTest: forms keep input after an error, irreversible actions ask first, dashboard
filters stay put across pages."""
from __future__ import annotations

from datetime import date

from sqlalchemy import text

from tests.console_app import on_page, texts


def staff_rows(rt) -> list[tuple]:
    with rt.db.connect() as conn:
        return conn.execute(text("SELECT username, role, disabled_at IS NULL FROM staff ORDER BY id")).all()


def test_a_taken_username_keeps_the_form_and_a_saved_one_empties_it(rt, team):
    at = on_page(rt, team["admin"], "pages/admin.py")
    at.text_input(key="staff_username").input("eve")
    at.text_input(key="staff_password").input("password-456")
    at.selectbox(key="staff_role").select("approver")
    at.button(key="staff_add").click().run()
    assert "the username eve is taken" in texts(at)
    assert (at.text_input(key="staff_username").value, at.text_input(key="staff_password").value,
            at.selectbox(key="staff_role").value) == ("eve", "password-456", "approver")
    at.text_input(key="staff_username").input("eva")
    at.button(key="staff_add").click().run()
    assert "Added eva as approver" in texts(at)
    assert at.text_input(key="staff_username").value == "" and at.selectbox(key="staff_role").value == "viewer"


def test_the_admins_last_sign_in_is_shown_not_none(rt, team):
    at = on_page(rt, team["admin"], "pages/admin.py")
    table = at.dataframe[0].value.set_index("username")
    assert table.loc["ada", "last sign-in"].endswith(" UTC")  # the first admin was signed in on creation
    assert table.loc["vic", "last sign-in"] == "never"


def test_disable_asks_first_and_cancel_does_nothing(rt, team):
    at = on_page(rt, team["admin"], "pages/admin.py")
    at.selectbox(key="staff_pick").select("vic (viewer)").run()
    at.button(key="staff_disable").click().run()
    assert "Disable vic?" in texts(at) and staff_rows(rt)[-1] == ("vic", "viewer", True)
    at.button(key="staff_disable_cancel").click().run()
    assert "Disable vic?" not in texts(at) and staff_rows(rt)[-1] == ("vic", "viewer", True)
    at.button(key="staff_disable").click().run()
    at.button(key="staff_disable_yes").click().run()
    assert "vic can no longer sign in" in texts(at) and staff_rows(rt)[-1] == ("vic", "viewer", False)


def test_revoke_asks_first(rt, team):
    at = on_page(rt, team["admin"], "pages/admin.py")
    at.text_input(key="client_name").input("shop")
    at.button(key="client_create").click().run()
    at.run()
    at.button(key="client_revoke").click().run()
    assert "Revoke shop?" in texts(at)
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT revoked_at FROM api_client")).scalar() is None
    at.button(key="client_revoke_yes").click().run()
    assert "Revoked shop" in texts(at)
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT revoked_at FROM api_client")).scalar() is not None


def test_dashboard_filters_stay_put_across_pages(rt, team):
    at = on_page(rt, team["viewer"], "pages/dash_usage.py")
    at.selectbox(key="usage_tz").select("Asia/Kolkata").run()
    at.selectbox(key="usage_action").select("COUPON").run()
    at.selectbox(key="usage_channel").select("SMS").run()
    at.date_input(key="usage_days").set_value((date(2026, 11, 1), date(2026, 11, 20))).run()
    assert not at.exception
    for page, prefix, has_channel in (("pages/dash_delivery.py", "delivery", True),
                                      ("pages/dash_limits.py", "limits", False),
                                      ("pages/home.py", None, False),  # a page without the filters between
                                      ("pages/dash_usage.py", "usage", True)):
        at.switch_page(page).run()
        assert not at.exception, page
        if prefix is None:
            continue
        assert at.selectbox(key=f"{prefix}_tz").value == "Asia/Kolkata", page
        assert at.selectbox(key=f"{prefix}_action").value == "COUPON", page
        assert at.date_input(key=f"{prefix}_days").value == (date(2026, 11, 1), date(2026, 11, 20)), page
        if has_channel:
            assert at.selectbox(key=f"{prefix}_channel").value == "SMS", page
        assert "2026-11-01 to 2026-11-20" in " ".join(c.value for c in at.caption), page


def test_unchanged_kpis_show_a_grey_zero_not_a_red_plus_zero(rt, team):
    at = on_page(rt, team["viewer"], "pages/dash_limits.py")
    deltas = {m.label: m.delta for m in at.metric}
    assert deltas["Daily limit"] == "0" and deltas["Lock"] == "0", deltas
    at.switch_page("pages/dash_usage.py").run()
    labels = [m.label for m in at.metric]
    assert "Time to validate p50" in labels and "Time to validate p95" in labels


def test_the_new_role_shown_is_the_picked_persons_own(rt, team):
    """Picking another staff member shows their own role under "New role", not the one shown for the last."""
    at = on_page(rt, team["admin"], "pages/admin.py")

    def new_role() -> str:
        [box] = [s for s in at.selectbox if s.label == "New role"]
        return box.value

    at.selectbox(key="staff_pick").select("eve (editor)").run()
    assert new_role() == "editor"
    at.selectbox(key="staff_pick").select("vic (viewer)").run()
    assert new_role() == "viewer"
    at.button(key="staff_change_role").click().run()  # unchanged: vic stays a viewer
    assert staff_rows(rt)[-1] == ("vic", "viewer", True)


def page_text(at) -> str:
    """Everything written on the page as text: messages, markdown and captions."""
    return "\n".join([texts(at), *(m.value for m in at.markdown), *(c.value for c in at.caption)])


def test_dry_run_shows_the_message_as_text_not_python(rt, team):
    at = on_page(rt, team["editor"], "pages/test_send.py")
    at.text_input(key="ts_entity_value").input("9955882233")
    at.checkbox(key="ts_dry").check()
    at.button(key="ts_submit").click().run()
    [message] = [c for c in at.code if "validation" in c.value]  # the built-in SMS, rendered with a sample code
    assert message.language != "python"


def test_a_send_through_a_provider_claims_no_outbox_message(rt, team):
    """The outbox heading appears only over messages the outbox took; a Twilio send leaves it out and says so."""
    import json

    from core.admin.gateways import save_gateway
    from core.db.models import GatewayConfigBase
    from tests.fakes import Answer, FakeProvider
    at = on_page(rt, team["editor"], "pages/test_send.py")
    at.text_input(key="ts_entity_value").input("9955882233")
    at.multiselect(key="ts_channels").select("SMS")
    at.button(key="ts_submit").click().run()
    assert "Outbox: what the recipient sees" in page_text(at)  # the development outbox sent it
    with FakeProvider() as twilio:
        twilio.script = [Answer(201, {"sid": "SMscreen1"})]
        with rt.session() as db:
            save_gateway(db, rt.box, actor=team["admin"], reason="walk",
                         credentials={"account_sid": "AC0123456789abcdef", "auth_token": "tok-0123456789"},
                         config=GatewayConfigBase(name="twilio-main", channel="SMS", provider="twilio_sms",
                                                  endpoint=twilio.url, sender="+15005550006",
                                                  options=json.dumps({"timeout_seconds": 5}), is_default=True), org_id=1)
        rt.configuration_changed()
        at.text_input(key="ts_entity_value").input("9955882244")
        at.button(key="ts_submit").click().run()
        assert len(twilio.requests) == 1
    assert not at.exception
    assert list(at.dataframe[0].value["gateway"]) == ["twilio-main"]
    assert "Outbox: what the recipient sees" not in page_text(at)
    assert "Nothing of this send is in the outbox" in page_text(at)


def chart_specs(at) -> list[dict]:
    import json
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def test_count_axes_tick_whole_numbers_and_no_empty_time_to_validate_chart(rt, team):
    """Two codes, none used: the per-day chart counts in whole ticks, and no time-to-validate chart is drawn
    around nothing (it drew a lone "0.000000" axis); a caption says why."""
    from core.runtime import run
    from core.services.generation import generate
    for number in ("+919955882233", "+919812345678"):
        run(generate(rt, {"entityType": "MOBILE", "entityValue": number, "action": "COUPON"}, org_id=1))
    at = on_page(rt, team["viewer"], "pages/dash_usage.py")
    assert not at.exception
    [per_day] = chart_specs(at)
    assert per_day["encoding"]["y"]["axis"]["tickMinStep"] == 1
    assert "no code issued in this period has been used yet" in page_text(at)


def test_forms_show_what_is_stored_after_visiting_another_page(rt, team):
    """Streamlit drops a widget's state when a run on another page does not draw it: coming back, the OTP
    configuration, gateway and template forms load what is stored again rather than showing 0s and blanks."""
    at = on_page(rt, team["admin"], "pages/config.py")
    assert at.number_input(key="cfg_code_length").value == 6
    at.switch_page("pages/templates.py").run()
    text_key = "tpl_text_COUPON_SMS"
    assert "validation_code" in at.text_area(key=text_key).value  # the built-in SMS
    at.switch_page("pages/gateways.py").run()
    assert at.checkbox(key="gw_enabled").value is True  # a new gateway starts enabled
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/config.py").run()
    assert not at.exception
    assert (at.number_input(key="cfg_code_length").value, at.number_input(key="cfg_validity").value) == (6, 10)
    at.switch_page("pages/templates.py").run()
    assert "validation_code" in at.text_area(key=text_key).value
    at.selectbox(key="tpl_channel").select("EMAIL").run()
    assert at.text_input(key="tpl_subject_COUPON_EMAIL").value == "Validation Code"
    at.switch_page("pages/gateways.py").run()
    assert at.checkbox(key="gw_enabled").value is True
    at.switch_page("pages/templates.py").run()  # the channel picked stays EMAIL only if its key survived
    at.selectbox(key="tpl_channel").select("EMAIL").run()
    assert at.text_input(key="tpl_subject_COUPON_EMAIL").value == "Validation Code"


def test_the_live_delivery_panel_says_the_filters_do_not_apply(rt, team):
    """It counts every action's messages: with the action filter on COUPON it must not pass for COUPON's."""
    from core.runtime import run
    from core.services.generation import generate
    run(generate(rt, {"entityType": "EMAIL", "entityValue": "walker@example.com", "action": "POINTS"}, org_id=1))
    at = on_page(rt, team["viewer"], "pages/dash_delivery.py")
    at.selectbox(key="delivery_action").select("COUPON").run()
    assert not at.exception
    assert [m.value for m in at.metric if m.label == "EMAIL"] == ["1 sent"]  # POINTS' email, shown under COUPON
    assert "the filters do not apply" in page_text(at)
