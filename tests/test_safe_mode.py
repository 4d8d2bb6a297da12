"""Channel budgets per action and the safe mode, on SQLite and PostgreSQL: counting, email-only rerouting,
the budget_trip event, the home page alert, the configuration page and the rate-limit dashboard."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import event, text

from core import errors as E
from core.enums import Action
from core.errors import OtpError
from core.issuing import safe_mode
from core.runtime import Runtime, run
from core.services.dry_run import dry_run
from core.services.generation import generate
from core.services.validation import validate
from tests.conftest import code_sent_to, configure, make_settings, outbox

PHONE = "+919955882233"
EMAIL = "someone@example.com"


@pytest.fixture
def build(db_url, tmp_path, clock):
    """Runtimes with chosen settings (the abuse limits off, as in make_settings), disposed after the test."""
    made: list[Runtime] = []

    def factory(**overrides) -> Runtime:
        made.append(Runtime(make_settings(db_url, tmp_path, **overrides), clock=clock))
        return made[-1]
    yield factory
    for rt in made:
        rt.db.dispose()


def gen(rt, number=PHONE, action="COUPON", channels=None, **body):
    payload = {"entityType": "MOBILE", "entityValue": number, "action": action, **body}
    if channels is not None:
        payload["channels"] = channels
    return run(generate(rt, payload, org_id=1))


def sms(number=PHONE):
    return {"type": "SMS", "value": number}


def email(address=EMAIL):
    return {"type": "EMAIL", "value": address}


def refused(call, *args, **kwargs) -> OtpError:
    with pytest.raises(OtpError) as info:
        call(*args, **kwargs)
    return info.value


def counters(rt) -> dict[tuple[str, str], int]:
    with rt.db.connect() as conn:
        return {(r[0], r[1]): r[2] for r in conn.execute(text(
            "SELECT scope, user_key, count FROM usage_counter WHERE scope LIKE 'budget%'"))}


def trips(rt) -> list[str]:
    with rt.db.connect() as conn:
        return list(conn.execute(text("SELECT detail FROM security_event WHERE kind = 'budget_trip' ORDER BY id"))
                    .scalars())


def channels_sent(rt) -> list[tuple[str, str]]:
    return [(m["channel"], m["recipient"]) for m in outbox(rt)]


# Per-action budgets -------------------------------------------------------------------------------------
def test_an_actions_budget_counts_besides_the_service_wide_one(build):
    rt = build(channel_budgets="SMS=3")
    configure(rt, Action.REGISTRATION, channel_budgets="SMS=2")
    gen(rt, "+919812345671", "REGISTRATION")
    gen(rt, "+919812345672", "REGISTRATION")
    error = refused(gen, rt, "+919812345673", "REGISTRATION")
    assert error.http_status == 429 and error.problems[0].reason == "budget"
    assert "SMS budget of REGISTRATION of 2 is spent" in error.problems[0].message
    # The refusal rolled back the service-wide count it had taken before the action's budget refused.
    assert counters(rt) == {("budget", "SMS"): 2, ("budget:REGISTRATION", "SMS"): 2}
    gen(rt, "+919812345674", "COUPON")  # other actions have only the service-wide budget, one unit left
    assert refused(gen, rt, "+919812345675", "COUPON").problems[0].reason == "budget"
    assert counters(rt) == {("budget", "SMS"): 3, ("budget:REGISTRATION", "SMS"): 2}
    assert [r for r in trips(rt)] == ["SMS, REGISTRATION budget", "SMS"]


def test_a_refusal_by_the_actions_budget_counts_nothing(build):
    rt = build(channel_budgets="SMS=10", daily_limit=50)
    configure(rt, Action.COUPON, channel_budgets="SMS=1,EMAIL=5")
    gen(rt, "+919812345671")
    assert refused(gen, rt, "+919812345672", channels=[email("a@b.com"), sms("+919812345672")]) \
        .problems[0].reason == "budget"
    assert counters(rt) == {("budget", "SMS"): 1, ("budget:COUPON", "SMS"): 1}  # no EMAIL count was kept
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_counter WHERE user_key LIKE '%9812345672'")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM otp_code")).scalar() == 1


# Email-only safe mode ----------------------------------------------------------------------------------------
def test_email_only_drops_the_spent_phone_channel_for_the_requests_email_channel(build):
    rt = build(channel_budgets="SMS=1", safe_mode="email_only")
    gen(rt, "+919812345671")
    result = gen(rt, channels=[sms(), email()])
    assert [d.channel for d in result.deliveries] == ["EMAIL"]
    assert [(w.code, w.message) for w in result.warnings] == [
        (E.SAFE_MODE_EMAIL, "SMS is in safe mode (its daily budget is spent): the code was sent by EMAIL instead")]
    assert result.body()["warnings"][0]["code"] == 7004
    assert channels_sent(rt) == [("SMS", "+919812345671"), ("EMAIL", EMAIL)]
    assert counters(rt) == {("budget", "SMS"): 1}  # the dropped channel was not counted
    assert run(validate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON",
                             "code": code_sent_to(rt, EMAIL)}, org_id=1)).valid


def test_email_only_reads_todays_local_budget_only(build, clock):
    """The counters read to choose the channels are today's, in the service's time zone: yesterday's spent budget
    reroutes nothing, and after local midnight (19:00 UTC in Kolkata) today's spent budget does."""
    rt = build(channel_budgets="SMS=1", safe_mode="email_only", timezone="Asia/Kolkata", daily_limit=50)
    clock.now = datetime(2026, 11, 27, 19, 0, tzinfo=timezone.utc)  # 00:30 on the 28th in Kolkata
    gen(rt, "+919812345671")  # spends the 28th's SMS budget
    rerouted = gen(rt, channels=[sms(), email()])
    assert [d.channel for d in rerouted.deliveries] == ["EMAIL"] and rerouted.warnings[0].code == E.SAFE_MODE_EMAIL
    clock.advance(days=1)  # the 29th: a new budget, yesterday's count reroutes nothing
    fresh = gen(rt, "+919812345672", channels=[sms("+919812345672"), email("b@example.com")])
    assert sorted(d.channel for d in fresh.deliveries) == ["EMAIL", "SMS"] and fresh.warnings == []


