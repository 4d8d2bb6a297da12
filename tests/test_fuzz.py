"""Fuzzing (issue 6): Hypothesis properties of the request validator, and schemathesis against /openapi.json.

The validator (core.issuing.requests.parse_generate / parse_validate) is fed arbitrary JSON-like values, mutations of
valid bodies and Unicode in every field. Whatever it is given, it either returns a request object or raises
OtpError whose problem codes are all in the documented set; never any other exception. A valid body always
parses, and a parsed entity (and every channel destination) is normalised: E.164 or a lower-cased address
that normalises to itself.

schemathesis drives the real app (`api.create_app(rt)`, ASGI, in-process) from its own /openapi.json with an
API client's HTTP Basic credentials: no 5xx and schema-conforming responses, on SQLite only. The receipts
endpoint is also fed garbage (unsigned, and signed with the gateway's own secret) and must answer 4xx.

The *_BUG texts below describe bugs this fuzzing found (now fixed); their tests keep them fixed.
Everything uses `database=None` (no .hypothesis directory) and `deadline=None` (a shared 2-core machine).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import string
import time

import phonenumbers
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)
from sqlalchemy import text

from api import create_app
from core import errors as E
from core.admin.clients import create_client
from core.admin.gateways import save_gateway
from core.admin.staff import StaffIdentity, create_first_admin
from core.db.models import ApiClientCreate, GatewayConfigBase
from core.delivery.templates import render, sample_variables
from core.enums import Action, Channel, EntityType
from core.errors import OtpError
from core.issuing.entities import normalise_email, normalise_phone
from core.issuing.requests import GenerateRequest, ValidateRequest, parse_generate, parse_validate
from core.services.receipts import twilio_signature, webhook_signature
from core.settings import Settings

SETTINGS = Settings(env="test")
# Every code a refusal may carry (README, core/errors.py); the validator itself uses a subset.
DOCUMENTED_CODES = frozenset({429, *range(600, 609), 621, 876, 8056, 9001, 7000, 7001, 7002, 7003})
E164 = re.compile(r"\+[1-9][0-9]{6,14}")

GENERATE_FIELDS = ("entityType", "entityValue", "action", "template", "emailTemplate", "whatsappTemplateName",
                   "whatsappTemplateLanguage", "zaloTemplateIdentifier", "channels")
VALIDATE_FIELDS = ("entityType", "entityValue", "action", "code", "otp")
ALL_KEYS = tuple(dict.fromkeys(GENERATE_FIELDS + VALIDATE_FIELDS + ("type", "value", "subject", "body")))


def fuzz_settings(max_examples: int) -> settings:
    # OTP_FUZZ_MAX_EXAMPLES caps every count for a quick pass (the mutation run executes these tests per mutant).
    cap = int(os.environ.get("OTP_FUZZ_MAX_EXAMPLES") or max_examples)
    return settings(max_examples=min(max_examples, cap), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


def client_auth(rt, name: str = "fuzz") -> dict[str, str]:
    """HTTP Basic headers of a new API client with otp:write (one Argon2 hash: ~0.2 s)."""
    with rt.session() as session:
        creds = create_client(session, client_create=ApiClientCreate(name=name, permissions="otp:write"), org_id=1)
    return {"Authorization": "Basic " + base64.b64encode(f"{creds.key}:{creds.secret}".encode()).decode()}


@pytest.fixture
def api(rt):
    """create_app(rt) behind Starlette's TestClient; an unexpected exception is a 500 (7005), as a client sees it."""
    with TestClient(create_app(rt), raise_server_exceptions=False) as client:
        yield client


def assert_refused(response, status: int | None = None, codes: list[int] | None = None,  # type: ignore[no-untyped-def]
                   context: str = "") -> None:
    """A 4xx (or exactly status) in the documented envelope, the HTTP status as code unless codes are given."""
    where = f"{context}: HTTP {response.status_code} {response.text[:300]}"
    assert (response.status_code == status) if status else (400 <= response.status_code < 500), where
    body = response.json()
    assert set(body) == {"errors", "warnings"} and body["errors"], where
    found = sorted(e["code"] for e in body["errors"])
    assert found == sorted(codes or [response.status_code]), where
    assert all(e["status"] is False and isinstance(e["message"], str) and e["message"] for e in body["errors"]), where


