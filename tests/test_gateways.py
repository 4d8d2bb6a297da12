"""Gateways against real servers on 127.0.0.1: request shapes, faults and retries, receipts, failover."""
from __future__ import annotations

import email
import json
import sqlite3
import time
from email import policy

import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import text

from core import errors as E
from core.admin.gateways import list_gateways, save_gateway
from core.admin.staff import StaffIdentity, create_first_admin
from core.db.models import GatewayConfigBase
from core.enums import Action
from core.errors import OtpError
from core.runtime import run
from core.services.failover import run_due_failovers
from core.services.generation import generate
from core.services.receipts import ReceiptRefused, apply_receipt, twilio_signature, webhook_signature
from core.settings import Settings
from tests.conftest import configure, no_collector_pauses, outbox
from tests.fakes import Answer, FakeProvider, MailServer, free_port, wait_for

PHONE = "+919955882233"
FAST = {"backoff_seconds": 0.01, "timeout_seconds": 1.0}


@pytest.fixture(autouse=True)
def _no_code_in_any_log(request, all_logs):
    """Every test here runs with every logger at DEBUG; afterwards no live code may appear in any line."""
    rt = request.getfixturevalue("rt") if "rt" in request.fixturenames else None
    yield
    if rt is None:
        return
    with rt.db.connect() as conn:
        rows = conn.execute(text("SELECT user_key, action, code_enc FROM otp_code WHERE code_enc IS NOT NULL")).all()
    codes = [rt.keys.decrypt_code(r.user_key, r.action, bytes(r.code_enc)) for r in rows]
    for code in codes:
        # 'mail.log' is aiosmtpd playing the recipient's mail server: it holds the message by design.
        leaks = {r.name for r in all_logs if code in r.getMessage() and r.name != "mail.log"}
        assert not leaks, f"a code reached the logs of {leaks}"


@pytest.fixture
def admin(rt) -> StaffIdentity:
    with rt.session() as db:
        made = create_first_admin(db, username="ada", password="correct horse 1")
    return StaffIdentity(made.id, made.username, made.role)


@pytest.fixture
def provider():
    with FakeProvider() as fake:
        yield fake


def add_gateway(rt, admin, *, name, channel, provider, endpoint="", sender="", options=None, credentials=None,
                default=True):
    with rt.session() as db:
        save_gateway(db, rt.box, actor=admin, credentials=credentials, config=GatewayConfigBase(
            name=name, channel=channel, provider=provider, endpoint=endpoint, sender=sender,
            options=json.dumps({**FAST, **(options or {})}), is_default=default), org_id=1)
    rt.configuration_changed()


def deliveries(rt) -> list[dict]:
    with rt.db.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT id, channel, gateway, status, attempts, http_status, provider_message_id, error, failover_step "
            "FROM delivery ORDER BY id")).mappings()]


def stored_code(rt, destination: str | None = None) -> str:
    """The code, recovered from the stored encrypted copy (the test plays the role of the recipient)."""
    with rt.db.connect() as conn:
        row = conn.execute(text("SELECT user_key, action, code_enc FROM otp_code ORDER BY id DESC")).first()
    return rt.keys.decrypt_code(row.user_key, row.action, bytes(row.code_enc))