def test_a_budget_refusal_says_whose_budget_and_why_email_did_not_stand_in(build):
    rt = build(channel_budgets="SMS=1,EMAIL=1", safe_mode="email_only")
    gen(rt, "+919812345671", "COUPON")
    assert refused(gen, rt, "+919812345672", "COUPON").problems[0].message == (
        "the daily SMS budget of 1 is spent: the channel is in safe mode until tomorrow"
        " (email only, and this request has no email destination)")
    run(generate(rt, {"entityType": "EMAIL", "entityValue": "a@example.com", "action": "COUPON"}, org_id=1))
    assert refused(run, generate(rt, {"entityType": "EMAIL", "entityValue": "b@example.com", "action": "COUPON"}, org_id=1)) \
        .problems[0].message == "the daily EMAIL budget of 1 is spent: the channel is in safe mode until tomorrow"
    rt2 = build(safe_mode="refuse")
    configure(rt2, Action.REGISTRATION, channel_budgets="SMS=1")
    gen(rt2, "+919812345671", "REGISTRATION")
    assert refused(gen, rt2, "+919812345672", "REGISTRATION").problems[0].message == (
        "the daily SMS budget of REGISTRATION of 1 is spent: the channel is in safe mode until tomorrow")


def test_a_spent_email_budget_is_never_rerouted(build):
    """Only phone channels fall back to EMAIL: a spent EMAIL budget refuses the request, it is not dropped in
    silence while the SMS goes out under a warning that claims the code went by EMAIL."""
    rt = build(channel_budgets="SMS=5,EMAIL=1", safe_mode="email_only")
    run(generate(rt, {"entityType": "EMAIL", "entityValue": "a@example.com", "action": "COUPON"}, org_id=1))
    error = refused(gen, rt, channels=[sms(), email()])
    assert error.problems[0].reason == "budget" and "EMAIL budget" in error.problems[0].message
    assert channels_sent(rt) == [("EMAIL", "a@example.com")]