# --- strategies: hostile values -----------------------------------------------------------------------

UNICODE_DIGITS = "٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹०१२३४५६७८९০১২৩০১２３４５６７８９𝟎𝟏𝟐𝟑𝟗"
TRICKY = ("\x00\t\n\r \u00a0\u200b\u200e\u2028\u202e\ufeff+-()./@{}%#|_~'\"\\<>"
          "İıßẞKΩﬁ\u0301\ud800\udfff")  # NUL, invisible and bidi marks, case-folding traps, lone surrogates
SAMPLES = ("MOBILE", "mobile", " Email ", "EMAIL", "COUPON", "coupon ", "Points", "customer_status_update", "SMS",
           "sms", "PHONE", "WhatsApp", "zalo", "+919900012345", "9900012345", "+91 99000 12345", "09900012345",
           "+91 99000 1234５", "someone@example.com", "Some.One@Example.COM", "a@b", "{{ validation_code }}",
           "Code: {{ validation_code|upper }}", "{{ otp }}", "{% for x in y %}", "123456", "00012", "abcDEF",
           "١٢٣٤٥٦", "", " ", "null")

any_char = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from(TRICKY))
any_text = st.one_of(
    st.text(max_size=30),  # any Unicode (Hypothesis leaves out surrogates here...)
    st.text(alphabet=any_char, max_size=20),  # ...so they come in here, with NUL and friends
    st.text(alphabet=st.characters(categories=["Nd", "Nl", "No"]), max_size=15),  # digits of every script
    st.text(alphabet=UNICODE_DIGITS + string.digits + " +-()", max_size=20),
    st.sampled_from(SAMPLES),
)
# json.loads accepts NaN and Infinity, so the validator can receive them.
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
keys = st.sampled_from(ALL_KEYS) | any_text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=10)


def bodies_with_fields(fields: tuple[str, ...]) -> st.SearchStrategy[dict]:
    """Objects made of the contract's own field names, each absent or holding anything (shallow: drawing deep
    values for every field costs more than the validator; test_arbitrary_json_values covers depth)."""
    shallow = scalars | st.lists(scalars, max_size=3) | st.dictionaries(keys, scalars, max_size=3)
    channel = st.fixed_dictionaries({}, optional={"type": shallow, "value": shallow})
    special = {
        "channels": st.lists(channel | scalars, max_size=12) | shallow,
        "emailTemplate": st.fixed_dictionaries({}, optional={"subject": shallow, "body": shallow}) | shallow,
    }
    return st.fixed_dictionaries({}, optional={f: special.get(f, shallow) for f in fields})


# --- strategies: valid bodies -------------------------------------------------------------------------

def mixed_case(word: str) -> st.SearchStrategy[str]:
    flips = st.lists(st.booleans(), min_size=len(word), max_size=len(word))
    return flips.map(lambda f: "".join(c.upper() if up else c.lower() for c, up in zip(word, f)))


def padded(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pad = st.sampled_from(["", " ", "  ", "\t", "\n"])
    return st.tuples(pad, inner, pad).map("".join)


def _indian(number: int, style: int) -> tuple[str, str]:
    d = f"99000{number:05d}"  # +91 99000 xxxxx: valid Indian mobiles
    spelled = [f"+91{d}", f"+91 {d[:5]} {d[5:]}", f"+91-{d[:5]}-{d[5:]}", d, f"0{d}", f"(+91) {d}",
               f"+91.{d[:5]}.{d[5:]}", f"+91 ({d[:5]}) {d[5:]}", f"{d[:5]} {d[5:]}"][style]
    return spelled, f"+91{d}"


def _foreign(region: str, international: bool) -> tuple[str, str]:
    number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not international:
        return e164, e164
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL), e164


REGIONS = ("US", "GB", "DE", "FR", "BR", "VN", "SG", "AE", "NG", "JP", "AU", "ID", "CN", "RU", "ZA", "MX")
# (as sent, E.164 expected)
phones = st.one_of(
    st.builds(_indian, st.integers(0, 99_999), st.integers(0, 8)),
    st.builds(_foreign, st.sampled_from(REGIONS), st.booleans()),
)

_label = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10)
_local = st.lists(st.text(alphabet=string.ascii_letters + string.digits + "_+-", min_size=1, max_size=8),
                  min_size=1, max_size=3).map(".".join).filter(lambda s: s[0] not in "-+")
