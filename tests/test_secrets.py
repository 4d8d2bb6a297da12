"""A code never leaks: not in logs (every logger at DEBUG), responses, or any column but hash, copy and outbox."""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import inspect, text

from core import errors as E
from core.crypto import ALPHANUMERIC, DIGITS, CodeKeys, SecretBox, equal, load_master_key, new_code, token_key
from core.enums import Action
from core.errors import OtpError
from core.issuing.requests import parse_validate
from core.runtime import run
from core.services.generation import generate
from core.services.validation import validate
from core.settings import Settings
from tests.conftest import code_sent_to, configure, make_settings

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
                                       "whatsappTemplateName": "auth"}, org_id=1)).body())
    used = code_sent_to(rt, PHONE)
    responses.append(run(generate(rt, dict(BODY), org_id=1)).body())  # re-send
    responses.append(run(validate(rt, {**BODY, "code": "WRONGWRONGWRONG1"}, org_id=1)).body())
    responses.append(run(validate(rt, {**BODY, "code": used.lower()}, org_id=1)).body())

    responses.append(run(generate(rt, dict(BODY), org_id=1)).body())
    burned = code_sent_to(rt, PHONE)
    for _ in range(3):
        responses.append(run(validate(rt, {**BODY, "code": "WRONGWRONGWRONG1"}, org_id=1)).body())

    responses.append(run(generate(rt, {**BODY, "action": "POINTS"}, org_id=1)).body())
    expired = code_sent_to(rt, PHONE)
    clock.advance(minutes=11)
    responses.append(run(validate(rt, {**BODY, "action": "POINTS", "code": expired}, org_id=1)).body())

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
    run(generate(rt, dict(BODY), org_id=1))
    clock.advance(minutes=10)
    run(generate(rt, dict(BODY), org_id=1))
    with rt.db.connect() as conn:
        rows = conn.execute(text("SELECT state, code_enc IS NULL FROM otp_code ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("expired", True), ("active", False)]


@pytest.mark.parametrize("channel", ["SMS", "EMAIL", "EMAIL_HTML", "PHONE", "WHATSAPP", "ZALO"])
def test_no_text_form_of_an_outgoing_message_holds_the_code(channel):
    """Each channel's message rendered as the engine renders it: the code is in the message (so the check
    could fail) and in none of its text forms, which a log line or an exception would show."""
    from core.delivery.messages import ResolvedTemplate, render_message, resolve_template
    from core.delivery.templates import template_variables
    from core.enums import Channel
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
    message = render_message(template, delivery_id=7, destination=PHONE, code=code, variables=variables, org_id=1)
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


# The primitives themselves (core.crypto): what each binds, and what a stored row depends on -----------------
def test_a_stored_mac_and_copy_are_the_documented_construction(tmp_path):
    """Rows written by one release must verify under the next: the MAC is HMAC-SHA256 under HKDF(key, "otp-code-hmac")
    of user, action and code joined by 0x1f, and the copy AES-GCM under HKDF(key, "otp-code-aesgcm") with user and
    action as associated data. Any change here silently fails every live code at the upgrade."""
    master = bytes(range(32))
    keys = CodeKeys.from_master(master)

    def hkdf(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(master)

    expected = hmac.new(hkdf(b"otp-code-hmac"), b"MOBILE:+15550001111\x1fCOUPON\x1f042917", hashlib.sha256).digest()
    assert keys.code_mac("MOBILE:+15550001111", "COUPON", "042917") == expected
    blob = keys.encrypt_code("MOBILE:+15550001111", "COUPON", "042917")
    assert AESGCM(hkdf(b"otp-code-aesgcm")).decrypt(blob[:12], blob[12:], b"MOBILE:+15550001111\x1fCOUPON") == b"042917"
    sealed = SecretBox.from_master(master).seal(b"api-secret", "gateway:7:token")
    assert AESGCM(hkdf(b"otp-stored-secrets")).decrypt(sealed[:12], sealed[12:], b"gateway:7:token") == b"api-secret"
    assert token_key(master) == hkdf(b"otp-oauth-access-token-hs256")


def test_each_purpose_has_its_own_key():
    """A key serves one purpose: the MAC key cannot decrypt copies, sign tokens, or open stored secrets."""
    master = bytes(range(32))
    keys = CodeKeys.from_master(master)
    derived = {keys.mac_key, keys.enc_key, token_key(master)}
    assert len(derived) == 3 and all(len(k) == 32 for k in derived)
    sealed = SecretBox.from_master(master).seal(b"password", "gateway:1:password")
    for key in derived:
        with pytest.raises(InvalidTag):
            SecretBox(key).open(sealed, "gateway:1:password")


def test_a_copy_opens_only_for_its_own_user_and_action():
    keys = CodeKeys.from_master(bytes(range(32)))
    blob = keys.encrypt_code("MOBILE:+1", "COUPON", "123456")
    assert len(blob) == 12 + 6 + 16  # a fresh 96-bit nonce, the code, the GCM tag
    assert keys.decrypt_code("MOBILE:+1", "COUPON", blob) == "123456"
    assert keys.encrypt_code("MOBILE:+1", "COUPON", "123456")[:12] != blob[:12]  # never a repeated nonce
    for user, action in (("MOBILE:+2", "COUPON"), ("MOBILE:+1", "POINTS"), ("MOBILE:+1\x1fCOUPON", "")):
        with pytest.raises(InvalidTag):
            keys.decrypt_code(user, action, blob)


def test_a_stored_secret_opens_only_in_its_own_context():
    box = SecretBox.from_master(bytes(range(32)))
    sealed = box.seal(b"password", "gateway:1:password")
    assert box.open(sealed, "gateway:1:password") == b"password"
    assert box.seal(b"password", "gateway:1:password")[:12] != sealed[:12]
    with pytest.raises(InvalidTag):
        box.open(sealed, "gateway:2:password")


def test_the_mac_binds_every_part_and_its_boundaries():
    keys = CodeKeys.from_master(bytes(range(32)))
    mac = keys.code_mac("MOBILE:+1", "COUPON", "123456")
    assert len(mac) == 32
    assert mac not in {keys.code_mac("MOBILE:+1", "COUPON", "123457"), keys.code_mac("MOBILE:+1", "COUPO", "N123456"),
                       keys.code_mac("MOBILE:+1C", "OUPON", "123456")}
    assert CodeKeys.from_master(bytes(32)).code_mac("MOBILE:+1", "COUPON", "123456") != mac


def test_equal_is_true_only_for_identical_bytes():
    assert equal(b"\x01" * 32, b"\x01" * 32)
    assert not equal(b"\x01" * 32, b"\x01" * 31 + b"\x02")
    assert not equal(b"\x01" * 32, b"\x01" * 31)


@pytest.mark.parametrize("alphanumeric", [False, True])
def test_code_length_and_alphabet(alphanumeric):
    alphabet = ALPHANUMERIC if alphanumeric else DIGITS
    for length in (1, 4, 6, 10):
        codes = {new_code(length, alphanumeric) for _ in range(200)}
        assert all(len(c) == length and set(c) <= set(alphabet) for c in codes)
    assert len({new_code(10, alphanumeric) for _ in range(50)}) == 50  # drawn afresh each time


@pytest.mark.parametrize(("value", "accepted"), [
    ("042917", True), ("ab12cd", True), ("Z", True),
    ("", False), ("12 34", False), ("１２３４", False), ("١٢٣٤", False), ("12-4", False), ("é123", False),
    ("1234\n", False),
])
def test_a_submitted_code_is_ascii_letters_and_digits_or_refused(value, accepted, tmp_path):
    """Full-width and Arabic-Indic digits pass str.isdigit(): only ASCII digits and letters reach the check."""
    settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    payload = {"entityType": "MOBILE", "entityValue": "9955882233", "action": "COUPON", "code": value}
    if accepted:
        assert parse_validate(payload, settings).code == value
    else:
        with pytest.raises(OtpError) as refused:
            parse_validate(payload, settings)
        assert refused.value.problems[0].code in (E.OTP_INVALID, E.NO_OTP)


def test_the_key_file_is_made_once_private_and_reused(tmp_path):
    path = tmp_path / "data" / "keys" / "secret.key"  # folders made as needed
    settings = Settings(env="test", secret_key_file=path)
    first = load_master_key(settings)
    assert len(first) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert base64.b64decode(path.read_text()) == first
    assert load_master_key(settings) == first  # a second process reads the same key, never makes another
    assert load_master_key(Settings(env="test", secret_key=base64.b64encode(first).decode())) == first


@pytest.mark.parametrize("length", [16, 31, 33, 64])
def test_a_key_of_the_wrong_size_stops_start_up(tmp_path, length):
    path = tmp_path / "secret.key"
    path.write_text(base64.b64encode(bytes(length)).decode() + "\n")
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        load_master_key(Settings(env="test", secret_key_file=path))
    # The setting is checked when read too; load_master_key refuses it again, by name, if handed one unchecked.
    with pytest.raises(ValueError, match="^OTP_SECRET_KEY must be base64 of exactly 32 bytes$"):
        load_master_key(Settings.model_construct(secret_key=base64.b64encode(bytes(length)).decode()))


def test_a_key_that_is_not_strict_base64_stops_start_up(tmp_path):
    """Lenient base64 drops stray characters and could turn a mistyped key into a different one: refused."""
    typo = base64.b64encode(bytes(range(32))).decode().replace("A", "A!", 1)
    path = tmp_path / "secret.key"
    path.write_text(typo + "\n")
    with pytest.raises(ValueError):
        load_master_key(Settings(env="test", secret_key_file=path))
    with pytest.raises(ValueError):
        load_master_key(Settings.model_construct(secret_key=typo))