def test_the_dry_run_shows_what_safe_mode_would_do(build):
    rt = build(channel_budgets="SMS=1")
    gen(rt, "+919812345671")
    payload = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON", "channels": [sms(), email()]}
    refusing = dry_run(rt, payload, org_id=1)
    assert [(p.code, p.message) for p in refusing.problems] == [
        (E.RATE_LIMITED, "the daily SMS budget is spent: the channel is in safe mode and would be refused")]
    rt.settings.safe_mode = "email_only"
    rerouting = dry_run(rt, payload, org_id=1)
    assert [p.code for p in rerouting.problems] == [E.SAFE_MODE_EMAIL]
    assert [m.channel.value for m in rerouting.messages] == ["EMAIL"]
    assert counters(rt) == {("budget", "SMS"): 1} and len(outbox(rt)) == 1  # nothing sent or counted


def test_email_only_sends_to_an_email_entity_with_the_email_template(build):
    rt = build(channel_budgets="SMS=1,PHONE=1", safe_mode="email_only")
    gen(rt, "+919812345671", channels=[sms("+919812345671"), {"type": "PHONE", "value": "+919812345671"}])
    result = run(generate(rt, {"entityType": "EMAIL", "entityValue": "Someone@Example.com", "action": "COUPON",
                               "channels": [sms(), {"type": "PHONE", "value": PHONE}],
                               "emailTemplate": {"subject": "Your code", "body": "Use {{ validation_code }} now"}}, org_id=1))
    assert [(d.channel, d.destination) for d in result.deliveries] == [("EMAIL", EMAIL)]
    assert [w.message.split()[0] for w in result.warnings] == ["SMS", "PHONE"]
    [message] = outbox(rt, EMAIL)
    assert message["subject"] == "Your code" and message["body"].startswith("Use ")
    assert run(validate(rt, {"entityType": "EMAIL", "entityValue": EMAIL, "action": "COUPON",
                             "code": message["body"].split()[1]}, org_id=1)).valid


def test_email_only_keeps_the_phone_channels_whose_budget_is_not_spent(build):
    rt = build(channel_budgets="SMS=1,PHONE=5", safe_mode="email_only")
    gen(rt, "+919812345671")
    result = run(generate(rt, {"entityType": "EMAIL", "entityValue": EMAIL, "action": "COUPON",
                               "channels": [sms(), {"type": "PHONE", "value": PHONE}]}, org_id=1))
    assert [d.channel for d in result.deliveries] == ["EMAIL", "PHONE"]
    assert [w.code for w in result.warnings] == [E.SAFE_MODE_EMAIL]


def test_email_only_without_an_email_destination_is_refused(build):
    rt = build(channel_budgets="SMS=1", safe_mode="email_only")
    gen(rt, "+919812345671")
    error = refused(gen, rt)
    assert error.http_status == 429 and error.problems[0].reason == "budget"
    assert "no email destination" in error.problems[0].message
    assert error.retry_after and error.warnings == []


def test_email_only_needs_email_enabled_for_the_action(build):
    rt = build(channel_budgets="SMS=1", safe_mode="email_only")
    configure(rt, Action.COUPON, channels="SMS,PHONE")
    gen(rt, "+919812345671")
    error = refused(run, generate(rt, {"entityType": "EMAIL", "entityValue": EMAIL, "action": "COUPON",
                                       "channels": [sms()]}, org_id=1))
    assert error.problems[0].reason == "budget" and outbox(rt, EMAIL) == []


def test_refuse_mode_does_not_reroute(build):
    rt = build(channel_budgets="SMS=1")
    gen(rt, "+919812345671")
    assert refused(gen, rt, channels=[sms(), email()]).problems[0].reason == "budget"
    assert outbox(rt, EMAIL) == []


def test_an_actions_safe_mode_overrides_the_service_wide_one(build):
    rt = build(channel_budgets="SMS=1")  # service-wide: refuse
    configure(rt, Action.POINTS, safe_mode="email_only")
    gen(rt, "+919812345671")
    assert refused(gen, rt, channels=[sms(), email()]).problems[0].reason == "budget"  # COUPON refuses
    result = gen(rt, action="POINTS", channels=[sms(), email()])
    assert [d.channel for d in result.deliveries] == ["EMAIL"]
    configure(rt, Action.POINTS, channel_budgets="EMAIL=3")  # the other fields keep their values
    assert rt.config_for(1, Action.POINTS).safe_mode == "email_only"


