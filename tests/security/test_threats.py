"""One test per threat in docs/threats.md; each fails if its defence is removed."""
from __future__ import annotations

import ipaddress
from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from core import errors as E
from core.enums import Action
from core.errors import OtpError
from core.net import client_ip, trusted_proxies
from core.runtime import run
from core.services.generation import generate
from core.services.validation import validate
from tests.conftest import code_sent_to, configure, outbox

PHONE = "+919955882233"
BODY = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}


def gen(rt, **extra):
    return run(generate(rt, {**BODY, **extra.pop("body", {})}, **{"org_id": 1, **extra}))


def val(rt, code, **body):
    return run(validate(rt, {**BODY, **body, "code": code}, org_id=1))


def refusal(call, *args, **kwargs) -> OtpError:
    with pytest.raises(OtpError) as info:
        call(*args, **kwargs)
    return info.value


def scalar(rt, sql):
    with rt.db.connect() as conn:
        return conn.execute(text(sql)).scalar()


# T1 brute force across re-generations --------------------------------------------------------------
def test_t1_regenerating_does_not_reset_guesses(rt):
    configure(rt, Action.COUPON, validate_limit=1000, attempts_per_code=5, max_consecutive_failures=8)
    gen(rt)
    for _ in range(4):
        val(rt, "000000x")
    gen(rt)  # a re-send: same code, same failed-attempt count
    assert val(rt, "000000x").warnings[0].code == E.ATTEMPTS_EXHAUSTED  # the fifth guess burns it
    gen(rt)  # a new code; the consecutive-failure count across codes goes on (5 so far, lock at 8)
    for _ in range(3):
        val(rt, "000000x")
    assert refusal(val, rt, code_sent_to(rt, PHONE)).problems[0].reason == "lock"


# T2 counter splitting by number formats, email case and look-alike digits -----------------------
@pytest.mark.parametrize("spellings", [
    ["+919955882233", "919955882233", "9955882233", "09955882233", "+91 99558-82233", "(+91) 9955882233"],
])
def test_t2_number_spellings_share_one_daily_counter(db_url, tmp_path, clock, spellings):
    from core.runtime import Runtime
    from tests.conftest import make_settings
    rt = Runtime(make_settings(db_url, tmp_path, daily_limit=len(spellings) - 1), clock=clock)
    try:
        configure(rt, Action.COUPON, max_sends_per_code=100)
        for spelling in spellings[:-1]:
            gen(rt, body={"entityValue": spelling})
        assert refusal(gen, rt, body={"entityValue": spellings[-1]}).problems[0].reason == "daily"
    finally:
        rt.db.dispose()


def test_t2_email_case_and_unicode_digits_do_not_split(rt):
    gen(rt, body={"entityType": "EMAIL", "entityValue": "Victim@Example.com"})
    assert gen(rt, body={"entityType": "EMAIL", "entityValue": "victim@EXAMPLE.COM"}).resent
    for look_alike in ("\uff19\uff19\uff15\uff15\uff18\uff18\uff12\uff12\uff13\uff13",
                       "\u0669\u0669\u0665\u0665\u0668\u0668\u0662\u0662\u0663\u0663"):
        assert refusal(gen, rt, body={"entityValue": look_alike}).problems[0].code == E.INVALID_MOBILE


# T3 rotating X-Forwarded-For ---------------------------------------------------------------------
def test_t3_spoofed_forwarded_for_changes_nothing(defended):
    rt = defended(ip_limit=3, trusted_proxies="10.0.0.0/8")
    numbers = ["+919812345670", "+919712345671", "+919612345672", "+919512345673"]
    for i, number in enumerate(numbers[:3]):
        ip = client_ip("203.0.113.7", f"198.51.100.{i}", trusted_proxies(rt.settings))  # untrusted peer
        assert ip == "203.0.113.7"
        gen(rt, body={"entityValue": number}, client_ip=ip)
    ip = client_ip("203.0.113.7", "198.51.100.99", trusted_proxies(rt.settings))
    assert refusal(gen, rt, body={"entityValue": numbers[3]}, client_ip=ip).problems[0].reason == "ip"
    # Behind a trusted proxy, the right-most untrusted hop is the client; what it prepends is ignored.
    private = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_ip("10.1.2.3", "1.2.3.4, 198.51.100.5, 10.9.9.9", private) == "198.51.100.5"
    assert client_ip("10.1.2.3", "garbage", private) == "10.1.2.3"