def gen(rt, **body):
    return run(generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON", **body}, org_id=1))


def twilio(rt, admin, provider, **options):
    add_gateway(rt, admin, name="twilio", channel="SMS", provider="twilio_sms", endpoint=provider.url,
                sender="+15005550006", credentials={"account_sid": "AC123", "auth_token": "tok-secret"},
                options=options)


# --- request shapes -------------------------------------------------------------------------------

def test_twilio_sms_shape(rt, admin, provider, all_logs):
    twilio(rt, admin, provider)
    result = gen(rt, channels=[{"type": "SMS", "value": PHONE}])
    [seen] = provider.requests
    code = stored_code(rt)
    assert seen.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert seen.headers["authorization"].startswith("Basic ")
    # Twilio documents no idempotency key for sending: we claim none (the retry policy does not rely on one).
    assert "i-twilio-idempotency-token" not in seen.headers and "idempotency-key" not in seen.headers
    form = seen.form()
    assert form["To"] == PHONE and form["From"] == "+15005550006" and form["Body"].endswith(f"{code}.")
    assert code not in seen.path
    assert result.deliveries[0].status == "sent"
    assert deliveries(rt)[0]["provider_message_id"] == "SM0001" and deliveries(rt)[0]["gateway"] == "twilio"
    assert outbox(rt) == []
    assert all(code not in r.getMessage() for r in all_logs)
    assert any(r.name.startswith("httpx") for r in all_logs)


def test_webhook_sms_shape(rt, admin, provider):
    add_gateway(rt, admin, name="hook", channel="SMS", provider="webhook_sms", endpoint=provider.url + "/send",
                sender="ACME", credentials={"token": "bearer-secret"},
                options={"headers": {"X-Account": "42"}, "body": {"msisdn": "{to}", "message": "{text}"},
                         "message_id_field": "id"})
    gen(rt)
    [seen] = provider.requests
    assert seen.path == "/send" and seen.headers["authorization"] == "Bearer bearer-secret"
    assert seen.headers["x-account"] == "42" and seen.headers["idempotency-key"].startswith("otp-delivery-")
    assert seen.json() == {"msisdn": PHONE, "message": f"Hi user.Your otp for validation is {stored_code(rt)}."}
    assert deliveries(rt)[0]["provider_message_id"] == "msg-1"


def _transactions_open(rt, db_url) -> int:
    """Write transactions open on the database right now, seen from outside the service's connections."""
    if db_url.startswith("sqlite"):
        probe = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return 0
        except sqlite3.OperationalError:  # database is locked: someone holds the write lock
            return 1
        finally:
            probe.close()
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://").split("?")[0]) as probe:
        return probe.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()").fetchone()[0]


def test_no_transaction_is_open_while_a_network_gateway_sends(rt, admin, provider, db_url):
    seen: list[int] = []
    provider.on_request = lambda: seen.append(_transactions_open(rt, db_url))
    twilio(rt, admin, provider)
    with rt.db.begin() as conn:  # the probe does see an open write transaction
        conn.execute(text("UPDATE usage_counter SET count = count"))
        assert _transactions_open(rt, db_url) == 1
    gen(rt)
    assert seen == [0] and deliveries(rt)[0]["status"] == "sent"


def test_twilio_voice_reads_digits(rt, admin, provider):
    add_gateway(rt, admin, name="call", channel="PHONE", provider="twilio_voice", endpoint=provider.url,
                sender="+15005550006", credentials={"account_sid": "AC9", "auth_token": "t"})
    gen(rt, channels=[{"type": "MOBILE", "value": PHONE}])
    [seen] = provider.requests
    code = stored_code(rt)
    assert seen.path == "/2010-04-01/Accounts/AC9/Calls.json"
    twiml = seen.form()["Twiml"]
    assert twiml.startswith("<Response><Say>") and ", ".join(code) in twiml and code not in twiml


def test_meta_whatsapp_shape(rt, admin, provider):
    provider.script = [Answer(body={"messages": [{"id": "wamid.1"}]})]
    add_gateway(rt, admin, name="wa", channel="WHATSAPP", provider="meta_whatsapp", endpoint=provider.url,
                sender="10987", credentials={"access_token": "EAAG"})
    gen(rt, channels=[{"type": "WHATSAPP", "value": PHONE}], whatsappTemplateName="otp_auth",
        whatsappTemplateLanguage="en_US")
    [seen] = provider.requests
    code = stored_code(rt)
    assert seen.path == "/10987/messages" and seen.headers["authorization"] == "Bearer EAAG"
    body = seen.json()
    assert body["to"] == PHONE.lstrip("+") and body["type"] == "template"
    assert body["template"]["name"] == "otp_auth" and body["template"]["language"] == {"code": "en_US"}
    assert body["template"]["components"][0]["parameters"][0]["text"] == code
    assert body["template"]["components"][1]["sub_type"] == "url"
    assert body["template"]["components"][1]["parameters"][0]["text"] == code
    assert deliveries(rt)[0]["provider_message_id"] == "wamid.1"


def test_zalo_zns_shape(rt, admin, provider):
    provider.script = [Answer(body={"error": 0, "message": "Success", "data": {"msg_id": "z-9"}})]
    add_gateway(rt, admin, name="zalo", channel="ZALO", provider="zalo_zns", endpoint=provider.url + "/zns",
                credentials={"access_token": "zat"})
    gen(rt, channels=[{"type": "ZALO", "value": "+84912345678"}], zaloTemplateIdentifier="233140")
    [seen] = provider.requests
    assert seen.path == "/zns" and seen.headers["access_token"] == "zat"
    body = seen.json()
    assert body["phone"] == "84912345678" and body["template_id"] == "233140"
    assert body["template_data"] == {"otp": stored_code(rt)} and body["tracking_id"].startswith("otp-delivery-")
    assert deliveries(rt)[0]["provider_message_id"] == "z-9"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, controller.port
    controller.stop()


def test_smtp_email_has_subject_and_both_parts(rt, admin, smtp_server):
    inbox, port = smtp_server
    add_gateway(rt, admin, name="smtp", channel="EMAIL", provider="smtp", endpoint=f"127.0.0.1:{port}",
                sender="otp@acme.test", options={"security": "none", "sender_name": "Acme OTP"})
    run(generate(rt, {"entityType": "EMAIL", "entityValue": "Someone@Example.com", "action": "COUPON"}, org_id=1))
    [message] = inbox.messages
    code = stored_code(rt)
    assert message["Subject"] == "Validation Code" and message["To"] == "someone@example.com"
    assert message["From"] == "Acme OTP <otp@acme.test>"
    plain = message.get_body(("plain",)).get_content()
    markup = message.get_body(("html",)).get_content()
    assert code in plain and code in markup and "<p>" in markup
    assert deliveries(rt)[0]["status"] == "sent"


class RefuseAuth:
    def __call__(self, server, session, envelope, mechanism, auth_data):
        return AuthResult(success=False, handled=False)


def test_smtp_auth_failure_fails_once_without_retry(rt, admin):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), authenticator=RefuseAuth(),
                            auth_require_tls=False, auth_required=True)
    controller.start()
    try:
        add_gateway(rt, admin, name="smtp", channel="EMAIL", provider="smtp", endpoint=f"127.0.0.1:{controller.port}",
                    sender="otp@acme.test", options={"security": "none"},
                    credentials={"username": "u", "password": "wrong"})
        with pytest.raises(OtpError) as refused:
            run(generate(rt, {"entityType": "EMAIL", "entityValue": "a@b.com", "action": "COUPON"}, org_id=1))
    finally:
        controller.stop()
    assert [p.code for p in refused.value.problems] == [E.GATEWAY_ERROR] and refused.value.http_status == 502
    [row] = deliveries(rt)
    assert row["status"] == "failed" and row["attempts"] == 1 and "authentication failed" in row["error"]
    assert inbox.messages == []