_domain = st.tuples(st.lists(_label, min_size=1, max_size=3), st.sampled_from(["com", "in", "org", "net", "co.uk"]))
# (as sent, normalised expected)
emails = st.tuples(_local, _domain.map(lambda t: ".".join([*t[0], t[1]])), st.booleans()).map(
    lambda t: ((f"{t[0]}@{t[1]}".upper() if t[2] else f"{t[0]}@{t[1]}"), f"{t[0]}@{t[1]}".lower()))

_safe_text = st.text(alphabet=string.ascii_letters + string.digits + " .,:;!?-'", max_size=60)
_placeholder = st.sampled_from(["{{ validation_code }}", "{{validation_code}}", "{{ validation_code|upper }}",
                                "{{ validation_code | e }}", "{{- validation_code -}}"])
_extra = st.sampled_from(["", " {{ brand }}", " valid {{ expiry_minutes }} min", " for {{ action|lower }}"])
templates = st.tuples(_safe_text, _placeholder, _extra, _safe_text).map("".join)
subjects = st.tuples(st.text(alphabet=string.ascii_letters, min_size=1, max_size=10), _safe_text, _extra).map("".join)


@st.composite
def valid_generate(draw) -> tuple[dict, str, list[str]]:
    """(body, expected entity, expected channel destinations in order, duplicates dropped)."""
    is_mobile = draw(st.booleans())
    raw, expected = draw(phones if is_mobile else emails)
    body: dict = {"entityType": draw(padded(mixed_case("MOBILE" if is_mobile else "EMAIL"))),
                  "entityValue": draw(padded(st.just(raw))),
                  "action": draw(padded(st.sampled_from([a.value for a in Action]).flatmap(mixed_case)))}
    destinations: list[str] = []
    if draw(st.booleans()):
        channels = []
        for _ in range(draw(st.integers(1, 4))):
            if draw(st.booleans()):
                kind = draw(st.sampled_from(["SMS", "PHONE", "MOBILE", "WHATSAPP", "ZALO"]))
                value, dest = draw(phones)
            else:
                kind = "EMAIL"
                value, dest = draw(emails)
            channels.append({"type": draw(padded(mixed_case(kind))), "value": value})
            target = ("PHONE" if kind == "MOBILE" else kind, dest)
            if target not in destinations:
                destinations.append(target)
        body["channels"] = channels
    if draw(st.booleans()):
        body["template"] = draw(templates)
    if draw(st.booleans()):
        email = {"body": draw(templates)}
        if draw(st.booleans()):
            email["subject"] = draw(subjects)
        body["emailTemplate"] = email
    if draw(st.booleans()):
        body["whatsappTemplateName"] = draw(st.from_regex(r"[a-z][a-z0-9_]{0,40}", fullmatch=True))
        body["whatsappTemplateLanguage"] = draw(st.sampled_from(["en", "en_US", "hi", "pt_BR"]))
    if draw(st.booleans()):
        body["zaloTemplateIdentifier"] = draw(st.from_regex(r"[0-9]{1,12}", fullmatch=True))
    for name in ("template", "emailTemplate", "whatsappTemplateName", "zaloTemplateIdentifier", "channels"):
        if name not in body and draw(st.booleans()):
            body[name] = None  # an explicit null is the same as absent
    return body, expected, destinations


@st.composite
def valid_validate(draw) -> tuple[dict, str]:
    is_mobile = draw(st.booleans())
    raw, expected = draw(phones if is_mobile else emails)
    code = draw(st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=50))
    body = {"entityType": draw(mixed_case("MOBILE" if is_mobile else "EMAIL")), "entityValue": raw,
            "action": draw(st.sampled_from([a.value for a in Action]).flatmap(mixed_case)),
            draw(st.sampled_from(["code", "otp"])): code}
    return body, expected


# --- strategies: mutations ----------------------------------------------------------------------------