# T4 arrays or objects where a code string is expected, full-width and Arabic-Indic digits -------
@pytest.mark.parametrize("code", [["123456"], {"$ne": ""}, 123456, True, "\uff11\uff12\uff13\uff14\uff15\uff16",
                                  "\u0661\u0662\u0663\u0664\u0665\u0666", "12345\u0666", " 123456", "123456\n"])
def test_t4_non_string_or_look_alike_codes_are_refused_not_counted(rt, code):
    gen(rt)
    assert refusal(val, rt, code).http_status == 400
    assert scalar(rt, "SELECT failed_attempts FROM otp_code") == 0
    assert val(rt, code_sent_to(rt, PHONE)).valid


# T5 leading-zero codes ---------------------------------------------------------------------------
def test_t5_leading_zeros_matter(rt):
    gen(rt)
    with rt.db.begin() as conn:  # make the live code start with zeros, as one in a hundred do
        code = "000123"
        row = conn.execute(text("SELECT user_key, action FROM otp_code")).first()
        conn.execute(text("UPDATE otp_code SET code_hmac = :h"),
                     {"h": rt.keys.code_mac(row.user_key, row.action, code)})
    assert not val(rt, "123").valid  # what a client sending a number would have lost
    assert val(rt, code).valid


# T6 replay across user, action and destination ----------------------------------------------------
def test_t6_a_code_is_bound_to_user_and_action(rt):
    """A code's stored MAC only ever matches for its own user and action.

    The other user's and the other action's rows are given the very MAC stored for PHONE's COUPON code (as a
    copied row or a leaked hash would be): only the binding of user and action inside the MAC refuses them.
    """
    configure(rt, Action.COUPON, validate_limit=100)
    configure(rt, Action.POINTS, validate_limit=100)
    gen(rt)
    code = code_sent_to(rt, PHONE)
    gen(rt, body={"action": "POINTS"})
    other_user = "+919812345678"
    gen(rt, body={"entityValue": other_user})
    with rt.db.begin() as conn:
        mac = conn.execute(text("SELECT code_hmac FROM otp_code WHERE user_key = :u AND action = 'COUPON'"),
                           {"u": f"MOBILE:{PHONE}"}).scalar_one()
        moved = conn.execute(text("UPDATE otp_code SET code_hmac = :m WHERE NOT (user_key = :u AND action = "
                                  "'COUPON')"), {"m": mac, "u": f"MOBILE:{PHONE}"}).rowcount
    assert moved == 2
    assert not val(rt, code, entityValue=other_user).valid
    assert not val(rt, code, action="POINTS").valid
    assert val(rt, code).valid
    assert not val(rt, code).valid  # and once only


def test_t6_hmac_binds_user_and_action(rt):
    keys = rt.keys
    assert keys.code_mac("MOBILE:+1", "COUPON", "123456") != keys.code_mac("MOBILE:+2", "COUPON", "123456")
    assert keys.code_mac("MOBILE:+1", "COUPON", "123456") != keys.code_mac("MOBILE:+1", "POINTS", "123456")


# T7 expiry edges ----------------------------------------------------------------------------------
def test_t7_expiry_is_exact(rt, clock):
    gen(rt)
    code = code_sent_to(rt, PHONE)
    clock.advance(minutes=10)
    assert val(rt, code).warnings[0].code == E.OTP_INVALID
    assert scalar(rt, "SELECT code_enc FROM otp_code") is None


# T8 day boundary and DST day ------------------------------------------------------------------------
def test_t8_dst_day_is_25_hours(db_url, tmp_path):
    from core.clock import FrozenClock
    from core.issuing.limits import user_counters
    from core.runtime import Runtime
    from tests.conftest import make_settings

    # 2026-11-01 is the day New York leaves daylight time: midnight to midnight is 25 hours.
    start = datetime(2026, 11, 1, 4, 0, tzinfo=timezone.utc)  # 00:00 EDT
    clock = FrozenClock(start)
    rt = Runtime(make_settings(db_url, tmp_path, timezone="America/New_York", daily_limit=1), clock=clock)
    try:
        [daily] = user_counters(rt.settings, rt.config_for(1, Action.COUPON), user_key="MOBILE:1", now=start)
        assert daily.retry_after(start) == 25 * 3600
        gen(rt)
        clock.advance(hours=24)  # 23:00 EST, still the same local day
        assert refusal(gen, rt, body={"action": "POINTS"}).retry_after == 3600
        clock.advance(hours=1)
        assert gen(rt, body={"action": "POINTS"}).created_id
    finally:
        rt.db.dispose()