def test_an_actions_own_budget_trips_its_email_only_mode(build):
    rt = build()
    configure(rt, Action.REGISTRATION, channel_budgets="SMS=1", safe_mode="email_only")
    gen(rt, "+919812345671", "REGISTRATION")
    result = gen(rt, action="REGISTRATION", channels=[sms(), email()])
    assert [d.channel for d in result.deliveries] == ["EMAIL"] and result.warnings[0].code == E.SAFE_MODE_EMAIL
    assert [d.channel for d in gen(rt, channels=[sms(), email()]).deliveries] == ["SMS", "EMAIL"]  # COUPON


def test_a_race_past_the_read_is_refused_not_sent_over_budget(build, monkeypatch):
    """The read that picks the channels may be stale; the bump in the transaction still holds the budget."""
    rt = build(channel_budgets="SMS=1", safe_mode="email_only")
    gen(rt, "+919812345671")
    monkeypatch.setattr(safe_mode, "spent_channels", lambda *args: set())  # as if read just before the trip
    assert refused(gen, rt, channels=[sms(), email()]).problems[0].reason == "budget"
    assert counters(rt) == {("budget", "SMS"): 1} and outbox(rt, EMAIL) == []


def test_the_swap_warning_comes_with_a_failed_email(build):
    rt = build(channel_budgets="SMS=1", safe_mode="email_only", gateway_email="none")
    gen(rt, "+919812345671")
    error = refused(gen, rt, channels=[sms(), email()])
    assert error.http_status == 502 and [p.code for p in error.problems] == [E.GATEWAY_ERROR]
    assert [w["code"] for w in error.envelope()["warnings"]] == [E.SAFE_MODE_EMAIL]


def test_test_numbers_are_exempt(build):
    rt = build(channel_budgets="SMS=1", safe_mode="email_only", test_numbers="+91990000*")
    gen(rt, "+919812345671")
    result = gen(rt, "+919900001234", channels=[sms("+919900001234"), email()])
    assert [d.channel for d in result.deliveries] == ["SMS", "EMAIL"] and result.warnings == []


def counter_reads(rt) -> list[str]:
    """The SELECTs of usage_counter the runtime's engine runs from now on."""
    seen: list[str] = []
    event.listen(rt.db, "before_cursor_execute", lambda _conn, _cursor, statement, *_rest: seen.append(statement))
    return seen


def selects_of_counters(seen: list[str]) -> list[str]:
    return [s for s in seen if s.lstrip().upper().startswith("SELECT") and "usage_counter" in s]


@pytest.mark.parametrize("settings", [{"safe_mode": "email_only"}, {"channel_budgets": "SMS=5"},
                                      {"channel_budgets": "PHONE=5", "safe_mode": "email_only"}])
def test_requests_pay_no_read_when_they_cannot_be_rerouted(build, settings):
    """No budget on the request's phone channels, or refuse mode: nothing is read before the transaction."""
    rt = build(**settings)
    seen = counter_reads(rt)
    gen(rt, channels=[sms(), email()])
    # The read reroute would make goes through SQLAlchemy, so the listener sees it (the next test counts it).
    assert selects_of_counters(seen) == []


def test_email_only_reads_the_counters_once_before_the_transaction(build):
    rt = build(channel_budgets="SMS=5", safe_mode="email_only")
    configure(rt, Action.COUPON, channel_budgets="SMS=3")
    seen = counter_reads(rt)
    gen(rt, channels=[sms(), email()])
    assert len(selects_of_counters(seen)) == 1


# The budget_trip security event ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["refuse", "email_only"])
def test_budget_trip_is_recorded_once_per_trip(build, mode):
    rt = build(channel_budgets="SMS=2", safe_mode=mode)
    configure(rt, Action.REGISTRATION, channel_budgets="SMS=1")
    gen(rt, "+919812345671")
    assert trips(rt) == []
    gen(rt, "+919812345672", "REGISTRATION")  # spends both the action's budget and the service-wide one
    for i in range(3):
        try:
            gen(rt, f"+91981234568{i}", channels=[sms(f"+91981234568{i}"), email(f"u{i}@example.com")])
        except OtpError as exc:
            assert mode == "refuse" and exc.problems[0].reason == "budget"
    assert trips(rt) == ["SMS", "SMS, REGISTRATION budget"]
    with rt.db.connect() as conn:
        refusals = conn.execute(text("SELECT count(*) FROM limit_event WHERE limit_type = 'budget'")).scalar()
        assert conn.execute(text("SELECT max(user_key) FROM security_event")).scalar() == ""  # about no one
    assert refusals == (3 if mode == "refuse" else 0)