# --- faults ---------------------------------------------------------------------------------------

# Each provider as configured for the "sends once" tests: channel, gateway settings, request, success answer.
PROVIDER_CASES = {
    "twilio_sms": ("SMS", dict(sender="+15005550006", credentials={"account_sid": "AC1", "auth_token": "t"}),
                   {"channels": [{"type": "SMS", "value": PHONE}]}, {"sid": "SM1"}),
    "twilio_voice": ("PHONE", dict(sender="+15005550006", credentials={"account_sid": "AC1", "auth_token": "t"}),
                     {"channels": [{"type": "PHONE", "value": PHONE}]}, {"sid": "CA1"}),
    "webhook_sms": ("SMS", dict(sender="ACME"), {"channels": [{"type": "SMS", "value": PHONE}]}, {"id": "m1"}),
    "webhook_voice": ("PHONE", dict(sender="ACME"), {"channels": [{"type": "PHONE", "value": PHONE}]}, {"id": "m1"}),
    "meta_whatsapp": ("WHATSAPP", dict(sender="10987", credentials={"access_token": "EAAG"}),
                      {"channels": [{"type": "WHATSAPP", "value": PHONE}], "whatsappTemplateName": "otp_auth"},
                      {"messages": [{"id": "wamid.1"}]}),
    "zalo_zns": ("ZALO", dict(credentials={"access_token": "zat"}),
                 {"channels": [{"type": "ZALO", "value": "+84912345678"}], "zaloTemplateIdentifier": "233140"},
                 {"error": 0, "data": {"msg_id": "z-1"}}),
}


def _provider_gateway(rt, admin, provider, kind, **options):
    channel, settings, request, _ok = PROVIDER_CASES[kind]
    add_gateway(rt, admin, name=kind.replace("_", "-"), channel=channel, provider=kind, endpoint=provider.url,
                options={"attempts": 3, **options}, **settings)
    return request


@pytest.mark.parametrize("fault", ["answer_lost_in_timeout", "500_after_delivery"])
@pytest.mark.parametrize("kind", sorted(PROVIDER_CASES))
def test_a_message_the_provider_took_is_never_sent_twice(rt, admin, provider, kind, fault):
    """The provider delivers what it accepts, then its answer is lost (timeout) or is a 500: no retry may follow,
    since none of these providers documents de-duplication; the send fails (failover and refund take over)."""
    ok = PROVIDER_CASES[kind][3]
    provider.script = [Answer(body=ok, delay=0.6) if fault == "answer_lost_in_timeout"
                       else Answer(status=500, body={"error": "boom"}, delivers=True), Answer(body=ok)]
    request = _provider_gateway(rt, admin, provider, kind, timeout_seconds=0.2)
    with pytest.raises(OtpError) as failed:
        gen(rt, **request)
    assert failed.value.http_status == 502
    assert len(provider.phone) == 1, "the recipient got the code twice"
    assert len(provider.requests) == 1
    [row] = deliveries(rt)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert ("timed out" in row["error"]) if fault == "answer_lost_in_timeout" else row["http_status"] == 500


def test_a_webhook_that_honours_the_idempotency_key_is_retried_after_a_lost_answer(rt, admin):
    """Declared with idempotency_key_honoured, the receiver de-duplicates on Idempotency-Key: a timeout is
    retried with the same key, and the recipient still gets one message."""
    with FakeProvider(honours_idempotency_key=True) as provider:
        provider.script = [Answer(delay=0.6), Answer()]
        request = _provider_gateway(rt, admin, provider, "webhook_sms", timeout_seconds=0.2,
                                    idempotency_key_honoured=True)
        result = gen(rt, **request)
    assert result.warnings == []
    [row] = deliveries(rt)
    assert row["status"] == "sent" and row["attempts"] == 2
    assert len(provider.requests) == 2 and len({r.headers["idempotency-key"] for r in provider.requests}) == 1
    assert len(provider.phone) == 1


def test_429_with_retry_after_is_honoured(rt, admin, provider):
    provider.script = [Answer(status=429, headers={"Retry-After": "1"}), Answer()]
    twilio(rt, admin, provider)
    started = time.monotonic()
    gen(rt)
    assert time.monotonic() - started >= 1.0
    assert deliveries(rt)[0]["attempts"] == 2 and deliveries(rt)[0]["status"] == "sent"


