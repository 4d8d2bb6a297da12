"""A code never leaks: not in logs (every logger at DEBUG), responses, or any column but hash, copy and outbox."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from collections import Counter

from core.crypto import ALPHANUMERIC, DIGITS, new_code
from core.engine import generate, run, validate
from core.enums import Action
from tests.conftest import code_sent_to, configure

PHONE = "+919955882233"
BODY = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}


def _dump(rt) -> dict[tuple[str, str], list[str]]:
    """Every value of every column of every table, as text."""
    found: dict[tuple[str, str], list[str]] = {}
    with rt.db.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")).mappings():
                for column, value in row.items():
                    if value is not None:
                        shown = value.hex() if isinstance(value, (bytes, memoryview)) else str(value)
                        found.setdefault((table, column), []).append(shown)
    return found


def test_code_absent_from_logs_responses_and_database(rt, clock, all_logs):
    # 16 letters and digits cannot turn up by chance in a timestamp or a phone number.
    configure(rt, Action.COUPON, alphanumeric=True, code_length=16, validate_limit=100, attempts_per_code=3)
    configure(rt, Action.POINTS, alphanumeric=True, code_length=16, validate_limit=100)
    responses = []
    responses.append(run(generate(rt, {**BODY, "channels": [{"type": "SMS", "value": PHONE},
                                                            {"type": "EMAIL", "value": "a@b.com"},
                                                            {"type": "WHATSAPP", "value": PHONE}],
                                       "whatsappTemplateName": "auth"})).body())
    used = code_sent_to(rt, PHONE)
    responses.append(run(generate(rt, dict(BODY))).body())  # re-send
    responses.append(run(validate(rt, {**BODY, "code": "WRONGWRONGWRONG1"})).body())
    responses.append(run(validate(rt, {**BODY, "code": used.lower()})).body())

    responses.append(run(generate(rt, dict(BODY))).body())
    burned = code_sent_to(rt, PHONE)
    for _ in range(3):
        responses.append(run(validate(rt, {**BODY, "code": "WRONGWRONGWRONG1"})).body())

    responses.append(run(generate(rt, {**BODY, "action": "POINTS"})).body())
    expired = code_sent_to(rt, PHONE)
    clock.advance(minutes=11)
    responses.append(run(validate(rt, {**BODY, "action": "POINTS", "code": expired})).body())

    codes = {used, burned, expired}
    assert len(codes) == 3 and all(len(c) == 16 for c in codes)
    assert all_logs, "the loggers were silent: the check would prove nothing"
    assert any(r.name.startswith("sqlalchemy.engine") for r in all_logs), "SQL logging was not on"
    for record in all_logs:
        message = record.getMessage()
        for code in codes:
            assert code not in message, f"{record.name} logged a code"
            assert code.lower() not in message
    for body in responses:
        for code in codes:
            assert code not in repr(body)

    dump = _dump(rt)
    for (table, column), values in dump.items():
        for code in codes:
            if any(code in v for v in values):
                assert (table, column) == ("outbox_message", "body"), f"code found in {table}.{column}"
    with rt.db.connect() as conn:
        states = dict(conn.execute(text("SELECT state, count(*) FROM otp_code GROUP BY state")).all())
        assert states == {"used": 1, "burned": 1, "expired": 1}
        assert conn.execute(text("SELECT count(*) FROM otp_code WHERE code_enc IS NOT NULL")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM otp_code WHERE code_hmac IS NULL")).scalar() == 0


def test_expiry_found_by_a_later_generate_wipes_the_copy(rt, clock):
    run(generate(rt, dict(BODY)))
    clock.advance(minutes=10)
    run(generate(rt, dict(BODY)))
    with rt.db.connect() as conn:
        rows = conn.execute(text("SELECT state, code_enc IS NULL FROM otp_code ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("expired", True), ("active", False)]


@pytest.mark.parametrize("channel", ["SMS", "EMAIL", "EMAIL_HTML", "PHONE", "WHATSAPP", "ZALO"])
def test_no_text_form_of_an_outgoing_message_holds_the_code(channel):
    """Each channel's message rendered as the engine renders it: the code is in the message (so the check
    could fail) and in none of its text forms, which a log line or an exception would show."""
    from core.enums import Channel
    from core.messages import ResolvedTemplate, render_message, resolve_template
    from core.templates import template_variables
    code = "Q7ZX4K9W2M"
    variables = template_variables(code=code, action="COUPON", validity_minutes=10, brand="Acme")
    if channel == "EMAIL_HTML":
        template = ResolvedTemplate(Channel.EMAIL, "approved", "test", subject="Code {{ validation_code }}",
                                    body="<b>{{ validation_code }}</b>", is_html=True)
    elif channel == "WHATSAPP":
        template = ResolvedTemplate(Channel.WHATSAPP, "request", "test", whatsapp_name="otp_auth",
                                    whatsapp_language="en")
    elif channel == "ZALO":
        template = ResolvedTemplate(Channel.ZALO, "request", "test", zalo_template_id="233140")
    else:
        template = resolve_template(Channel(channel), Action.COUPON, {})
    message = render_message(template, delivery_id=7, destination=PHONE, code=code, variables=variables)
    rendered = (message.text or "") + (message.subject or "") + (message.body or "")
    assert message.code == code and (code in rendered or channel in ("WHATSAPP", "ZALO"))
    for shown in (repr(message), str(message), f"{message!r}", f"{message}", "%r" % (message,), "%s" % (message,)):
        assert code not in shown and code.lower() not in shown
        assert PHONE in shown  # the text form still says where the message goes


def test_codes_are_uniform_in_every_position_leading_zeros_included():
    """One draw over all codes must give every character at every position the same chance (no lost zeros)."""
    for alphanumeric, alphabet, length in ((False, DIGITS, 6), (True, ALPHANUMERIC, 4)):
        draws = 2000 * len(alphabet)
        counts = Counter()
        for _ in range(draws):
            code = new_code(length, alphanumeric)
            assert len(code) == length and set(code) <= set(alphabet)
            counts.update(enumerate(code))
        expected = draws / len(alphabet)  # 2000 per position and character: a standard deviation of ~44
        assert set(counts) == {(p, c) for p in range(length) for c in alphabet}
        assert all(abs(n - expected) < 0.2 * expected for n in counts.values()), min(counts.values())