# T10 prefix pumping -------------------------------------------------------------------------------
def test_t10_prefix_pumping_is_stopped(defended):
    rt = defended(prefix_limit=5)
    for last in range(5):
        gen(rt, body={"entityValue": f"+91995588{last:04d}"})
    refused = refusal(gen, rt, body={"entityValue": "+9199558800099"[:-1]})
    assert refused.problems[0].reason == "prefix" and refused.http_status == 429
    assert len(outbox(rt)) == 5
    gen(rt, body={"entityValue": "+919812345678"})  # another range is untouched


# T11 one destination flooded through many users ----------------------------------------------------
def test_t11_destination_limit_across_users(defended):
    rt = defended(destination_limit=3)
    target = "+919812345678"
    for i in range(3):
        gen(rt, body={"entityType": "EMAIL", "entityValue": f"user{i}@example.com",
                      "channels": [{"type": "SMS", "value": target}]})
    refused = refusal(gen, rt, body={"entityType": "EMAIL", "entityValue": "user9@example.com",
                                     "channels": [{"type": "SMS", "value": target}]})
    assert refused.problems[0].reason == "destination"
    assert scalar(rt, "SELECT count(*) FROM otp_code") == 3  # the refusal wrote nothing


# T12 budget trip ----------------------------------------------------------------------------------
def test_t12_channel_budget_trips_safe_mode(defended):
    rt = defended(channel_budgets="SMS=2")
    gen(rt, body={"entityValue": "+919812345671"})
    gen(rt, body={"entityValue": "+919812345672"})
    refused = refusal(gen, rt, body={"entityValue": "+919812345673"})
    assert refused.problems[0].reason == "budget"
    gen(rt, body={"entityType": "EMAIL", "entityValue": "a@b.com"})  # email is not in safe mode
    assert scalar(rt, "SELECT count(*) FROM limit_event WHERE limit_type = 'budget'") == 1


def test_t12_an_actions_budget_keeps_a_pumped_action_from_spending_the_others(defended):
    rt = defended(channel_budgets="SMS=100")
    configure(rt, Action.REGISTRATION, channel_budgets="SMS=2")
    gen(rt, body={"entityValue": "+919812345671", "action": "REGISTRATION"})
    gen(rt, body={"entityValue": "+919712345672", "action": "REGISTRATION"})
    refused = refusal(gen, rt, body={"entityValue": "+919612345673", "action": "REGISTRATION"})
    assert refused.problems[0].reason == "budget"
    gen(rt, body={"entityValue": "+919512345674"})  # COUPON still has the service-wide budget
    assert scalar(rt, "SELECT count FROM usage_counter WHERE scope = 'budget' AND user_key = 'SMS'") == 3


def test_t12_email_only_safe_mode_sends_no_phone_message_past_the_budget(defended):
    rt = defended(channel_budgets="SMS=2", safe_mode="email_only")
    for i in range(5):  # a pumping run naming an SMS channel for many email identities
        result = gen(rt, body={"entityType": "EMAIL", "entityValue": f"user{i}@example.com",
                               "channels": [{"type": "SMS", "value": f"+9198{i}2345678"}]})
        assert [w.code for w in result.warnings] == ([] if i < 2 else [E.SAFE_MODE_EMAIL])
    assert [m["channel"] for m in outbox(rt)] == ["SMS", "SMS", "EMAIL", "EMAIL", "EMAIL"]
    assert refusal(gen, rt, body={"entityValue": "+919412345679"}).problems[0].reason == "budget"  # no email
    assert scalar(rt, "SELECT count(*) FROM security_event WHERE kind = 'budget_trip'") == 1


# T13 premium-rate and far-away destinations ----------------------------------------------------------
def test_t13_country_allow_list(defended):
    rt = defended(countries_sms="IN", countries_phone="IN")
    refused = refusal(gen, rt, body={"channels": [{"type": "SMS", "value": "+447911123456"},
                                                  {"type": "PHONE", "value": "+2348031234567"}]})
    assert [p.code for p in refused.problems] == [E.COUNTRY_NOT_ALLOWED] * 2 and refused.http_status == 422
    assert scalar(rt, "SELECT count(*) FROM usage_counter") == 0 and outbox(rt) == []
    gen(rt)  # India is allowed