def test_400_is_not_retried(rt, admin, provider):
    provider.script = [Answer(status=400, body={"message": "bad number"})]
    twilio(rt, admin, provider)
    with pytest.raises(OtpError) as refused:
        gen(rt)
    assert refused.value.http_status == 502 and refused.value.problems[0].code == E.GATEWAY_ERROR
    assert "bad number" not in refused.value.problems[0].message  # provider internals stay in the record
    [row] = deliveries(rt)
    assert row["status"] == "failed" and row["attempts"] == 1 and row["http_status"] == 400
    assert len(provider.requests) == 1


def test_malformed_provider_json_fails_without_retry(rt, admin, provider):
    provider.script = [Answer(raw=b"{not json")]
    twilio(rt, admin, provider)
    with pytest.raises(OtpError):
        gen(rt)
    [row] = deliveries(rt)
    assert row["status"] == "failed" and row["attempts"] == 1 and "malformed JSON" in row["error"]


def test_connection_refused_is_retried_then_fails(rt, admin):
    add_gateway(rt, admin, name="down", channel="SMS", provider="twilio_sms",
                endpoint=f"http://127.0.0.1:{free_port()}", sender="+1",
                credentials={"account_sid": "AC1", "auth_token": "t"}, options={"attempts": 3})
    result = gen(rt, channels=[{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": "a@b.com"}])
    assert [w.code for w in result.warnings] == [E.GATEWAY_ERROR]  # e-mail (outbox) got through
    rows = {r["channel"]: r for r in deliveries(rt)}
    assert rows["SMS"]["status"] == "failed" and rows["SMS"]["attempts"] == 3 and "cannot connect" in rows["SMS"]["error"]
    assert rows["EMAIL"]["status"] == "delivered" and len(deliveries(rt)) == 2


@pytest.mark.parametrize("kind", ["webhook_sms", "webhook_voice"])
def test_a_provider_error_that_echoes_the_code_is_scrubbed(rt, admin, provider, kind):
    """The provider refuses with an error quoting the request, code (spelled out for voice) and destination:
    the delivery row keeps the provider's text without the code, and the client's warning says neither."""
    provider.script = [Answer(status=400, echo=True)]
    channel = PROVIDER_CASES[kind][0]
    _provider_gateway(rt, admin, provider, kind)
    result = gen(rt, channels=[{"type": channel, "value": PHONE}, {"type": "EMAIL", "value": "a@b.com"}])
    code = stored_code(rt)
    echoed = provider.requests[0].body.decode()
    assert (code if kind == "webhook_sms" else ", ".join(code)) in echoed and PHONE in echoed
    rows = {r["channel"]: r for r in deliveries(rt)}
    error = rows[channel]["error"]
    assert "invalid request" in error and PHONE in error  # the provider's own text is kept for staff
    assert code not in error and ", ".join(code) not in error
    [warning] = result.warnings
    assert warning.code == E.GATEWAY_ERROR
    assert code not in warning.message and ", ".join(code) not in warning.message and PHONE not in warning.message


def test_credentials_are_never_shown_back(rt, admin, provider):
    twilio(rt, admin, provider)
    with rt.session() as db:
        [shown] = list_gateways(db, rt.box, org_id=1)
    assert "tok-secret" not in shown.credentials_hint and "AC123" not in shown.credentials_hint
    assert shown.credentials_hint.startswith("account_sid")
    with rt.db.connect() as conn:
        assert b"tok-secret" not in bytes(conn.execute(text("SELECT credentials_enc FROM gateway_config")).scalar())


# --- receipts -------------------------------------------------------------------------------------

RECEIPT_URL = "https://otp.example/v2/otp/receipts/twilio"


def twilio_receipt(rt, params, token="tok-secret", signature=None):
    body = "&".join(f"{k}={v}" for k, v in params.items()).encode()
    sig = signature or twilio_signature(token, RECEIPT_URL, params)
    return apply_receipt(rt, "twilio", url=RECEIPT_URL, headers={"X-Twilio-Signature": sig}, body=body, org_id=1)


def test_twilio_receipts_signed_bad_unknown_replayed(rt, admin, provider):
    twilio(rt, admin, provider)
    gen(rt)
    params = {"MessageSid": "SM0001", "MessageStatus": "delivered"}
    with pytest.raises(ReceiptRefused) as bad:
        twilio_receipt(rt, params, token="wrong")
    assert bad.value.http_status == 401 and deliveries(rt)[0]["status"] == "sent"
    with pytest.raises(ReceiptRefused) as unknown:
        twilio_receipt(rt, {"MessageSid": "SM9999", "MessageStatus": "delivered"})
    assert unknown.value.http_status == 404
    outcome = twilio_receipt(rt, params)
    assert outcome.changed and deliveries(rt)[0]["status"] == "delivered"
    with pytest.raises(ReceiptRefused) as replay:
        twilio_receipt(rt, params)
    assert replay.value.http_status == 409
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM delivery_receipt")).scalar() == 1


def test_webhook_receipt_needs_a_fresh_signed_timestamp(rt, admin, provider):
    add_gateway(rt, admin, name="hook", channel="SMS", provider="webhook_sms", endpoint=provider.url,
                credentials={"webhook_secret": "whsec"})
    gen(rt)
    body = json.dumps({"message_id": "msg-1", "status": "failed"}).encode()
    old = str(int(time.time()) - 3600)
    with pytest.raises(ReceiptRefused) as stale:
        apply_receipt(rt, "hook", url="", headers={"X-Timestamp": old,
                                                   "X-Signature": webhook_signature("whsec", old, body)}, body=body, org_id=1)
    assert stale.value.http_status == 401
    now = str(int(time.time()))
    with pytest.raises(ReceiptRefused):
        apply_receipt(rt, "hook", url="", headers={"X-Timestamp": now, "X-Signature": "0" * 64}, body=body, org_id=1)
    outcome = apply_receipt(rt, "hook", url="", headers={"X-Timestamp": now,
                                                         "X-Signature": webhook_signature("whsec", now, body)}, body=body, org_id=1)
    assert outcome.status == "failed" and deliveries(rt)[0]["status"] == "failed"


def test_receipt_endpoint_over_http(rt, admin, provider):
    from fastapi.testclient import TestClient

    import api
    twilio(rt, admin, provider)
    gen(rt)
    with TestClient(api.create_app(rt), base_url="https://otp.example") as client:
        params = {"MessageSid": "SM0001", "MessageStatus": "delivered"}
        unsigned = client.post("/v2/otp/receipts/twilio", data=params)
        assert unsigned.status_code == 401 and unsigned.json()["errors"][0]["code"] == 401
        signed = client.post("/v2/otp/receipts/twilio", data=params,
                             headers={"X-Twilio-Signature": twilio_signature("tok-secret", RECEIPT_URL, params)})
        assert signed.status_code == 200 and signed.json()["status"] == "delivered"
        assert client.post("/v2/otp/receipts/nope", data=params).status_code == 404


# --- failover -------------------------------------------------------------------------------------

def _failover_setup(rt, admin, provider, seconds=30):
    add_gateway(rt, admin, name="wa", channel="WHATSAPP", provider="meta_whatsapp", endpoint=provider.url,
                sender="10987", credentials={"access_token": "EAAG"})
    from core.db.models import TemplateVersion
    with rt.session() as db:
        db.add(TemplateVersion(org_id=1, action="COUPON", channel="WHATSAPP", version=1, status="approved", is_active=True,
                               author="a", reviewer="b", whatsapp_name="otp_auth", whatsapp_language="en"))
        db.commit()
    configure(rt, Action.COUPON, failover="WHATSAPP,SMS", failover_seconds=seconds)


def test_failover_when_whatsapp_fails_sends_the_same_code_by_sms(rt, admin, provider):
    provider.script = [Answer(status=400, body={"error": {"message": "not a WhatsApp user"}})]
    _failover_setup(rt, admin, provider)
    result = gen(rt)
    rows = deliveries(rt)
    assert [(r["channel"], r["status"], r["failover_step"]) for r in rows] == [
        ("WHATSAPP", "failed", 0), ("SMS", "delivered", 1)]
    assert [w.code for w in result.warnings] == [E.GATEWAY_ERROR]
    code = stored_code(rt)
    assert provider.requests[0].json()["template"]["components"][0]["parameters"][0]["text"] == code
    assert outbox(rt)[0]["body"].endswith(f"{code}.")


def test_failover_when_no_receipt_arrives_in_time(rt, admin, provider, clock):
    provider.script = [Answer(body={"messages": [{"id": "wamid.7"}]})]
    _failover_setup(rt, admin, provider, seconds=30)
    gen(rt)
    assert run(run_due_failovers(rt)) == 0  # not yet due
    assert outbox(rt) == []
    clock.advance(seconds=31)
    assert run(run_due_failovers(rt)) == 1
    assert run(run_due_failovers(rt)) == 0  # claimed once only
    rows = deliveries(rt)
    assert [(r["channel"], r["status"]) for r in rows] == [("WHATSAPP", "sent"), ("SMS", "delivered")]
    assert outbox(rt)[0]["body"].endswith(f"{stored_code(rt)}.")


def test_a_late_failover_sends_with_the_request_body_template(rt, admin, provider, clock):
    """The poller's step runs after the request returned: it must still use the template the body carried."""
    provider.script = [Answer(body={"messages": [{"id": "wamid.9"}]})]
    _failover_setup(rt, admin, provider, seconds=30)
    gen(rt, template="Shop code {{ validation_code }}, from the body")
    with rt.read_db.connect() as conn:
        kept = conn.execute(text("SELECT body_templates FROM otp_request")).scalar_one()
    assert json.loads(kept) == {"sms_template": "Shop code {{ validation_code }}, from the body"}
    clock.advance(seconds=31)
    assert run(run_due_failovers(rt)) == 1
    assert outbox(rt)[0]["body"] == f"Shop code {stored_code(rt)}, from the body"


def test_no_failover_after_a_delivered_receipt(rt, admin, provider, clock):
    provider.script = [Answer(body={"messages": [{"id": "wamid.8"}]})]
    _failover_setup(rt, admin, provider)
    with rt.session() as db:
        save_gateway(db, rt.box, actor=admin, credentials={"access_token": "EAAG", "webhook_secret": "app-secret"},
                     config=GatewayConfigBase(name="wa", channel="WHATSAPP", provider="meta_whatsapp",
                                              endpoint=provider.url, sender="10987", is_default=True,
                                              options=json.dumps(FAST)), org_id=1)
    rt.configuration_changed()
    gen(rt)
    import hashlib
    import hmac
    body = json.dumps({"entry": [{"changes": [{"value": {"statuses": [{"id": "wamid.8", "status": "delivered"}]}}]}]}).encode()
    signature = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert apply_receipt(rt, "wa", url="", headers={"X-Hub-Signature-256": signature}, body=body, org_id=1).status == "delivered"
    clock.advance(seconds=60)
    assert run(run_due_failovers(rt)) == 0 and outbox(rt) == []


# --- test numbers ---------------------------------------------------------------------------------

def test_test_numbers_get_the_fixed_code_only_in_the_outbox_without_limits(db_url, tmp_path, clock, provider):
    from core.runtime import Runtime
    from tests.conftest import make_settings
    rt = Runtime(make_settings(db_url, tmp_path, test_numbers="+9199990*", test_code="424242", daily_limit=2),
                 clock=clock)
    try:
        with rt.session() as db:
            made = create_first_admin(db, username="ada", password="correct horse 1")
        twilio(rt, StaffIdentity(made.id, made.username, made.role), provider)
        configure(rt, Action.COUPON, max_sends_per_code=100)
        for _ in range(4):  # beyond the daily limit of 2
            run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919999012345", "action": "COUPON"}, org_id=1))
        assert provider.requests == []  # never to a real provider
        assert outbox(rt)[-1]["body"].endswith("424242.")
        from core.services.validation import validate
        assert run(validate(rt, {"entityType": "MOBILE", "entityValue": "+919999012345", "action": "COUPON",
                                 "code": "424242"}, org_id=1)).valid
        gen(rt), gen(rt)  # an ordinary number still goes to the provider and still has its limit
        assert len(provider.requests) == 2
        with pytest.raises(OtpError):
            gen(rt)
    finally:
        rt.db.dispose()


def test_test_numbers_are_refused_in_production():
    with pytest.raises(ValueError, match="OTP_TEST_NUMBERS"):
        Settings(env="production", secret_key="A" * 43 + "=", test_numbers="+1555*",
                 gateway_sms="none", gateway_email="none", gateway_phone="none", gateway_whatsapp="none",
                 gateway_zalo="none")


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 made here, so the TLS test needs nothing from outside."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class AcceptAuth:
    def __init__(self) -> None:
        self.logins: list[tuple[bytes, bytes]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"right")


def test_smtp_starttls_with_authentication(rt, admin, tmp_path):
    import ssl
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox, auth = Inbox(), AcceptAuth()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), tls_context=context,
                            require_starttls=True, authenticator=auth, auth_required=True)
    controller.start()
    try:
        add_gateway(rt, admin, name="smtp-tls", channel="EMAIL", provider="smtp",
                    endpoint=f"127.0.0.1:{controller.port}", sender="otp@acme.test",
                    options={"security": "starttls", "tls_verify": False},
                    credentials={"username": "mailer", "password": "right"})
        run(generate(rt, {"entityType": "EMAIL", "entityValue": "a@b.com", "action": "COUPON"}, org_id=1))
    finally:
        controller.stop()
    [message] = inbox.messages
    assert auth.logins == [(b"mailer", b"right")]  # authenticated, which the server allows only after STARTTLS
    assert stored_code(rt) in message.get_body(("plain",)).get_content()
    assert deliveries(rt)[0]["status"] == "sent"


def test_webhook_voice_spells_the_code(rt, admin, provider):
    add_gateway(rt, admin, name="voice-hook", channel="PHONE", provider="webhook_voice",
                endpoint=provider.url + "/call", sender="ACME")
    gen(rt, channels=[{"type": "PHONE", "value": PHONE}])
    [seen] = provider.requests
    code = stored_code(rt)
    assert seen.json()["speak"] == "Your validation code is " + ", ".join(code) + "."
    assert seen.json()["to"] == PHONE


def test_smtp_implicit_tls(rt, admin, tmp_path):
    import ssl
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), ssl_context=context)
    controller.start()
    try:
        add_gateway(rt, admin, name="smtps", channel="EMAIL", provider="smtp",
                    endpoint=f"127.0.0.1:{controller.port}", sender="otp@acme.test",
                    options={"security": "ssl", "tls_verify": False})
        run(generate(rt, {"entityType": "EMAIL", "entityValue": "a@b.com", "action": "COUPON"}, org_id=1))
    finally:
        controller.stop()
    [message] = inbox.messages
    assert stored_code(rt) in message.get_body(("html",)).get_content()



