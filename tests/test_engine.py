"""The engine on SQLite and PostgreSQL: issuing, re-sending, validating, limits and the error table."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import event, text

from core import errors as E
from core.db.models import TemplateVersion
from core.enums import Action
from core.errors import OtpError
from core.runtime import run
from core.services.generation import generate
from core.services.validation import validate
from tests.conftest import code_sent_to, configure, outbox

PHONE = "+919955882233"


def gen(rt, **body):
    payload = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}
    payload.update(body)
    return run(generate(rt, payload, org_id=1))


def val(rt, code, **body):
    payload = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON", "code": code}
    payload.update(body)
    return run(validate(rt, payload, org_id=1))


def refused(call, *args, **kwargs) -> OtpError:
    with pytest.raises(OtpError) as info:
        call(*args, **kwargs)
    return info.value


def codes(error: OtpError) -> list[int]:
    return [p.code for p in error.problems]


def scalar(rt, sql, **params):
    with rt.db.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def test_generate_sends_default_channel_and_validates(rt):
    result = gen(rt)
    assert result.created_id > 0 and not result.resent and result.warnings == []
    [message] = outbox(rt)
    assert message["channel"] == "SMS" and message["recipient"] == PHONE
    code = code_sent_to(rt, PHONE)
    assert len(code) == 6 and code.isdigit()
    assert message["body"] == f"Hi user.Your otp for validation is {code}."
    assert val(rt, code).valid


def test_enums_are_case_insensitive(rt):
    result = run(generate(rt, {"entityType": "mobile", "entityValue": PHONE, "action": "coupon",
                               "channels": [{"type": "sms", "value": PHONE}, {"type": "Email", "value": "A@B.com"}]}, org_id=1))
    assert [d.channel for d in result.deliveries] == ["SMS", "EMAIL"]
    code = code_sent_to(rt, PHONE)
    assert run(validate(rt, {"entityType": "Mobile", "entityValue": PHONE, "action": "Coupon", "code": code}, org_id=1)).valid


def test_phone_spellings_are_one_user(rt):
    first = gen(rt, entityValue="+919955882233")
    second = gen(rt, entityValue="919955882233")
    third = gen(rt, entityValue="9955882233")
    assert not first.resent and second.resent and third.resent
    assert second.created_id == 1 and third.created_id == 1
    assert scalar(rt, "SELECT count FROM usage_counter WHERE scope='daily:*'") == 3
    assert val(rt, code_sent_to(rt, PHONE), entityValue="09955882233").valid


def test_email_case_is_one_user(rt):
    gen(rt, entityType="EMAIL", entityValue="Someone@Example.COM")
    again = gen(rt, entityType="email", entityValue="someone@example.com")
    assert again.resent
    assert [m["channel"] for m in outbox(rt)] == ["EMAIL", "EMAIL"]
    assert outbox(rt)[0]["recipient"] == "someone@example.com"


def test_resend_keeps_code_and_expiry_and_attempts(rt, clock):
    gen(rt)
    code = code_sent_to(rt, PHONE)
    expires = scalar(rt, "SELECT expires_at FROM otp_code")
    assert not val(rt, "000000" if code != "000000" else "111111").valid
    clock.advance(minutes=5)
    again = gen(rt)
    assert again.created_id == 1 and again.resent
    assert [w.code for w in again.warnings] == [E.RESENT_SAME_CODE]
    assert code_sent_to(rt, PHONE) == code
    assert scalar(rt, "SELECT expires_at FROM otp_code") == expires
    assert scalar(rt, "SELECT failed_attempts FROM otp_code") == 1
    assert scalar(rt, "SELECT count(*) FROM otp_code") == 1


def test_expiry_to_the_second(rt, clock):
    gen(rt)
    code = code_sent_to(rt, PHONE)
    clock.advance(minutes=10, seconds=-1)
    gen(rt)  # still valid one second before expiry: a re-send
    assert code_sent_to(rt, PHONE) == code
    clock.advance(seconds=1)
    result = val(rt, code)
    assert not result.valid and result.warnings[0].code == E.OTP_INVALID
    assert scalar(rt, "SELECT state FROM otp_code") == "expired"
    assert scalar(rt, "SELECT code_enc FROM otp_code") is None
    fresh = gen(rt)
    assert not fresh.resent and fresh.created_id != 1


def test_a_generate_after_an_unseen_expiry_sends_a_new_code(rt, clock):
    """No validate marked the code expired: the generate finds it stale, expires it and issues a fresh one, sent
    with its own code and not reported as a re-send."""
    gen(rt)
    clock.advance(minutes=10)
    fresh = gen(rt)
    assert not fresh.resent and fresh.warnings == [] and fresh.created_id != 1
    with rt.db.connect() as conn:
        assert list(conn.execute(text("SELECT state FROM otp_code ORDER BY id")).scalars()) == ["expired", "active"]
    assert val(rt, code_sent_to(rt, PHONE)).valid


def test_code_valid_until_its_last_second(rt, clock):
    gen(rt)
    code = code_sent_to(rt, PHONE)
    clock.advance(minutes=9, seconds=59)
    assert val(rt, code).valid


def test_single_use(rt):
    gen(rt)
    code = code_sent_to(rt, PHONE)
    assert val(rt, code).valid
    second = val(rt, code)
    assert not second.valid and second.warnings[0].code == E.NO_VALID_OTP
    assert scalar(rt, "SELECT code_enc FROM otp_code") is None
    # A used code is never re-sent: the next generate issues a new one.
    assert not gen(rt).resent


def test_attempts_per_code_then_burn(rt):
    configure(rt, Action.COUPON, validate_limit=100)
    gen(rt)
    code = code_sent_to(rt, PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(4):
        result = val(rt, wrong)
        assert result.warnings[0].code == E.OTP_INVALID
    burned = val(rt, wrong)
    assert not burned.valid and burned.warnings[0].code == E.ATTEMPTS_EXHAUSTED
    assert scalar(rt, "SELECT state FROM otp_code") == "burned"
    assert scalar(rt, "SELECT code_enc FROM otp_code") is None
    assert val(rt, code).warnings[0].code == E.NO_VALID_OTP  # the right code no longer works
    assert not gen(rt).resent  # a burned code is never re-sent
    assert scalar(rt, "SELECT count(*) FROM otp_code") == 2


def test_validate_limit(rt, clock):
    configure(rt, Action.COUPON, attempts_per_code=10, validate_limit=5, validate_window_minutes=15,
              validity_minutes=30)
    clock.now = datetime(2026, 11, 27, 10, 0, 0, tzinfo=timezone.utc)  # the start of a 15-minute window
    gen(rt)
    for _ in range(5):
        val(rt, "999999x")
    error = refused(val, rt, code_sent_to(rt, PHONE))
    assert codes(error) == [E.RATE_LIMITED] and error.http_status == 429 and error.retry_after == 900
    assert scalar(rt, "SELECT count(*) FROM limit_event WHERE limit_type='validate'") == 1
    clock.advance(minutes=15)
    assert val(rt, code_sent_to(rt, PHONE)).valid


def test_consecutive_failures_lock_across_codes(rt, clock):
    configure(rt, Action.COUPON, attempts_per_code=2, max_consecutive_failures=3, validate_limit=100, lock_minutes=30,
              validity_minutes=60)
    gen(rt)
    val(rt, "0"), val(rt, "0")  # burns the first code (two failures)
    gen(rt)  # a new code does not reset the count
    val(rt, "0")  # third consecutive failure: locked
    error = refused(val, rt, code_sent_to(rt, PHONE))
    assert codes(error) == [E.RATE_LIMITED] and error.retry_after == 30 * 60
    other = val(rt, "1", action="POINTS")  # a lock on one action leaves the others alone
    assert other.warnings[0].code == E.NO_VALID_OTP
    clock.advance(minutes=30)
    assert val(rt, code_sent_to(rt, PHONE)).valid  # the lock lifts; a success resets the count
    assert scalar(rt, "SELECT consecutive FROM failure_counter WHERE action='COUPON'") == 0


def test_a_ceiling_of_one_locks_on_the_first_failure(rt, clock):
    """max_consecutive_failures=1: the insert that records the first failure must set the lock itself (no row yet
    to update), so one wrong code locks the user for lock_minutes."""
    configure(rt, Action.COUPON, max_consecutive_failures=1, lock_minutes=20, validate_limit=100, validity_minutes=60)
    gen(rt)
    code = code_sent_to(rt, PHONE)
    assert not val(rt, "0").valid
    error = refused(val, rt, code)
    assert codes(error) == [E.RATE_LIMITED] and error.retry_after == 20 * 60
    clock.advance(minutes=20)
    assert val(rt, code).valid


def test_every_validation_row_names_the_code_it_was_checked_against(rt, clock):
    """The audit trail links each outcome to its code row: wrong, burned, expired and ok alike."""
    configure(rt, Action.COUPON, attempts_per_code=2, validate_limit=100)
    gen(rt)
    val(rt, "0"), val(rt, "0")  # wrong, then burned: code 1
    gen(rt)
    clock.advance(minutes=10)
    val(rt, code_sent_to(rt, PHONE))  # expired: code 2
    gen(rt)
    assert val(rt, code_sent_to(rt, PHONE)).valid  # ok: code 3
    with rt.db.connect() as conn:
        rows = conn.execute(text("SELECT outcome, code_id FROM otp_validation ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("wrong", 1), ("burned", 1), ("expired", 2), ("ok", 3)]


def _mark_used_before(rt, marker: str):
    """Another request uses the live code just before this one's statement containing marker runs: the race a
    single-row read followed by a conditional UPDATE must lose gracefully."""
    def steal(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        if statement.startswith("UPDATE otp_code") and marker in statement:
            cursor.connection.cursor().execute("UPDATE otp_code SET state = 'used' WHERE state = 'active'")
    event.listen(rt.db, "before_cursor_execute", steal)
    return steal


def test_a_code_used_by_another_request_after_the_read_is_not_used_again(rt):
    gen(rt)
    code = code_sent_to(rt, PHONE)
    steal = _mark_used_before(rt, "used_at")
    try:
        result = val(rt, code)
    finally:
        event.remove(rt.db, "before_cursor_execute", steal)
    assert not result.valid and result.warnings[0].message == "the OTP was already used"
    assert scalar(rt, "SELECT outcome || ':' || code_id FROM otp_validation") == "used_elsewhere:1"


def test_a_wrong_guess_racing_a_success_is_not_counted_as_a_failure(rt):
    gen(rt)
    wrong = "000000" if code_sent_to(rt, PHONE) != "000000" else "111111"
    steal = _mark_used_before(rt, "failed_attempts")
    try:
        result = val(rt, wrong)
    finally:
        event.remove(rt.db, "before_cursor_execute", steal)
    assert not result.valid and result.warnings[0].message == "the OTP was already used"
    assert scalar(rt, "SELECT failed_attempts FROM otp_code") == 0
    assert scalar(rt, "SELECT count(*) FROM failure_counter WHERE consecutive > 0") == 0
    assert scalar(rt, "SELECT outcome || ':' || code_id FROM otp_validation") == "used_elsewhere:1"


def test_daily_limit_501st_refused_without_send(rt):
    configure(rt, Action.COUPON, max_sends_per_code=1000)
    for _ in range(500):
        gen(rt)
    sent = len(outbox(rt))
    error = refused(gen, rt)
    assert codes(error) == [E.RATE_LIMITED] and error.http_status == 429
    assert error.retry_after == 14 * 3600  # 10:00 UTC to midnight UTC
    assert len(outbox(rt)) == sent == 500
    assert scalar(rt, "SELECT count FROM usage_counter WHERE scope='daily:*'") == 500
    assert scalar(rt, "SELECT count(*) FROM otp_request") == 500
    # Counted across actions: another action is refused too.
    assert codes(refused(gen, rt, action="POINTS")) == [E.RATE_LIMITED]


def test_day_boundary_in_configured_time_zone(db_url, tmp_path):
    from core.clock import FrozenClock
    from core.runtime import Runtime
    from tests.conftest import make_settings

    # 18:29 UTC is 23:59 in Kolkata: the local day ends one minute later.
    clock = FrozenClock(datetime(2026, 11, 27, 18, 29, 0, tzinfo=timezone.utc))
    rt = Runtime(make_settings(db_url, tmp_path, timezone="Asia/Kolkata", daily_limit=2), clock=clock)
    try:
        configure(rt, Action.COUPON, max_sends_per_code=100)
        gen(rt), gen(rt)
        error = refused(gen, rt)
        assert error.retry_after == 60
        clock.advance(seconds=59)
        assert codes(refused(gen, rt)) == [E.RATE_LIMITED]
        clock.advance(seconds=1)  # 00:00 in Kolkata, still 18:30 on the UTC day
        assert gen(rt).created_id
        with rt.db.connect() as conn:
            days = set(conn.execute(text("SELECT period FROM usage_counter")).scalars())
        assert days == {"2026-11-27", "2026-11-28"}
    finally:
        rt.db.dispose()


def test_per_code_send_cap(rt):
    gen(rt)
    for _ in range(4):
        assert gen(rt).resent
    error = refused(gen, rt)
    assert codes(error) == [E.RATE_LIMITED] and error.retry_after == 600
    assert len(outbox(rt)) == 5
    assert scalar(rt, "SELECT count FROM usage_counter WHERE scope='daily:*'") == 5  # refused: not counted


def test_per_action_daily_cap(rt):
    configure(rt, Action.COUPON, daily_cap=2, max_sends_per_code=50)
    gen(rt), gen(rt)
    assert codes(refused(gen, rt)) == [E.RATE_LIMITED]
    assert gen(rt, action="POINTS").created_id  # the cap is per action
    assert scalar(rt, "SELECT count FROM usage_counter WHERE scope='daily:*'") == 3


# --- templates: the three levels ---------------------------------------------------------------

def approve_template(rt, action, channel, **fields):
    with rt.session() as session:
        session.add(TemplateVersion(org_id=1, action=action, channel=channel, version=1, status="approved", is_active=True,
                                    author="a", reviewer="b", **fields))
        session.commit()
    rt.configuration_changed()


def test_builtin_then_approved_then_request_template(rt):
    gen(rt, channels=[{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": "c@d.com"}])
    sms, email = outbox(rt)
    assert sms["body"].startswith("Hi user.Your otp for validation is ")
    assert email["subject"] == "Validation Code" and email["body"].startswith("Dear Customer, The validation code")

    approve_template(rt, "POINTS", "SMS", text="{{ brand }}Approved: {{ validation_code }} ({{ expiry_minutes }} min)")
    approve_template(rt, "POINTS", "EMAIL", subject="Your {{ action }} code", body="<b>{{ validation_code }}</b>",
                     is_html=True)
    gen(rt, action="POINTS", channels=[{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": "c@d.com"}])
    sms, email = outbox(rt)[2:]
    assert sms["body"].startswith("Approved: ") and sms["body"].endswith("(10 min)")
    assert email["subject"] == "Your POINTS code" and email["body"].startswith("<b>")

    gen(rt, action="REGISTRATION", template="Request says {{ validation_code }}",
        emailTemplate={"subject": "S", "body": "Body {{ validation_code }}"},
        channels=[{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": "c@d.com"}])
    sms, email = outbox(rt)[4:]
    assert sms["body"].startswith("Request says ") and email["subject"] == "S" and email["body"].startswith("Body ")
    # The request template wins over an approved one too.
    gen(rt, action="POINTS", template="Mine {{ validation_code }}", entityValue="+919812345678")
    assert outbox(rt)[-1]["body"].startswith("Mine ")


def test_unapproved_template_is_not_used(rt):
    with rt.session() as session:
        session.add(TemplateVersion(org_id=1, action="COUPON", channel="SMS", version=1, status="pending", is_active=False,
                                    author="a", text="Pending {{ validation_code }}"))
        session.commit()
    rt.configuration_changed()
    gen(rt)
    assert outbox(rt)[0]["body"].startswith("Hi user.")


def test_html_email_template_escapes_variables(rt):
    from core.settings import Settings
    rt.settings = Settings(**{**rt.settings.model_dump(), "brand": "<script>"})
    approve_template(rt, "COUPON", "EMAIL", subject="s", body="<p>{{ brand }} {{ validation_code }}</p>", is_html=True)
    gen(rt, entityType="EMAIL", entityValue="x@y.com")
    assert outbox(rt)[0]["body"].startswith("<p>&lt;script&gt; ")


# --- the error table ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ({"action": "NOPE"}, [E.INVALID_ACTION]),
    ({"action": None}, [E.INVALID_ACTION]),
    ({"entityType": "FAX"}, [E.INVALID_ENTITY_TYPE]),
    ({"entityType": 3}, [E.INVALID_ENTITY_TYPE]),
    ({"entityValue": None}, [E.INVALID_ENTITY_VALUE]),
    ({"entityValue": 919955882233}, [E.INVALID_ENTITY_VALUE]),
    ({"entityType": "EMAIL", "entityValue": "not-an-email"}, [E.INVALID_ENTITY_VALUE]),
    ({"entityValue": "12"}, [E.INVALID_MOBILE]),
    ({"entityValue": "\uff19\uff19\uff15\uff15\uff18\uff18\uff12\uff12\uff13\uff13"}, [E.INVALID_MOBILE]),
    ({"channels": [{"type": "FAX", "value": PHONE}]}, [E.INVALID_CHANNEL]),
    ({"channels": [{"type": "SMS"}]}, [E.INVALID_CHANNEL]),
    ({"channels": [{"type": "SMS", "value": "123"}]}, [E.INVALID_MOBILE]),
    ({"channels": [{"type": "EMAIL", "value": "nope"}]}, [E.INVALID_CHANNEL]),
    ({"channels": "SMS"}, [E.INVALID_CHANNEL]),
    ({"channels": [{"type": "WHATSAPP", "value": PHONE}]}, [E.WHATSAPP_TEMPLATE_MISSING]),
    ({"channels": [{"type": "ZALO", "value": PHONE}]}, [E.ZALO_TEMPLATE_MISSING]),
    ({"channels": [{"type": "ZALO", "value": PHONE}], "zaloTemplateIdentifier": "  "}, [E.ZALO_TEMPLATE_MISSING]),
    ({"template": "no placeholder"}, [E.TEMPLATE_PROBLEM]),
    ({"template": "{{ validation_code }} {{ validation_code }}"}, [E.TEMPLATE_PROBLEM]),
    ({"template": "{{ otp_code }}"}, [E.TEMPLATE_PROBLEM, E.TEMPLATE_PROBLEM]),
    ({"template": "{% for x in range(10) %}{{ validation_code }}{% endfor %}"}, [E.TEMPLATE_PROBLEM] * 3),
    ({"emailTemplate": {"subject": "s"}}, [E.TEMPLATE_PROBLEM]),
    ({"emailTemplate": "text"}, [E.TEMPLATE_PROBLEM]),
    ({"action": "x", "entityType": "y", "channels": [{}]}, [E.INVALID_ENTITY_TYPE, E.INVALID_ACTION, E.INVALID_CHANNEL, E.INVALID_CHANNEL]),
])
def test_generate_errors(rt, body, expected):
    error = refused(gen, rt, **body)
    assert sorted(codes(error)) == sorted(expected)
    assert error.http_status == 400
    assert scalar(rt, "SELECT count(*) FROM otp_code") == 0 and outbox(rt) == []


def test_channel_not_enabled_is_603(rt):
    configure(rt, Action.COUPON, channels="SMS")
    error = refused(gen, rt, channels=[{"type": "EMAIL", "value": "a@b.com"}, {"type": "PHONE", "value": PHONE}])
    assert codes(error) == [E.INVALID_CHANNEL, E.INVALID_CHANNEL] and error.http_status == 422
    assert scalar(rt, "SELECT count(*) FROM usage_counter") == 0


def test_whatsapp_and_zalo_carry_the_code(rt):
    gen(rt, channels=[{"type": "WHATSAPP", "value": PHONE}, {"type": "ZALO", "value": "+84912345678"},
                      {"type": "MOBILE", "value": PHONE}],
        whatsappTemplateName="otp_auth", zaloTemplateIdentifier="z-123")
    by_channel = {m["channel"]: m for m in outbox(rt)}
    assert set(by_channel) == {"WHATSAPP", "ZALO", "PHONE"}
    assert "otp_auth" in by_channel["WHATSAPP"]["body"] and "z-123" in by_channel["ZALO"]["body"]
    code = code_sent_to(rt, "+84912345678")
    assert code in by_channel["WHATSAPP"]["body"] and code in by_channel["PHONE"]["body"]


@pytest.mark.parametrize("body, expected", [
    ({"code": None}, [E.NO_OTP]),
    ({"code": ""}, [E.NO_OTP]),
    ({"code": 123456}, [E.OTP_INVALID]),
    ({"code": ["123456"]}, [E.OTP_INVALID]),
    ({"code": {"a": 1}}, [E.OTP_INVALID]),
    ({"code": "\uff11\uff12\uff13\uff14\uff15\uff16"}, [E.OTP_INVALID]),
    ({"code": "\u0661\u0662\u0663\u0664\u0665\u0666"}, [E.OTP_INVALID]),
    ({"code": "12 34"}, [E.OTP_INVALID]),
    ({"action": "nope", "code": "1"}, [E.INVALID_ACTION]),
    ({"entityType": "nope", "code": "1"}, [E.INVALID_ENTITY_TYPE]),
])
def test_validate_errors(rt, body, expected):
    gen(rt)
    error = refused(val, rt, **body)
    assert codes(error) == expected and error.http_status == 400
    assert scalar(rt, "SELECT failed_attempts FROM otp_code") == 0  # refused input is not a guess


def test_no_code_is_9001(rt):
    result = val(rt, "123456")
    assert not result.valid and [w.code for w in result.warnings] == [E.NO_VALID_OTP]


def test_gateway_failure_is_7001_warning_or_502(rt):
    rt.gateways = {**rt.gateways, **{c: None for c in rt.gateways if c.value == "EMAIL"}}
    result = gen(rt, channels=[{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": "a@b.com"}])
    assert [w.code for w in result.warnings] == [E.GATEWAY_ERROR]
    with rt.db.connect() as conn:
        statuses = dict(conn.execute(text("SELECT channel, status FROM delivery")).all())
    assert statuses == {"SMS": "delivered", "EMAIL": "failed"}
    error = refused(gen, rt, entityType="EMAIL", entityValue="z@b.com")
    assert codes(error) == [E.GATEWAY_ERROR] and error.http_status == 502


def test_storage_failure_is_606_and_writes_nothing(rt):
    # The request table vanishes mid-flow: the count, the code and the send must all roll back.
    with rt.db.begin() as conn:
        conn.execute(text("ALTER TABLE otp_request RENAME TO otp_request_away"))
    try:
        error = refused(gen, rt)
    finally:
        with rt.db.begin() as conn:
            conn.execute(text("ALTER TABLE otp_request_away RENAME TO otp_request"))
    assert codes(error) == [E.STORAGE_FAILURE] and error.http_status == 503
    assert scalar(rt, "SELECT count(*) FROM otp_code") == 0
    assert scalar(rt, "SELECT count(*) FROM usage_counter") == 0
    assert outbox(rt) == []


def test_alphanumeric_codes_compare_case_insensitively(rt):
    configure(rt, Action.COUPON, alphanumeric=True, code_length=12)
    gen(rt)
    code = code_sent_to(rt, PHONE)
    assert len(code) == 12 and code.isalnum() and code == code.upper()
    assert not code.isdigit()  # letters are drawn too: twelve digits in a row has odds of 2e-7
    assert val(rt, code.lower()).valid


def test_an_outbox_delivery_is_recorded_like_any_other(rt):
    """The outbox sends inside the issuing transaction; its delivery row still says how and how fast it went."""
    result = run(generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON",
                               "channels": [{"type": "SMS", "value": PHONE}]}, org_id=1))
    with rt.read_db.connect() as conn:
        row = conn.execute(text("SELECT status, attempts, latency_ms, gateway, request_id FROM delivery")).one()
        message = conn.execute(text("SELECT delivery_id, recipient FROM outbox_message")).one()
    assert (row.status, row.attempts, row.gateway, row.request_id) == ("delivered", 1, "outbox", result.request_id)
    assert row.latency_ms is not None and 0 <= row.latency_ms < 10_000
    assert message.recipient == PHONE and message.delivery_id == result.deliveries[0].delivery_id