def test_a_trip_rolls_back_with_a_request_another_limit_refuses(build):
    rt = build(channel_budgets="SMS=1", client_limit=1)
    run(generate(rt, {"entityType": "EMAIL", "entityValue": EMAIL, "action": "COUPON"}, client_id=7, org_id=1))
    error = refused(run, generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"},
                                  client_id=7, org_id=1))
    assert error.problems[0].reason == "client"
    assert trips(rt) == [] and counters(rt) == {}
    run(generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}, client_id=8, org_id=1))
    assert trips(rt) == ["SMS"]


# Configuration ---------------------------------------------------------------------------------------------
def test_configuration_is_validated(build):
    from core.db.models import ActionConfigUpdate
    from core.issuing.action_config import check_action_config
    problems = check_action_config(ActionConfigUpdate(channel_budgets="SMS=0, FAX=3, PHONE, EMAIL=2,EMAIL=3, "
                                                                      "ZALO=١٢", safe_mode="email"),
                                   service_daily_limit=500)
    assert problems == ["the SMS budget must be a whole number of at least 1",
                        "channel budget 'FAX=3': write CHANNEL=daily sends, e.g. SMS=2000",
                        "channel budget 'PHONE': write CHANNEL=daily sends, e.g. SMS=2000",
                        "the EMAIL budget is given twice", "the ZALO budget must be a whole number of at least 1",
                        "the safe mode must be one of refuse, email_only (or empty for the service-wide one)"]
    rt = build()
    configure(rt, Action.COUPON, channel_budgets=" sms = 2000 ,mobile=5", safe_mode="")
    config = rt.config_for(1, Action.COUPON)
    assert config.budget_for(config.channel_budgets[0][0]) == 2000 and config.safe_mode is None
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT channel_budgets FROM action_config WHERE action = 'COUPON'")).scalar() \
            == "SMS=2000,PHONE=5"


def test_configuration_table_shows_budgets_and_safe_mode(build):
    from core.services.status import configuration_table
    rt = build(safe_mode="email_only")
    configure(rt, Action.REGISTRATION, channel_budgets="SMS=2000", safe_mode="refuse")
    rows = {r["action"]: r for r in configuration_table(rt, org_id=1)}
    assert rows["REGISTRATION"]["channel budgets"] == "SMS=2000" and rows["REGISTRATION"]["safe mode"] == "refuse"
    assert rows["COUPON"]["channel budgets"] == "" and rows["COUPON"]["safe mode"] == "email_only (service-wide)"


def test_safe_mode_alerts_service_wide_and_per_action(build):
    from core.services.status import safe_mode_channels
    rt = build(channel_budgets="SMS=1,PHONE=9,EMAIL=1", safe_mode="email_only")
    configure(rt, Action.POINTS, safe_mode="refuse")
    configure(rt, Action.REGISTRATION, channel_budgets="PHONE=1")
    assert safe_mode_channels(rt, org_id=1) == []
    gen(rt, "+919812345671", channels=[sms("+919812345671"), email("a@b.com")])
    gen(rt, "+919812345672", "REGISTRATION", channels=[{"type": "PHONE", "value": "+919812345672"}])
    alerts = safe_mode_channels(rt, org_id=1)
    assert [(a.channel, a.action, a.mode, a.sent, a.budget) for a in alerts] == [
        ("SMS", None, "email_only", 1, 1), ("EMAIL", None, "refuse", 1, 1), ("PHONE", "REGISTRATION", "email_only", 1, 1)]
    assert alerts[0].text("UTC") == (
        "Safe mode: the daily SMS budget is spent (1 of 1); SMS is email only until midnight (UTC): codes go by EMAIL "
        "when the request has an email address, other requests are refused. Actions with their own safe mode: "
        "POINTS (refused).")
    assert alerts[1].text("UTC") == "Safe mode: the daily EMAIL budget is spent (1 of 1); EMAIL is refused until " \
        "midnight (UTC)."
    assert alerts[2].text("UTC").startswith("Safe mode: the daily PHONE budget of REGISTRATION is spent (1 of 1); "
                                            "PHONE for REGISTRATION is email only")