def test_failover_sends_count_against_the_channel_budget(db_url, tmp_path, clock, provider):
    from core.runtime import Runtime
    from tests.conftest import make_settings
    rt = Runtime(make_settings(db_url, tmp_path, channel_budgets="SMS=1"), clock=clock)
    try:
        with rt.session() as db:
            made = create_first_admin(db, username="ada", password="correct horse 1")
        provider.script = [Answer(status=400, body={"error": "not on WhatsApp"})]
        _failover_setup(rt, StaffIdentity(made.id, made.username, made.role), provider)
        gen(rt)  # WhatsApp fails, SMS takes the only unit of the SMS budget
        with pytest.raises(OtpError) as refused:  # WhatsApp fails again; the SMS failover is refused
            run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919812345678", "action": "COUPON"}, org_id=1))
        assert refused.value.http_status == 502
        assert [(r["channel"], r["status"]) for r in deliveries(rt)] == [
            ("WHATSAPP", "failed"), ("SMS", "delivered"), ("WHATSAPP", "failed")]
        with rt.db.connect() as conn:
            assert conn.execute(text("SELECT kind FROM security_event")).scalar() == "budget_trip"
    finally:
        rt.db.dispose()


def test_unknown_smtp_security_is_refused(rt, admin):
    from core.delivery.gateway_settings import GatewayConfigError
    with pytest.raises(GatewayConfigError, match="SMTP security"):
        add_gateway(rt, admin, name="smtp", channel="EMAIL", provider="smtp", endpoint="127.0.0.1:25",
                    options={"security": "tls"})