# T14 API client floods -----------------------------------------------------------------------------
def test_t14_per_client_limit(defended):
    rt = defended(client_limit=2)
    gen(rt, body={"entityValue": "+919812345671"}, client_id=7)
    gen(rt, body={"entityValue": "+919812345672"}, client_id=7)
    assert refusal(gen, rt, body={"entityValue": "+919812345673"}, client_id=7).problems[0].reason == "client"
    gen(rt, body={"entityValue": "+919812345674"}, client_id=8)



def test_t12_safe_mode_shows_on_the_home_page(defended, team):
    from streamlit.testing.v1 import AppTest

    from console_ui.state import SESSION_KEY
    from core.admin.staff import ConsoleSession
    from core.settings import ROOT
    rt = defended(channel_budgets="SMS=1")
    gen(rt, body={"entityValue": "+919812345671"})
    at = AppTest.from_file(str(ROOT / "console.py"), default_timeout=30)
    at.session_state["runtime"] = rt
    at.session_state[SESSION_KEY] = ConsoleSession.start(team["viewer"], 30)
    at.run()
    assert any("Safe mode: the daily SMS budget is spent (1 of 1)" in e.value for e in at.error)


# Security events: recorded without the code, for the rate-limit dashboard -----------------------------
def events(rt) -> list[tuple[str, str]]:
    with rt.db.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT kind, COALESCE(detail, '') FROM security_event ORDER BY id"))]


def test_security_events_for_replay_burn_and_lock(rt):
    configure(rt, Action.COUPON, validate_limit=100, attempts_per_code=2, max_consecutive_failures=3)
    gen(rt)
    code = code_sent_to(rt, PHONE)
    assert val(rt, code).valid
    assert val(rt, code).warnings[0].code == E.NO_VALID_OTP  # a replay answers like an absent code...
    assert events(rt) == [("replayed_code", "")]  # ...but is recorded
    gen(rt)
    val(rt, "0"), val(rt, "0")  # burns the code: 2 consecutive failures
    gen(rt)
    val(rt, "0")  # the third consecutive failure locks
    kinds = [k for k, _d in events(rt)]
    assert kinds == ["replayed_code", "burned_code", "lock"]
    with rt.db.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM security_event")) for v in row)
    assert code not in stored


def test_security_events_for_prefix_block_and_budget_trip(defended):
    rt = defended(prefix_limit=1, channel_budgets="EMAIL=1")
    gen(rt, body={"entityValue": "+919955880001"})
    refusal(gen, rt, body={"entityValue": "+919955880002"})
    gen(rt, body={"entityType": "EMAIL", "entityValue": "a@b.com"})
    refusal(gen, rt, body={"entityType": "EMAIL", "entityValue": "c@d.com"})
    assert events(rt) == [("prefix_block", "+91995588"), ("budget_trip", "EMAIL")]


def test_limits_are_configurable_per_action(defended):
    rt = defended(destination_limit=5)
    configure(rt, Action.COUPON, destination_limit=1)
    gen(rt)
    assert refusal(gen, rt).problems[0].reason == "destination"  # COUPON: one per window
    # The count is per destination across actions; POINTS keeps the service-wide 5, so 4 more get through.
    for _ in range(4):
        gen(rt, body={"action": "POINTS"})
    assert refusal(gen, rt, body={"action": "REGISTRATION"}).problems[0].reason == "destination"


def test_security_events_show_on_the_rate_limit_dashboard(rt, team, clock):
    from streamlit.testing.v1 import AppTest

    from console_ui.state import SESSION_KEY
    from core.admin.staff import ConsoleSession
    from core.settings import ROOT
    configure(rt, Action.COUPON, validate_limit=100)
    gen(rt)
    code = code_sent_to(rt, PHONE)
    val(rt, code), val(rt, code)  # the second is a replay
    at = AppTest.from_file(str(ROOT / "console.py"), default_timeout=30)
    at.session_state["runtime"] = rt
    at.session_state[SESSION_KEY] = ConsoleSession.start(team["viewer"], 30)
    at.run()
    at.switch_page("pages/dash_limits.py").run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "event" in d.value.columns)
    assert list(table["event"]) == ["replayed_code"] and list(table["user"]) == ["+91********33"]
    assert code not in table.to_string()