# The console ------------------------------------------------------------------------------------------------
@pytest.fixture
def console(team):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from console_ui.state import SESSION_KEY
    from core.admin.staff import ConsoleSession
    from core.settings import ROOT
    st.cache_data.clear()
    st.cache_resource.clear()

    def open_as(rt: Runtime, role: str) -> AppTest:
        at = AppTest.from_file(str(ROOT / "console.py"), default_timeout=30)
        at.session_state["runtime"] = rt
        at.session_state[SESSION_KEY] = ConsoleSession.start(team[role], 30)
        return at.run()
    return open_as


def test_home_page_alert_names_the_mode_and_the_action(build, console):
    rt = build(channel_budgets="SMS=1", safe_mode="email_only")
    configure(rt, Action.REGISTRATION, channel_budgets="PHONE=1", safe_mode="refuse")
    gen(rt, "+919812345671")
    gen(rt, "+919812345672", "REGISTRATION", channels=[{"type": "PHONE", "value": "+919812345672"}])
    at = console(rt, "viewer")
    assert not at.exception
    shown = [e.value for e in at.error]
    assert any(s.startswith("Safe mode: the daily SMS budget is spent (1 of 1); SMS is email only") and
               "REGISTRATION (refused)" in s for s in shown)
    assert any(s.startswith("Safe mode: the daily PHONE budget of REGISTRATION is spent (1 of 1); PHONE for "
                            "REGISTRATION is refused") for s in shown)
    table = next(d.value for d in at.dataframe if "channel budgets" in d.value.columns)
    assert list(table.loc[table["action"] == "REGISTRATION", "channel budgets"]) == ["PHONE=1"]


def test_home_page_has_no_alert_while_budgets_last(build, console):
    rt = build(channel_budgets="SMS=2")
    gen(rt)
    assert not [e for e in console(rt, "viewer").error if "Safe mode" in e.value]


def test_config_page_sets_budgets_and_safe_mode_validated_and_audited(build, console):
    rt = build()
    at = console(rt, "admin")
    at.switch_page("pages/config.py").run()
    at.selectbox(key="cfg_action").select("REGISTRATION").run()
    at.text_input(key="cfg_channel_budgets").input("SMS=lots")
    at.button(key="cfg_save").click().run()
    assert any("the SMS budget must be a whole number" in e.value for e in at.error)
    assert rt.config_for(1, Action.REGISTRATION).channel_budgets == ()
    at.text_input(key="cfg_channel_budgets").input("SMS=2000, phone=50")
    at.selectbox(key="cfg_safe_mode").select("email_only")
    at.text_input(key="cfg_reason").input("pumping on REGISTRATION")
    at.button(key="cfg_save").click().run()
    assert any("Saved the configuration of REGISTRATION" in s.value for s in at.success)
    config = rt.config_for(1, Action.REGISTRATION)
    assert [(c.value, n) for c, n in config.channel_budgets] == [("SMS", 2000), ("PHONE", 50)]
    assert config.safe_mode == "email_only"
    with rt.db.connect() as conn:
        detail, reason = conn.execute(text("SELECT detail, reason FROM audit_log WHERE action = 'config.update' "
                                           "AND target = 'config:REGISTRATION'")).one()
    assert '"channel_budgets"' in detail and '"safe_mode"' in detail and reason == "pumping on REGISTRATION"
    assert at.text_input(key="cfg_reason").value == ""  # a reason is for one change only
    at.selectbox(key="cfg_safe_mode").select("service-wide (refuse)")
    at.text_input(key="cfg_reason").input("back to the service-wide mode")
    at.button(key="cfg_save").click().run()
    assert rt.config_for(1, Action.REGISTRATION).safe_mode is None


def test_rate_limit_dashboard_lists_budget_trips(build, console):
    rt = build(channel_budgets="SMS=1")
    configure(rt, Action.REGISTRATION, channel_budgets="EMAIL=1")
    gen(rt)
    run(generate(rt, {"entityType": "EMAIL", "entityValue": EMAIL, "action": "REGISTRATION"}, org_id=1))
    at = console(rt, "viewer")
    at.switch_page("pages/dash_limits.py").run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "event" in d.value.columns)
    assert sorted(zip(table["event"], table["action"], table["detail"])) == [
        ("budget_trip", "COUPON", "SMS"), ("budget_trip", "REGISTRATION", "EMAIL, REGISTRATION budget")]
    assert [m.value for m in at.metric if m.label == "budget trip"] == ["2"]