# --- SMTP on the event loop -----------------------------------------------------------------------

def _smtp(rt, admin, server, **options):
    add_gateway(rt, admin, name="smtp", channel="EMAIL", provider="smtp", endpoint=f"127.0.0.1:{server.port}",
                sender="otp@acme.test", options={"security": "none", "attempts": 3, **options})


def _email_generate(rt, address="a@b.com"):
    return run(generate(rt, {"entityType": "EMAIL", "entityValue": address, "action": "COUPON"}, org_id=1))


@pytest.mark.parametrize("deadline", ["gateway_timeout", "dispatch_timeout"])
def test_smtp_stalled_before_data_times_out_and_never_delivers_later(db_url, tmp_path, clock, deadline):
    """The server stalls at DATA, before the message is sent. Whichever deadline passes first (the gateway's
    timeout_seconds, or the service-wide OTP gateway timeout that cancels the send), the connection is closed
    then: when the stall ends there is no client left to send the message (a worker thread used to be)."""
    from core.runtime import Runtime
    from tests.conftest import make_settings
    dispatch_timeout = 0.5 if deadline == "dispatch_timeout" else 10.0
    rt = Runtime(make_settings(db_url, tmp_path, gateway_timeout_seconds=dispatch_timeout), clock=clock)
    try:
        with rt.session() as db:
            made = create_first_admin(db, username="ada", password="correct horse 1")
        with MailServer(stall_before_data=3.0) as server:
            _smtp(rt, StaffIdentity(made.id, made.username, made.role), server,
                  timeout_seconds=0.5 if deadline == "gateway_timeout" else 5.0)
            with no_collector_pauses():
                started = time.monotonic()
                with pytest.raises(OtpError) as failed:
                    _email_generate(rt)
                took = time.monotonic() - started
            wait_for(lambda: server.closed == server.sessions == 1)  # the server saw the client go
            wait_for(lambda: server.stalled == 0)
        assert server.delivered == [], "the message was delivered after the send had timed out"
        assert failed.value.http_status == 502 and took < 2.5
        [row] = deliveries(rt)
        assert row["status"] == "failed" and "timed out" in row["error"]
    finally:
        rt.db.dispose()