def _paths(value, prefix=()):  # type: ignore[no-untyped-def]
    """Every position in a nested body, the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _get(value, path):  # type: ignore[no-untyped-def]
    for step in path:
        value = value[step]
    return value


def _set(value, path, new):  # type: ignore[no-untyped-def]
    if not path:
        return new
    _get(value, path[:-1])[path[-1]] = new
    return value


MUTATIONS = ("replace", "delete", "add_key", "unicode", "insert_char", "swap_case", "truncate", "wrap_list",
             "as_json_string", "as_number", "duplicate")


def mutate(data, body):  # type: ignore[no-untyped-def]
    """One random change somewhere in body (a deep copy): the kinds of mistakes and attacks a client makes."""
    body = json.loads(json.dumps(body))
    path = data.draw(st.sampled_from(list(_paths(body))), label="path")
    current = _get(body, path)
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    if kind == "replace":
        return _set(body, path, data.draw(json_values))
    if kind == "delete" and path:
        del _get(body, path[:-1])[path[-1]]
        return body
    if kind == "add_key" and isinstance(current, dict):
        current[data.draw(keys)] = data.draw(json_values)
        return body
    if kind == "duplicate" and isinstance(current, list):
        current.extend(current * data.draw(st.integers(1, 12)))
        return body
    if isinstance(current, str):
        if kind == "unicode":
            return _set(body, path, data.draw(any_text))
        if kind == "insert_char":
            at = data.draw(st.integers(0, len(current)))
            return _set(body, path, current[:at] + data.draw(any_char) + current[at:])
        if kind == "swap_case":
            return _set(body, path, current.swapcase())
        if kind == "truncate":
            return _set(body, path, current[:data.draw(st.integers(0, len(current)))])
        if kind == "as_number" and current.strip().isdigit():
            return _set(body, path, int(current))
    if kind == "wrap_list":
        return _set(body, path, [current])
    if kind == "as_json_string":
        return _set(body, path, json.dumps(current))
    return _set(body, path, data.draw(json_values))


# --- the properties -----------------------------------------------------------------------------------

def assert_phone_normalised(value: str) -> None:
    assert E164.fullmatch(value), value
    strict = SETTINGS.phone_validation == "strict"
    assert normalise_phone(value, region=SETTINGS.default_region, strict=strict) == value


def assert_email_normalised(value: str) -> None:
    assert value == value.lower() and "@" in value, value
    assert normalise_email(value) == value


def assert_normalised(request: GenerateRequest | ValidateRequest) -> None:
    entity = request.entity
    if entity.entity_type is EntityType.MOBILE:
        assert_phone_normalised(entity.value)
    else:
        assert entity.entity_type is EntityType.EMAIL
        assert_email_normalised(entity.value)
    assert isinstance(request.action, Action)
    if isinstance(request, GenerateRequest) and request.channels is not None:
        assert 1 <= len(request.channels) <= 10 and len(set(request.channels)) == len(request.channels)
        for target in request.channels:
            assert isinstance(target.channel, Channel)
            if target.channel is Channel.EMAIL:
                assert_email_normalised(target.destination)
            else:
                assert_phone_normalised(target.destination)
    if isinstance(request, ValidateRequest):
        assert request.code and request.code.isascii() and request.code.isalnum() and len(request.code) <= 50


def check(parse, payload: object):  # type: ignore[no-untyped-def]
    """The contract: a request object, or OtpError with documented codes only. Anything else propagates."""
    try:
        request = parse(payload, SETTINGS)
    except OtpError as exc:
        codes = [p.code for p in exc.problems]
        assert codes, "an OtpError without problems"
        assert set(codes) <= DOCUMENTED_CODES, f"undocumented codes {set(codes) - DOCUMENTED_CODES}"
        assert exc.http_status == 400, exc.http_status
        assert all(isinstance(p.message, str) and p.message for p in exc.problems)
        # The envelope must survive the trip to the client (JSONResponse: json.dumps, then UTF-8).
        json.dumps(exc.envelope(), ensure_ascii=False).encode("utf-8")
        return None
    assert isinstance(request, GenerateRequest if parse is parse_generate else ValidateRequest), type(request)
    assert_normalised(request)
    return request


@fuzz_settings(300)
@given(json_values)
def test_arbitrary_json_values(payload):
    check(parse_generate, payload)
    check(parse_validate, payload)


@fuzz_settings(250)
@given(bodies_with_fields(GENERATE_FIELDS))
def test_generate_fields_holding_anything(body):
    check(parse_generate, body)


@fuzz_settings(150)
@given(bodies_with_fields(VALIDATE_FIELDS))
def test_validate_fields_holding_anything(body):
    check(parse_validate, body)


@fuzz_settings(200)
@given(valid_generate(), st.data())
def test_mutated_generate_bodies(case, data):
    body = case[0]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        body = mutate(data, body)
    check(parse_generate, body)


@fuzz_settings(150)
@given(valid_validate(), st.data())
def test_mutated_validate_bodies(case, data):
    body = case[0]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        body = mutate(data, body)
    check(parse_validate, body)


def _with_unicode_strings(data, body):  # type: ignore[no-untyped-def]
    """Every string in body (values only) kept or replaced by arbitrary Unicode; at least one replaced."""
    body = json.loads(json.dumps(body))
    strings = [p for p in _paths(body) if p and isinstance(_get(body, p), str)]
    chosen = data.draw(st.lists(st.sampled_from(strings), min_size=1, unique=True), label="fields")
    for path in chosen:
        _set(body, path, data.draw(any_text, label=".".join(map(str, path))))
    return body


@fuzz_settings(200)
@given(valid_generate(), st.data())
def test_unicode_in_every_generate_field(case, data):
    check(parse_generate, _with_unicode_strings(data, case[0]))


@fuzz_settings(150)
@given(valid_validate(), st.data())
def test_unicode_in_every_validate_field(case, data):
    check(parse_validate, _with_unicode_strings(data, case[0]))


@fuzz_settings(200)
@given(valid_generate())
def test_valid_generate_body_always_parses(case):
    body, expected, destinations = case
    request = parse_generate(body, SETTINGS)  # must not raise
    assert_normalised(request)
    assert request.entity.value == expected
    assert request.action is Action.parse(body["action"])
    if body.get("channels") is None:
        assert request.channels is None
    else:
        assert [(t.channel.value, t.destination) for t in request.channels] == destinations


@fuzz_settings(150)
@given(valid_validate())
def test_valid_validate_body_always_parses(case):
    body, expected = case
    request = parse_validate(body, SETTINGS)
    assert_normalised(request)
    assert request.entity.value == expected and request.code == body.get("code", body.get("otp"))


# --- bugs found: the validator ------------------------------------------------------------------------

NESTING_BUG = ("core/templates.check_template: a template nested ~100 levels deep ('{{ ((((validation_code)))) }}') "
               "makes Jinja's parser raise RecursionError, which escapes the validator (the API answers 503/606)")
SURROGATE_BUG = ("core/requests._optional_string accepts lone surrogates (valid JSON '\\ud800') in template, "
                 "emailTemplate, whatsappTemplate* and zaloTemplateIdentifier; storing or sending them raises "
                 "UnicodeEncodeError (the API answers 503/606 after the checks)")
FILTER_CHAIN_BUG = ("core/templates: check_template accepts any number of chained filters "
                    "('{{ validation_code|e|e|e... }}'), but each is one more nesting level: ~150 cost seconds "
                    "of CPU to compile, ~200 raise SyntaxError ('too many nested parentheses') in render(), ~900 "
                    "RecursionError in render() or already in check_template's tree walk; none is a RenderError "
                    "or a 608 (the API answers 503/606 after writing the request, the code and a 'queued' delivery)")


@pytest.mark.parametrize("field", ["template", "emailTemplate.body", "emailTemplate.subject"])
@pytest.mark.parametrize(("opener", "closer"), [("(", ")"), ("[", "]")])
def test_deeply_nested_template_is_refused_not_crashed(field, opener, closer):
    # 120 levels: 260 characters, within every template limit (the subject's is 500).
    source = "{{ " + opener * 120 + "validation_code" + closer * 120 + " }}"
    body = {"entityType": "MOBILE", "entityValue": "+919900012345", "action": "COUPON"}
    if field == "template":
        body["template"] = source
    else:
        body["emailTemplate"] = {"body": "{{ validation_code }}", field.split(".")[1]: source}
    assert check(parse_generate, body) is None, NESTING_BUG
    assert _refusal_codes(body) == [E.TEMPLATE_PROBLEM], NESTING_BUG


def _refusal_codes(body: dict) -> list[int]:
    """The codes parse_generate refuses body with (it must refuse it)."""
    with pytest.raises(OtpError) as info:
        parse_generate(body, SETTINGS)
    return [p.code for p in info.value.problems]


def _strings(request) -> list[str]:  # type: ignore[no-untyped-def]
    values = [request.entity.value, request.action.value]
    for name in ("sms_template", "email_subject", "email_body", "whatsapp_template_name", "whatsapp_language",
                 "zalo_template_id"):
        if getattr(request, name, None) is not None:
            values.append(getattr(request, name))
    values += [t.destination for t in (getattr(request, "channels", None) or ())]
    return values


@fuzz_settings(100)
@example(field="template", value="Your code {{ validation_code }} \ud800")
@given(field=st.sampled_from(["template", "emailTemplate.subject", "emailTemplate.body", "whatsappTemplateName",
                              "whatsappTemplateLanguage", "zaloTemplateIdentifier"]),
       value=st.tuples(templates, st.text(alphabet=any_char, max_size=5)).map("".join))
def test_accepted_text_is_valid_unicode(field, value):
    """Whatever the validator accepts can be stored and sent: every string encodes as UTF-8."""
    body: dict = {"entityType": "EMAIL", "entityValue": "someone@example.com", "action": "COUPON"}
    if field.startswith("emailTemplate."):
        body["emailTemplate"] = {"body": "{{ validation_code }}", field.split(".")[1]: value}
    else:
        body[field] = value
    request = check(parse_generate, body)
    if request is not None:
        for item in _strings(request):
            item.encode("utf-8")


@pytest.mark.parametrize(("field", "code"), [
    ("template", E.TEMPLATE_PROBLEM), ("emailTemplate.subject", E.TEMPLATE_PROBLEM),
    ("emailTemplate.body", E.TEMPLATE_PROBLEM), ("whatsappTemplateName", E.WHATSAPP_TEMPLATE_MISSING),
    ("whatsappTemplateLanguage", E.WHATSAPP_TEMPLATE_MISSING), ("zaloTemplateIdentifier", E.ZALO_TEMPLATE_MISSING)])
def test_lone_surrogates_are_refused_in_every_text_field(field, code):
    value = "Your code {{ validation_code }} \ud800"
    body: dict = {"entityType": "EMAIL", "entityValue": "someone@example.com", "action": "COUPON"}
    if field.startswith("emailTemplate."):
        body["emailTemplate"] = {"body": "{{ validation_code }}", field.split(".")[1]: value}
    else:
        body[field] = value
    assert _refusal_codes(body) == [code], SURROGATE_BUG


@pytest.mark.parametrize("filters", [13, 150, 900])
def test_long_filter_chains_are_refused_when_parsed(filters):
    source = "{{ validation_code" + "|e" * filters + " }}"  # 900: 1,821 characters, under the SMS limit
    body = {"entityType": "MOBILE", "entityValue": "+919900012345", "action": "COUPON", "template": source}
    assert _refusal_codes(body) == [E.TEMPLATE_PROBLEM], FILTER_CHAIN_BUG


def test_a_short_filter_chain_is_accepted_and_renders():
    source = "{{ validation_code" + "|e" * 10 + " }}"
    body = {"entityType": "MOBILE", "entityValue": "+919900012345", "action": "COUPON", "template": source}
    request = parse_generate(body, SETTINGS)
    variables = sample_variables(action="COUPON", code_length=6, validity_minutes=10, brand="b")
    assert render(request.sms_template, variables) == str(variables["validation_code"])


# --- bugs found: the same bodies over HTTP --------------------------------------------------------

HOSTILE_GENERATES = [
    pytest.param({"template": "{{ " + "(" * 120 + "validation_code" + ")" * 120 + " }}"}, E.TEMPLATE_PROBLEM, id="nested-template"),
    pytest.param({"template": "Your code {{ validation_code }} \ud800"}, E.TEMPLATE_PROBLEM, id="surrogate-template"),
    pytest.param({"whatsappTemplateName": "otp\udc00", "channels": [{"type": "WHATSAPP", "value": "+919900012346"}]},
                 E.WHATSAPP_TEMPLATE_MISSING, id="surrogate-whatsapp-name"),
    pytest.param({"template": "{{ validation_code" + "|e" * 900 + " }}"}, E.TEMPLATE_PROBLEM, id="filter-chain"),
]


@pytest.mark.parametrize(("extra", "code"), HOSTILE_GENERATES)
def test_hostile_generate_bodies_answer_400(api, rt, extra, code):
    body = {"entityType": "MOBILE", "entityValue": "+919900012345", "action": "COUPON", **extra}
    # json.dumps escapes the lone surrogates as \ud800, exactly as a client's JSON library would.
    response = api.post("/v2/otp/generate", content=json.dumps(body).encode(),
                        headers={**client_auth(rt), "Content-Type": "application/json"})
    assert_refused(response, 400, [code], "hostile generate")
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM otp_request")).scalar() == 0


# --- schemathesis against /openapi.json -----------------------------------------------------------

SCHEMA_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                 response_schema_conformance, response_headers_conformance]
RECEIPTS_PATH = "/v2/otp/receipts/{gateway}"


@pytest.fixture
def api_credentials(rt) -> dict[str, str]:
    return client_auth(rt)


@pytest.fixture
def api_schema(rt):
    """The real app's own description, loaded through ASGI (no sockets); its lifespan is ended afterwards."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(rt))
    yield schema
    from schemathesis.python import asgi
    asgi.shutdown_lifespans()  # the app's failover poller must not outlive this test's database


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@fuzz_settings(60)  # per operation, for the fuzzing phase (schemathesis adds its own coverage cases)
@lazy_schema.parametrize()
def test_openapi(case, api_credentials):
    """Every operation: no 5xx, a declared status, the declared content type, and a body matching its schema.

    Bodies the stricter validator refuses (most of them: random entity values) must still answer in the
    documented envelope. The receipts endpoint gets random gateway names and bodies, with no signature.
    """
    checks = list(SCHEMA_CHECKS)
    response = case.call_and_validate(headers=api_credentials, checks=checks)
    if case.operation.path == RECEIPTS_PATH:
        assert 400 <= response.status_code < 500, response.status_code