def test_smtp_message_accepted_but_unanswered_is_not_sent_again(rt, admin):
    """The server takes the message, then never says 250: the send fails and is not retried (SMTP has no
    de-duplication; the message is in the recipient's mailbox already)."""
    with MailServer(stall_after_data=1.0) as server:
        _smtp(rt, admin, server, timeout_seconds=0.4)
        with pytest.raises(OtpError):
            _email_generate(rt)
        wait_for(lambda: server.closed == server.sessions)
    assert len(server.delivered) == 1 and server.sessions == 1
    [row] = deliveries(rt)
    assert row["status"] == "failed" and row["attempts"] == 1


def test_smtp_4yz_reply_is_retried(rt, admin):
    """A 4yz reply says the server did not take the message (RFC 5321 4.2.1): the retry is safe."""
    with MailServer(rcpt_replies=["451 4.3.0 try again later"]) as server:
        _smtp(rt, admin, server)
        _email_generate(rt)
    assert len(server.delivered) == 1 and server.sessions == 2
    [row] = deliveries(rt)
    assert row["status"] == "sent" and row["attempts"] == 2


def test_hanging_mail_servers_do_not_hold_up_other_requests(rt, admin):
    """As many stalled SMTP sends as asyncio's default thread pool has threads (the pool PostgreSQL transactions
    run in) hang; meanwhile a generate on another channel and a validate answer at once."""
    import asyncio
    import os

    from core.services.validation import validate
    from tests.conftest import code_sent_to
    pool_threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    with MailServer(stall_before_data=5.0) as server:
        _smtp(rt, admin, server, timeout_seconds=10.0)

        async def scenario():
            hanging = [asyncio.create_task(generate(rt, {"entityType": "EMAIL", "entityValue": f"u{i}@b.com",
                                                         "action": "COUPON"}, org_id=1)) for i in range(pool_threads)]
            deadline = time.monotonic() + 10
            while server.stalled < pool_threads and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            await generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON",
                                "channels": [{"type": "SMS", "value": PHONE}]}, org_id=1)
            generate_s = time.perf_counter() - started
            started = time.perf_counter()
            outcome = await validate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON",
                                          "code": code_sent_to(rt, PHONE)}, org_id=1)
            validate_s = time.perf_counter() - started
            still_hanging = server.stalled
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
            return generate_s, validate_s, outcome.valid, still_hanging

        generate_s, validate_s, valid, still_hanging = run(scenario())
    assert generate_s < 2.5 and validate_s < 2.5, (generate_s, validate_s)
    assert still_hanging == pool_threads, "the slow sends were not all hanging while the others ran"
    assert valid