RECEIPT_STATUS_BUG = ("api.py: POST /v2/otp/receipts/{gateway} answers 404 (unknown gateway or message id) and 409 "
                      "(replay), as the README documents, but its OpenAPI responses declare neither")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_receipt_statuses_are_declared(api):
    declared = api.get("/openapi.json").json()["paths"][RECEIPTS_PATH]["post"]["responses"]
    answered = api.post("/v2/otp/receipts/no-such-gateway", content=b"{}").status_code
    assert answered == 404
    assert {"404", "409"} <= set(declared), RECEIPT_STATUS_BUG


# --- the receipts endpoint fed garbage ------------------------------------------------------------

GATEWAYS = {  # name: (channel, provider, credentials)
    "hook": ("SMS", "webhook_sms", {"webhook_secret": "whsec-fuzz"}),
    "wa": ("WHATSAPP", "meta_whatsapp", {"access_token": "EAAG", "webhook_secret": "app-secret-fuzz"}),
    "twilio": ("SMS", "twilio_sms", {"account_sid": "AC123", "auth_token": "tok-fuzz"}),
}


@pytest.fixture
def receipt_gateways(rt) -> None:
    """Three gateways with known secrets (none the default for its channel: no sends go through them)."""
    with rt.session() as db:
        made = create_first_admin(db, username="ada", password="correct horse 1")
    admin = StaffIdentity(made.id, made.username, made.role)
    for name, (channel, provider, credentials) in GATEWAYS.items():
        with rt.session() as db:
            save_gateway(db, rt.box, actor=admin, credentials=credentials, config=GatewayConfigBase(
                name=name, channel=channel, provider=provider, endpoint="http://127.0.0.1:9", is_default=False,
                options="{}"), org_id=1)
    rt.configuration_changed()


printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
receipt_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["MessageSid", "MessageStatus", "CallSid", "x"]) | printable, printable,
                    max_size=4).map(lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode()),
    st.fixed_dictionaries({"message_id": json_values, "status": json_values}).map(lambda v: json.dumps(v).encode()),
)
receipt_headers = st.fixed_dictionaries({}, optional={
    "X-Twilio-Signature": printable, "X-Hub-Signature-256": printable | printable.map(lambda s: "sha256=" + s),
    "X-Signature": printable | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    "X-Timestamp": printable | st.just(str(int(time.time()))),
    "Content-Type": st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain"])})


def receipts_unchanged(rt) -> bool:  # type: ignore[no-untyped-def]
    with rt.db.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM delivery_receipt")).scalar() == 0


def test_receipts_refuse_unsigned_garbage(api, rt, receipt_gateways):
    @fuzz_settings(150)
    @given(gateway=st.sampled_from([*GATEWAYS, "nope"]) | printable.filter(lambda s: "/" not in s and s.strip()),
           headers=receipt_headers, body=receipt_bodies)
    def run(gateway, headers, body):
        url = "/v2/otp/receipts/" + "".join(c if c.isalnum() or c in "-_." else f"%{ord(c):02X}" for c in gateway)
        assert_refused(api.post(url, content=body, headers=headers), context=f"{gateway!r} {headers} {body[:80]!r}")

    run()
    assert receipts_unchanged(rt)


def _signed(gateway: str, body: bytes, stamp: str | None = None) -> tuple[bytes, dict[str, str]]:
    secrets_ = GATEWAYS[gateway][2]
    if gateway == "hook":
        stamp = stamp or str(int(time.time()))
        return body, {"X-Timestamp": stamp, "X-Signature": webhook_signature(secrets_["webhook_secret"], stamp, body)}
    if gateway == "wa":
        digest = hmac.new(secrets_["webhook_secret"].encode(), body, hashlib.sha256).hexdigest()
        return body, {"X-Hub-Signature-256": "sha256=" + digest}
    # Twilio signs the URL and the form's parameters (as parsed), not the raw bytes.
    from urllib.parse import parse_qsl
    params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    body = "&".join(f"{k}={v}" for k, v in params.items()).encode()
    params = dict(parse_qsl(body.decode(), keep_blank_values=True))
    url = "http://testserver/v2/otp/receipts/twilio"
    return body, {"X-Twilio-Signature": twilio_signature(secrets_["auth_token"], url, params),
                  "Content-Type": "application/x-www-form-urlencoded"}


SIGNED_RECEIPT_BUG = ("core/receipts: a correctly signed receipt that is malformed answers 503/606, not 4xx: a lone "
                      "surrogate in the message id or status (UnicodeEncodeError in the SQL parameters), a NUL in "
                      "it (PostgreSQL DataError), JSON nested past the recursion limit (RecursionError is not "
                      "caught with ValueError), an X-Timestamp of more than 4,300 digits (int() ValueError)")


def test_receipts_refuse_signed_garbage(api, rt, receipt_gateways):
    """Signed with the gateway's own secret, so the garbage gets past the signature: still 4xx, nothing stored.

    No delivery exists, so a well-formed receipt is an unknown message id (404); a malformed one is 400.
    """
    @fuzz_settings(120)
    @example(gateway="hook", body=b'{"message_id": "\\ud800", "status": "delivered"}')
    @given(gateway=st.sampled_from(sorted(GATEWAYS)), body=receipt_bodies | st.one_of(
        json_values.map(lambda v: json.dumps(
            {"entry": [{"changes": [{"value": {"statuses": [{"id": v, "status": "read"}]}}]}]}).encode()),
        st.integers(50, 20_000).map(lambda n: b"[" * n + b"]" * n)))
    def run(gateway, body):
        body, headers = _signed(gateway, body)
        assert_refused(api.post(f"/v2/otp/receipts/{gateway}", content=body, headers=headers),
                       context=f"{gateway} {body[:120]!r}")

    run()
    assert receipts_unchanged(rt)


SIGNED_MALFORMED = [
    pytest.param("hook", b'{"message_id": "\\ud800", "status": "delivered"}', None, id="hook-surrogate-id"),
    pytest.param("wa", json.dumps({"entry": [{"changes": [{"value": {"statuses": [
        {"id": "wamid.\udfff", "status": "read"}]}}]}]}).encode(), None, id="whatsapp-surrogate-id"),
    pytest.param("hook", b"[" * 30_000 + b"]" * 30_000, None, id="hook-deep-json"),
    pytest.param("wa", b"[" * 30_000 + b"]" * 30_000, None, id="whatsapp-deep-json"),
    pytest.param("hook", b"{}", "1" * 5000, id="hook-5000-digit-timestamp"),
]


@pytest.mark.parametrize(("gateway", "body", "stamp"), SIGNED_MALFORMED)
def test_signed_malformed_receipt_answers_4xx(api, rt, receipt_gateways, gateway, body, stamp):
    body, headers = _signed(gateway, body, stamp)
    assert_refused(api.post(f"/v2/otp/receipts/{gateway}", content=body, headers=headers),
                   context=f"{gateway}: {SIGNED_RECEIPT_BUG}")
    assert receipts_unchanged(rt)