@pytest.mark.postgresql
def test_hanging_mail_servers_do_not_hold_up_the_server_process(tmp_path):
    """The same as deployed: `serve.py` on PostgreSQL, its requests' transactions in the worker's thread pool.
    While as many email sends as that pool has threads hang in a mail server's DATA, an SMS generate and a
    validate over HTTP answer at once, and the hanging emails are delivered when the server wakes up."""
    import asyncio
    import base64
    import os

    import httpx
    from sqlalchemy import create_engine

    from core.crypto import SecretBox, load_master_key
    from core.db.schemas import PrivateSchema
    from tests.conftest import PG_URL, TEST_KEY
    from tests.servers import ApiServer, cli, new_client
    pool_threads = min(32, (os.cpu_count() or 1) + 4)
    schema = PrivateSchema(PG_URL, "otp_smtp")
    url = schema.create()
    env = {"OTP_DATABASE_URL": url, "OTP_SECRET_KEY": TEST_KEY, "OTP_ENV": "test", "OTP_DESTINATION_LIMIT": "0",
           "OTP_IP_LIMIT": "0", "OTP_PREFIX_LIMIT": "0", "OTP_GATEWAY_TIMEOUT_SECONDS": "30"}
    engine = create_engine(url)
    try:
        cli(env, "migrate")
        key, secret = new_client(env)
        headers = {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}
        with MailServer(stall_before_data=4.0) as mail:
            with engine.begin() as conn:
                box = SecretBox.from_master(load_master_key(Settings(secret_key=TEST_KEY)))
                conn.execute(text(
                    "INSERT INTO gateway_config (org_id, name, channel, provider, endpoint, sender, options, is_default, "
                    "enabled, credentials_enc, created_at, updated_at) VALUES (1, 'smtp', 'EMAIL', 'smtp', :endpoint, "
                    "'otp@acme.test', :options, true, true, :creds, '2026-01-01', '2026-01-01')"),
                    {"endpoint": f"127.0.0.1:{mail.port}", "creds": box.seal(b"{}", "gateway:smtp"),
                     "options": json.dumps({"security": "none", "attempts": 1, "timeout_seconds": 20})})
            with ApiServer(env, serve=True) as server:  # python serve.py --workers 1
                async def scenario():
                    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60,
                                                 limits=httpx.Limits(max_connections=pool_threads + 4)) as client:
                        hanging = [asyncio.create_task(client.post("/v2/otp/generate", json={
                            "entityType": "EMAIL", "entityValue": f"u{i}@b.com", "action": "COUPON"}))
                            for i in range(pool_threads)]
                        deadline = time.monotonic() + 20
                        while mail.stalled < pool_threads and time.monotonic() < deadline:
                            await asyncio.sleep(0.02)
                        started = time.perf_counter()
                        sms = await client.post("/v2/otp/generate", json={
                            "entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON",
                            "channels": [{"type": "SMS", "value": PHONE}]})
                        generate_s = time.perf_counter() - started
                        with engine.connect() as conn:
                            body = conn.execute(text("SELECT body FROM outbox_message WHERE recipient = :r"),
                                                {"r": PHONE}).scalar()
                        started = time.perf_counter()
                        check = await client.post("/v2/otp/validate", json={
                            "entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON",
                            "code": body.rsplit(" ", 1)[-1].rstrip(".")})
                        validate_s = time.perf_counter() - started
                        still_hanging = mail.stalled
                        slow = await asyncio.gather(*hanging)
                        return sms, check, generate_s, validate_s, still_hanging, slow

                sms, check, generate_s, validate_s, still_hanging, slow = asyncio.run(scenario())
    finally:
        engine.dispose()
        schema.drop()
    assert generate_s < 2.5 and validate_s < 2.5, (generate_s, validate_s)
    assert sms.status_code == 200 and check.status_code == 200 and check.json()["entity"] is True
    assert still_hanging == pool_threads, "the email sends were not all hanging while the others ran"
    assert [r.status_code for r in slow] == [200] * pool_threads and len(mail.delivered) == pool_threads


def test_idempotency_key_honoured_must_be_a_boolean(rt, admin, provider):
    from core.delivery.gateway_settings import GatewayConfigError
    with pytest.raises(GatewayConfigError, match="idempotency_key_honoured"):
        add_gateway(rt, admin, name="hook", channel="SMS", provider="webhook_sms", endpoint=provider.url,
                    options={"idempotency_key_honoured": "false"})
