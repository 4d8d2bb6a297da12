"""The HTTP API (api.py) over the engine: authentication, the wire shapes, hostile bodies and a real server.

Most tests drive `create_app(rt)` through Starlette's TestClient on the parametrized `rt` runtime (SQLite, and
PostgreSQL when OTP_TEST_DATABASE_URL is set). Creating an API client and verifying it costs two Argon2
operations (~0.4 s), so the many bad-input cases are looped inside a few tests, each labelled in its message.
The last test starts uvicorn in a subprocess on its own SQLite file and talks to it over real HTTP.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api import create_app
from core import errors as E
from core.admin.clients import NewClientCredentials, create_client, revoke_client
from core.db.models import ApiClientCreate
from core.enums import Action
from core.settings import ROOT
from tests.conftest import code_sent_to, configure, outbox
from tests.fakes import free_port
from tests.servers import stop

GENERATE_PATH = "/v2/otp/generate"
VALIDATE_PATH = "/v2/otp/validate"
PATHS = (GENERATE_PATH, VALIDATE_PATH)
PHONE = "+919955882233"
EMAIL = "someone@example.com"
GENERATE = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}
VALIDATE = {**GENERATE, "code": "123456"}
BODY_LIMIT = 64 * 1024
# Every table a generate or validate writes to: a refused request must leave all of them empty.
WRITTEN_TABLES = ("otp_code", "otp_request", "delivery", "outbox_message", "usage_counter", "failure_counter",
                  "otp_validation", "limit_event")
CODE_IN_MESSAGE = re.compile(r"(?:is:? |parameter: |otp: )([0-9A-Za-z]+)")  # as tests/conftest.code_sent_to


# --- helpers -------------------------------------------------------------------------------------

def new_client(rt, name: str = "shop", permissions: str = "otp:write") -> NewClientCredentials:
    with rt.session() as session:
        return create_client(session, client_create=ApiClientCreate(name=name, permissions=permissions), org_id=1)


def basic_header(key: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}


def bearer_header(creds: NewClientCredentials) -> dict[str, str]:
    return {"Authorization": f"Bearer {creds.key}.{creds.secret}"}


def default_body(path: str) -> dict:
    return dict(GENERATE if path == GENERATE_PATH else VALIDATE)


def backend(request) -> str:
    return request.node.callspec.params["db_url"]


def counts(rt) -> dict[str, int]:
    with rt.db.connect() as conn:
        return {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in WRITTEN_TABLES}


def assert_nothing_written(rt, context: str = "") -> None:
    found = counts(rt)
    assert found == dict.fromkeys(WRITTEN_TABLES, 0), f"{context}: rows were written: {found}"


def scalar(rt, sql: str, **params):
    with rt.db.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def assert_envelope(response: httpx.Response, status: int, codes: list[int], context: str = "") -> dict:
    """The error envelope of the contract: every problem as {status: false, code, message}, no warnings.

    A 429 also names the limit that refused it in 'reason' (an extra key Capillary clients ignore)."""
    where = f"{context}: HTTP {response.status_code} {response.text[:400]}"
    assert response.status_code == status, where
    assert response.headers["content-type"].startswith("application/json"), where
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"errors", "warnings"}, where
    assert body["warnings"] == [] and body["errors"], where
    for error in body["errors"]:
        expected = {"status", "code", "message"} | ({"reason"} if status == 429 else set())
        assert set(error) == expected, where
        assert error["status"] is False and type(error["code"]) is int, where
        assert isinstance(error["message"], str) and error["message"], where
    assert sorted(e["code"] for e in body["errors"]) == sorted(codes), where
    return body


def assert_code_absent(response: httpx.Response, code: str) -> None:
    assert code not in response.text, f"the code is in the response body: {response.text}"
    for name, value in response.headers.items():
        assert code not in value, f"the code is in the {name} header"


def wrong_code(code: str) -> str:
    return "000000" if code != "000000" else "111111"


@pytest.fixture
def api(rt):
    # Server exceptions become responses, as a real client sees them; an unexpected one is a 500 (7005).
    with TestClient(create_app(rt), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def creds(rt) -> NewClientCredentials:
    return new_client(rt)


@pytest.fixture
def auth(creds) -> tuple[str, str]:
    return creds.key, creds.secret


# --- 1. the happy paths --------------------------------------------------------------------------

def test_generate_and_validate_with_http_basic(rt, api, creds):
    generated = api.post(GENERATE_PATH, json=GENERATE, auth=(creds.key, creds.secret))
    assert generated.status_code == 200, generated.text
    assert generated.headers["content-type"] == "application/json"
    body = generated.json()
    assert set(body) == {"createdId", "warnings"} and type(body["createdId"]) is int and body["warnings"] == []
    with rt.db.connect() as conn:
        request_id, client_id = conn.execute(text("SELECT id, client_id FROM otp_request")).one()
    assert body == {"createdId": request_id, "warnings": []}
    assert client_id == creds.client.id  # the authenticated client is recorded on the request
    [message] = outbox(rt)
    assert message["channel"] == "SMS" and message["recipient"] == PHONE
    code = code_sent_to(rt, PHONE)

    validated = api.post(VALIDATE_PATH, json={**GENERATE, "code": code}, auth=(creds.key, creds.secret))
    assert validated.status_code == 200, validated.text
    assert validated.json() == {"entity": True, "warnings": []}
    assert type(validated.json()["entity"]) is bool
    for response in (generated, validated):
        assert_code_absent(response, code)


def test_generate_resend_and_validate_with_bearer(rt, api, creds):
    headers = bearer_header(creds)
    body = {"entityType": "email", "entityValue": "Someone@Example.com", "action": "points",
            "channels": [{"type": "email", "value": EMAIL}]}
    first = api.post(GENERATE_PATH, json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"createdId": scalar(rt, "SELECT max(id) FROM otp_request"), "warnings": []}
    code = code_sent_to(rt, EMAIL)

    # A re-generation re-sends the same code: createdId 1 and the 7002 warning, still no code in the answer.
    again = api.post(GENERATE_PATH, json=body, headers={"Authorization": f"bearer {creds.key}.{creds.secret}"})
    assert again.status_code == 200, again.text
    assert again.json()["createdId"] == 1
    assert [w["code"] for w in again.json()["warnings"]] == [E.RESENT_SAME_CODE]
    assert code_sent_to(rt, EMAIL) == code and len(outbox(rt, EMAIL)) == 2

    validate = {"entityType": "EMAIL", "entityValue": EMAIL, "action": "POINTS"}
    wrong = api.post(VALIDATE_PATH, json={**validate, "code": wrong_code(code)}, headers=headers)
    assert wrong.status_code == 200
    assert wrong.json()["entity"] is False and [w["code"] for w in wrong.json()["warnings"]] == [E.OTP_INVALID]

    # README's curl example sends validate without a JSON content type, and `otp` is accepted for `code`.
    right = api.post(VALIDATE_PATH, content=json.dumps({**validate, "otp": code}),
                     headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert right.status_code == 200, right.text
    assert right.json() == {"entity": True, "warnings": []}
    for response in (first, again, wrong, right):
        assert_code_absent(response, code)


def test_generate_and_validate_under_a_root_path(rt, creds):
    """A proxy that mounts the service under /otp (uvicorn --root-path /otp) passes paths with the prefix:
    generate and validate answer there as they do at the top, and an unknown path under it is still a 404."""
    auth = (creds.key, creds.secret)
    with TestClient(create_app(rt), root_path="/otp", raise_server_exceptions=False) as api:
        generated = api.post("/otp" + GENERATE_PATH, json=GENERATE, auth=auth)
        assert generated.status_code == 200, generated.text
        assert generated.json()["createdId"] == scalar(rt, "SELECT max(id) FROM otp_request")
        validated = api.post("/otp" + VALIDATE_PATH, json={**GENERATE, "code": code_sent_to(rt, PHONE)}, auth=auth)
        assert validated.json() == {"entity": True, "warnings": []}, validated.text
        assert api.post("/otp/v2/otp/nothing", json=GENERATE, auth=auth).status_code == 404


def test_an_http_error_raised_under_generate_or_validate_keeps_its_status_and_envelope(rt, api, auth, monkeypatch):
    """generate and validate do not pass through the app's exception handlers (api.OtpRoutes): an HTTPException
    from below them must still answer with its own status in the envelope, as from any other route, not 500."""
    from starlette.exceptions import HTTPException

    import api as api_module

    async def refuse(*_args, **_kwargs):
        raise HTTPException(418, "teapot", headers={"X-Why": "test"})

    monkeypatch.setattr(api_module, "validate", refuse)
    response = api.post(VALIDATE_PATH, json={**GENERATE, "code": "123456"}, auth=auth)
    assert response.status_code == 418, response.text
    assert response.json() == {"errors": [{"status": False, "code": 418, "message": "teapot"}], "warnings": []}
    assert response.headers["x-why"] == "test"


# --- 2. authentication ---------------------------------------------------------------------------

def test_missing_or_wrong_credentials_are_401(rt, api, creds):
    wrong_secret = creds.secret[:-1] + ("A" if creds.secret[-1] != "A" else "B")
    cases = {
        "no Authorization header": {},
        "empty Basic": {"Authorization": "Basic "},
        "unknown scheme": {"Authorization": f"Token {creds.key}.{creds.secret}"},
        "malformed base64": {"Authorization": "Basic %%not*base64%%"},
        "base64 of a key without a colon": {"Authorization": "Basic " + base64.b64encode(creds.key.encode()).decode()},
        "base64 of invalid UTF-8": {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
        "Basic with an empty secret": basic_header(creds.key, ""),
        "Bearer without a dot": {"Authorization": f"Bearer {creds.key}{creds.secret}"},
        "wrong secret (Basic)": basic_header(creds.key, wrong_secret),
        "wrong secret (Bearer)": {"Authorization": f"Bearer {creds.key}.{wrong_secret}"},
        "unknown key": basic_header("ck_" + "0" * 24, creds.secret),
    }
    for index, (label, headers) in enumerate(cases.items()):
        # Each wrong credential costs a full Argon2 verification: alternate the endpoints, check both for no header.
        for path in (PATHS if index == 0 else [PATHS[index % 2]]):
            response = api.post(path, json=default_body(path), headers=headers)
            assert_envelope(response, 401, [401], f"{label} on {path}")
            assert "Basic" in response.headers.get("www-authenticate", ""), label
            assert "retry-after" not in response.headers
    assert_nothing_written(rt, "after refused credentials")
    # The bodies were fine: the same call with the right credentials is accepted.
    assert api.post(GENERATE_PATH, json=GENERATE, headers=basic_header(creds.key, creds.secret)).status_code == 200


def test_revoked_client_is_401(rt, api, creds):
    assert api.post(GENERATE_PATH, json=GENERATE, auth=(creds.key, creds.secret)).status_code == 200
    sent = outbox(rt)
    with rt.session() as session:
        assert revoke_client(session, client_id=creds.client.id, org_id=1)
    rt.auth.forget_all()
    for path, headers in ((GENERATE_PATH, basic_header(creds.key, creds.secret)),
                          (VALIDATE_PATH, bearer_header(creds))):
        response = api.post(path, json=default_body(path), headers=headers)
        assert_envelope(response, 401, [401], f"revoked client on {path}")
        assert response.headers.get("www-authenticate")
    assert outbox(rt) == sent
    assert scalar(rt, "SELECT count(*) FROM otp_request") == 1
    assert scalar(rt, "SELECT count(*) FROM otp_validation") == 0


def test_client_without_otp_write_is_403(rt, api):
    reader = new_client(rt, name="reader", permissions="otp:read")
    for path in PATHS:
        for headers in (basic_header(reader.key, reader.secret), bearer_header(reader)):
            response = api.post(path, json=default_body(path), headers=headers)
            assert_envelope(response, 403, [403], f"otp:read client on {path}")
    assert_nothing_written(rt, "after 403")
    # A comma-separated list that includes otp:write is enough.
    both = new_client(rt, name="both", permissions="otp:read, otp:write")
    assert api.post(GENERATE_PATH, json=GENERATE, headers=bearer_header(both)).status_code == 200


def test_non_ascii_basic_credentials_are_401(rt, api):
    for raw in (b"Basic \xe9\xe9\xe9\xe9", b"Basic Y2s\xb2OnNlY3JldA=="):
        response = api.post(GENERATE_PATH, json=GENERATE, headers={"Authorization": raw})
        assert_envelope(response, 401, [401], repr(raw))
        assert response.headers.get("www-authenticate")
    assert_nothing_written(rt)


def test_nul_in_basic_key_is_401(request, rt, api, creds):
    for key, secret in ((creds.key + "\x00", creds.secret), (creds.key, creds.secret + "\x00")):
        response = api.post(GENERATE_PATH, json=GENERATE, headers=basic_header(key, secret))
        assert_envelope(response, 401, [401], repr(key))
    assert_nothing_written(rt)


# --- 3. bad input: never a 500, always the envelope, nothing written -----------------------------

NESTED_ARRAY = b"[" * 30_000 + b"]" * 30_000  # well formed, 60 000 bytes: under the size limit


def _oversized_chunks(total: int, chunk: int = 8192):
    """A generate body of more than `total` bytes, sent chunked (a generator has no Content-Length)."""
    yield b'{"entityType": "MOBILE", "entityValue": "'
    for _ in range(total // chunk):
        yield b"9" * chunk
    yield b'", "action": "COUPON"}'


# label: (expected HTTP status, a function making the content). Every one is answered with code 7000.
BAD_BODIES = {
    "invalid JSON": (400, lambda: b'{"entityType": "MOBILE",'),
    "empty body": (400, lambda: b""),
    "only whitespace": (400, lambda: b" \r\n\t "),
    "JSON array (batch)": (400, lambda: json.dumps([GENERATE, GENERATE]).encode()),
    "empty JSON array": (400, lambda: b"[]"),
    "JSON string": (400, lambda: b'"MOBILE"'),
    "JSON number": (400, lambda: b"42"),
    "JSON float": (400, lambda: b"-1.5e300"),
    "JSON null": (400, lambda: b"null"),
    "JSON true": (400, lambda: b"true"),
    "bare NaN": (400, lambda: b"NaN"),
    "invalid UTF-8": (400, lambda: b'{"entityValue": "\xff\xfe"}'),
    "raw NUL byte in a string": (400, lambda: b'{"entityType": "MOBILE", "entityValue": "99\x00", "action": "X"}'),
    "single quotes": (400, lambda: b"{'entityType': 'MOBILE'}"),
    "trailing garbage": (400, lambda: json.dumps(GENERATE).encode() + b" x"),
    "two objects": (400, lambda: json.dumps(GENERATE).encode() * 2),
    "5000-digit integer": (400, lambda: b'{"entityValue": ' + b"9" * 5000 + b"}"),
    "60000 nested [": (400, lambda: b"[" * 60_000),
    "deep nesting, well formed": (400, lambda: NESTED_ARRAY),
    "deep nesting inside a field": (400, lambda: b'{"entityType": "MOBILE", "action": ' + NESTED_ARRAY + b"}"),
    "12000 nested objects": (400, lambda: b'{"a":' * 12_000),
    "100000 nested [ (over 64 KiB)": (413, lambda: b"[" * 100_000),
    "over 64 KiB with Content-Length": (413, lambda: b'{"entityValue": "' + b"9" * BODY_LIMIT + b'"}'),
    "over 64 KiB chunked": (413, lambda: _oversized_chunks(BODY_LIMIT + 1)),
    "1 MiB chunked": (413, lambda: _oversized_chunks(1024 * 1024, chunk=64 * 1024)),
}


def test_body_that_is_not_one_json_object_of_at_most_64_kib_is_7000(rt, api, auth):
    for label, (status, make) in BAD_BODIES.items():
        for path in PATHS:
            content = make()
            if status == 400:
                assert len(content) <= BODY_LIMIT, label
            response = api.post(path, content=content, auth=auth, headers={"Content-Type": "application/json"})
            assert_envelope(response, status, [E.INVALID_BODY], f"{label} on {path}")
    assert_nothing_written(rt, "after bodies that are not one JSON object of at most 64 KiB")


def test_body_of_exactly_64_kib_is_read_whole(rt, api, auth):
    exact = json.dumps(GENERATE).encode()
    exact += b" " * (BODY_LIMIT - len(exact))  # valid JSON padded to the limit
    assert len(exact) == BODY_LIMIT
    first = api.post(GENERATE_PATH, content=exact, auth=auth)
    assert first.status_code == 200, first.text
    # The same bytes sent chunked, without Content-Length.
    chunked = api.post(GENERATE_PATH, content=(exact[i:i + 1000] for i in range(0, len(exact), 1000)), auth=auth)
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()["createdId"] == 1  # a re-send of the same code: the body was read completely
    sent = len(outbox(rt))
    for label, content in (("one byte over", exact + b" "),
                           ("one byte over, chunked", (c for c in (exact, b" ")))):
        assert_envelope(api.post(GENERATE_PATH, content=content, auth=auth), 413, [E.INVALID_BODY], label)
    assert len(outbox(rt)) == sent == 2


FULLWIDTH_PHONE = "\uff19\uff19\uff15\uff15\uff18\uff18\uff12\uff12\uff13\uff13"  # 9955882233 in full-width digits
ARABIC_INDIC_PHONE = "\u0669\u0669\u0665\u0665\u0668\u0668\u0662\u0662\u0663\u0663"
DEVANAGARI_PHONE = "\u096f\u096f\u096b\u096b\u096e\u096e\u0968\u0968\u0969\u0969"
UNICODE_DIGIT_CODES = ["\uff11\uff12\uff13\uff14\uff15\uff16", "\u0661\u0662\u0663\u0664\u0665\u0666",
                       "\u0967\u0968\u0969\u096a\u096b\u096c", "\u00b9\u00b2\u00b3456", "12345\u0666",
                       "\U0001d7cf\U0001d7d0\U0001d7d1\U0001d7d2\U0001d7d3\U0001d7d4", "\u2460\u2461\u2462456",
                       "12345\u0301", "ABC\u0130EF"]
LONG = 10_240
WRONG_TYPES = [1, 1.5, True, None, [], ["MOBILE"], {}, {"a": 1}]

# (what the case is about, path, override of the default body, expected codes): each answered 400.
# In an override, `code: None` together with `otp` means the `code` key is left out.
BAD_FIELDS: list[tuple[str, str, dict, list[int]]] = []
for _value in WRONG_TYPES + ["", "FAX", "PHONE", "MOBILE_NUMBER"]:
    BAD_FIELDS += [("type/enum", path, {"entityType": _value}, [E.INVALID_ENTITY_TYPE]) for path in PATHS]
for _value in WRONG_TYPES + ["", "  "]:
    BAD_FIELDS += [("type", path, {"entityValue": _value}, [E.INVALID_ENTITY_VALUE]) for path in PATHS]
for _value in WRONG_TYPES + ["", "LOGIN", "COUPONS", "coupon points"]:
    BAD_FIELDS += [("type/enum", path, {"action": _value}, [E.INVALID_ACTION]) for path in PATHS]
for _value in [1, 1.5, True, "SMS", {}, {"type": "SMS", "value": PHONE}, [], [1], [None], [[]], ["SMS"],
               [{"type": 1, "value": PHONE}], [{"type": None, "value": PHONE}], [{"type": "SMS", "value": 9955882233}],
               [{"type": "SMS", "value": None}], [{"type": "SMS", "value": [PHONE]}], [{"type": "SMS"}],
               [{"value": PHONE}], [{"type": "TELEGRAM", "value": PHONE}], [{"type": "", "value": PHONE}],
               [{"type": "SMS", "value": PHONE}] * 11]:
    BAD_FIELDS.append(("type/enum", GENERATE_PATH, {"channels": _value}, [E.INVALID_CHANNEL]))
for _value in [1, 1.5, True, [], ["{{ validation_code }}"], {}, {"text": "{{ validation_code }}"}]:
    BAD_FIELDS.append(("type", GENERATE_PATH, {"template": _value}, [E.TEMPLATE_PROBLEM]))
for _value in [1, True, "Body {{ validation_code }}", [], ["{{ validation_code }}"], {},
               {"subject": "s"}, {"body": 1}, {"body": ["{{ validation_code }}"]},
               {"subject": 1, "body": "{{ validation_code }}"}, {"subject": [], "body": "{{ validation_code }}"}]:
    BAD_FIELDS.append(("type", GENERATE_PATH, {"emailTemplate": _value}, [E.TEMPLATE_PROBLEM]))
for _name in ("whatsappTemplateName", "whatsappTemplateLanguage"):
    for _value in [1, True, [], {}]:
        BAD_FIELDS.append(("type", GENERATE_PATH, {_name: _value}, [E.WHATSAPP_TEMPLATE_MISSING]))
for _value in [1, True, [], {}]:
    BAD_FIELDS.append(("type", GENERATE_PATH, {"zaloTemplateIdentifier": _value}, [E.ZALO_TEMPLATE_MISSING]))
for _value in [123456, 1.5, True, False, 0, [], ["123456"], {}, {"code": "123456"}, "12 34", "12-34", "A" * 51]:
    BAD_FIELDS.append(("type", VALIDATE_PATH, {"code": _value}, [E.OTP_INVALID]))
    BAD_FIELDS.append(("type (otp alias)", VALIDATE_PATH, {"code": None, "otp": _value}, [E.OTP_INVALID]))
for _value in [None, ""]:
    BAD_FIELDS.append(("missing code", VALIDATE_PATH, {"code": _value}, [E.NO_OTP]))
# Unicode digits are refused, never folded into ASCII.
for _phone in (FULLWIDTH_PHONE, ARABIC_INDIC_PHONE, DEVANAGARI_PHONE, "+91" + FULLWIDTH_PHONE, "99558822\u0663\u0663"):
    BAD_FIELDS += [("unicode digits", path, {"entityValue": _phone}, [E.INVALID_MOBILE]) for path in PATHS]
    BAD_FIELDS.append(("unicode digits", GENERATE_PATH, {"channels": [{"type": "SMS", "value": _phone}]},
                       [E.INVALID_MOBILE]))
BAD_FIELDS += [("unicode digits", VALIDATE_PATH, {"code": code}, [E.OTP_INVALID]) for code in UNICODE_DIGIT_CODES]
BAD_FIELDS += [  # NUL characters in the fields that identify the user, the action or the channel
    ("NUL", GENERATE_PATH, {"entityValue": "+9199558\x0082233"}, [E.INVALID_MOBILE]),
    ("NUL", GENERATE_PATH, {"entityValue": PHONE + "\x00"}, [E.INVALID_MOBILE]),
    ("NUL", GENERATE_PATH, {"entityType": "EMAIL", "entityValue": "some\x00one@example.com"},
     [E.INVALID_ENTITY_VALUE]),
    ("NUL", GENERATE_PATH, {"entityType": "EMAIL", "entityValue": EMAIL + "\x00"}, [E.INVALID_ENTITY_VALUE]),
    ("NUL", GENERATE_PATH, {"entityType": "MOBILE\x00"}, [E.INVALID_ENTITY_TYPE]),
    ("NUL", GENERATE_PATH, {"action": "COUPON\x00"}, [E.INVALID_ACTION]),
    ("NUL", GENERATE_PATH, {"action": "\x00"}, [E.INVALID_ACTION]),
    ("NUL", GENERATE_PATH, {"channels": [{"type": "SMS\x00", "value": PHONE}]}, [E.INVALID_CHANNEL]),
    ("NUL", GENERATE_PATH, {"channels": [{"type": "SMS", "value": PHONE + "\x00"}]}, [E.INVALID_MOBILE]),
    ("NUL", GENERATE_PATH, {"channels": [{"type": "EMAIL", "value": "a\x00@b.com"}]}, [E.INVALID_CHANNEL]),
    ("NUL", VALIDATE_PATH, {"entityValue": PHONE + "\x00"}, [E.INVALID_MOBILE]),
    ("NUL", VALIDATE_PATH, {"action": "COUPON\x00"}, [E.INVALID_ACTION]),
    ("NUL", VALIDATE_PATH, {"code": "123\x00456"}, [E.OTP_INVALID]),
    ("NUL", VALIDATE_PATH, {"code": "\x00"}, [E.OTP_INVALID]),
]
BAD_FIELDS += [  # 10 KiB strings
    ("long", GENERATE_PATH, {"entityValue": "9" * LONG}, [E.INVALID_MOBILE]),
    ("long", GENERATE_PATH, {"entityType": "EMAIL", "entityValue": "a" * LONG + "@example.com"},
     [E.INVALID_ENTITY_VALUE]),
    ("long", GENERATE_PATH, {"entityType": "M" * LONG}, [E.INVALID_ENTITY_TYPE]),
    ("long", GENERATE_PATH, {"action": "C" * LONG}, [E.INVALID_ACTION]),
    ("long", GENERATE_PATH, {"channels": [{"type": "S" * LONG, "value": PHONE}]}, [E.INVALID_CHANNEL]),
    ("long", GENERATE_PATH, {"channels": [{"type": "SMS", "value": "9" * LONG}]}, [E.INVALID_MOBILE]),
    ("long", GENERATE_PATH, {"channels": [{"type": "EMAIL", "value": "b" * LONG + "@example.com"}]},
     [E.INVALID_CHANNEL]),
    ("long", GENERATE_PATH, {"template": "x" * LONG + "{{ validation_code }}"}, [E.TEMPLATE_PROBLEM]),
    ("long", GENERATE_PATH, {"channels": [{"type": "WHATSAPP", "value": PHONE}], "whatsappTemplateName": "w" * LONG},
     [E.WHATSAPP_TEMPLATE_MISSING]),
    ("long", GENERATE_PATH, {"channels": [{"type": "ZALO", "value": PHONE}], "zaloTemplateIdentifier": "z" * LONG},
     [E.ZALO_TEMPLATE_MISSING]),
    ("long", VALIDATE_PATH, {"entityValue": "9" * LONG}, [E.INVALID_MOBILE]),
    ("long", VALIDATE_PATH, {"code": "1" * LONG}, [E.OTP_INVALID]),
]
BAD_FIELDS += [  # every problem of a request is reported, not only the first
    ("all problems", GENERATE_PATH, {"entityType": "FAX", "entityValue": 5, "action": "LOGIN",
                                     "channels": [{"type": "TELEGRAM", "value": PHONE}, {"type": "SMS"}],
                                     "template": 1},
     [E.INVALID_ENTITY_TYPE, E.INVALID_ENTITY_VALUE, E.INVALID_ACTION, E.INVALID_CHANNEL, E.INVALID_CHANNEL,
      E.TEMPLATE_PROBLEM]),
    ("all problems", VALIDATE_PATH, {"entityType": None, "entityValue": None, "action": None, "code": None},
     [E.INVALID_ENTITY_TYPE, E.INVALID_ENTITY_VALUE, E.INVALID_ACTION, E.NO_OTP]),
]


def _apply(body: dict, override: dict) -> dict:
    merged = {**body, **override}
    if "otp" in override and override.get("code") is None:
        merged.pop("code")
    return merged


def test_bad_fields_are_400_with_every_problem_and_write_nothing(rt, api, auth):
    """Wrong types and unknown values for every field, Unicode digits, NUL characters and 10 KiB strings."""
    assert len(BAD_FIELDS) > 190  # guards against the table being emptied by an edit
    for about, path, override, expected in BAD_FIELDS:
        response = api.post(path, json=_apply(default_body(path), override), auth=auth)
        assert_envelope(response, 400, expected, f"{about}: {path} {override!r}"[:300])
        assert len(response.content) < 4096, f"{about}: the answer echoes the input"
    assert_nothing_written(rt, "after bad fields")


def test_refused_codes_are_not_guesses(rt, api, auth):
    assert api.post(GENERATE_PATH, json=GENERATE, auth=auth).status_code == 200
    code = code_sent_to(rt, PHONE)
    for bad in UNICODE_DIGIT_CODES + ["1" * LONG, code + "\x00", "\x00", [code], int(code)]:
        response = api.post(VALIDATE_PATH, json={**GENERATE, "code": bad}, auth=auth)
        assert_envelope(response, 400, [E.OTP_INVALID], repr(bad)[:60])
        assert_code_absent(response, code)
    assert scalar(rt, "SELECT failed_attempts FROM otp_code") == 0
    assert scalar(rt, "SELECT count(*) FROM otp_validation") == 0
    assert scalar(rt, "SELECT count(*) FROM usage_counter WHERE scope LIKE 'validate:%'") == 0
    ok = api.post(VALIDATE_PATH, json={**GENERATE, "code": code}, auth=auth)
    assert ok.json() == {"entity": True, "warnings": []}


def test_nul_in_request_templates_is_refused_and_writes_nothing(request, rt, api, auth):
    for label, extra, code in (
            ("template", {"template": "Code\x00 {{ validation_code }}"}, E.TEMPLATE_PROBLEM),
            ("emailTemplate.subject", {"entityType": "EMAIL", "entityValue": EMAIL,
                                       "emailTemplate": {"subject": "S\x00", "body": "{{ validation_code }}"}},
             E.TEMPLATE_PROBLEM),
            ("whatsappTemplateLanguage", {"channels": [{"type": "WHATSAPP", "value": PHONE}],
                                          "whatsappTemplateName": "otp", "whatsappTemplateLanguage": "en\x00"},
             E.WHATSAPP_TEMPLATE_MISSING),
            ("whatsappTemplateName", {"channels": [{"type": "WHATSAPP", "value": PHONE}],
                                      "whatsappTemplateName": "\x00"}, E.WHATSAPP_TEMPLATE_MISSING),
            ("zaloTemplateIdentifier", {"channels": [{"type": "ZALO", "value": "+84912345678"}],
                                        "zaloTemplateIdentifier": "otp\x00"}, E.ZALO_TEMPLATE_MISSING)):
        before = counts(rt)
        response = api.post(GENERATE_PATH, json={**GENERATE, **extra}, auth=auth)
        assert_envelope(response, 400, [code], label)
        assert counts(rt) == before, label


def test_non_ascii_digit_content_length_is_not_a_server_error(rt, creds):
    app = create_app(rt)
    body = json.dumps(GENERATE).encode()
    auth_header = basic_header(creds.key, creds.secret)["Authorization"].encode()
    messages: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": GENERATE_PATH, "raw_path": GENERATE_PATH.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", auth_header),
                         (b"content-type", b"application/json"), (b"content-length", b"\xb2")]}
    asyncio.run(app(scope, receive, send))  # Starlette would re-raise an exception the app did not handle
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    assert status == 400, status
    assert_nothing_written(rt)


# --- 4. and 5. limits and gateways ---------------------------------------------------------------

def test_429_carries_an_integer_retry_after(rt, api, auth):
    configure(rt, Action.COUPON, max_sends_per_code=1)
    assert api.post(GENERATE_PATH, json=GENERATE, auth=auth).status_code == 200
    code = code_sent_to(rt, PHONE)
    refused = api.post(GENERATE_PATH, json=GENERATE, auth=auth)
    assert_envelope(refused, 429, [E.RATE_LIMITED], "second send of a code limited to one")
    assert re.fullmatch(r"[1-9][0-9]*", refused.headers["retry-after"]), refused.headers
    assert int(refused.headers["retry-after"]) == 600  # the code expires in 10 minutes (frozen clock)
    assert len(outbox(rt)) == 1
    assert_code_absent(refused, code)

    for _ in range(5):  # the validate limit: 5 calls per 15-minute window, aligned to the clock (10:00 here)
        assert api.post(VALIDATE_PATH, json={**GENERATE, "code": wrong_code(code)}, auth=auth).status_code == 200
    limited = api.post(VALIDATE_PATH, json={**GENERATE, "code": code}, auth=auth)
    assert_envelope(limited, 429, [E.RATE_LIMITED], "sixth validate in the window")
    assert re.fullmatch(r"[1-9][0-9]*", limited.headers["retry-after"])
    assert int(limited.headers["retry-after"]) == 900
    assert_code_absent(limited, code)


def test_all_channels_failing_is_502_7001(rt, api, auth):
    rt.gateways = {channel: None for channel in rt.gateways}
    response = api.post(GENERATE_PATH, json=GENERATE, auth=auth)
    assert_envelope(response, 502, [E.GATEWAY_ERROR], "no gateway at all")
    two = api.post(GENERATE_PATH, auth=auth, json={
        **GENERATE, "channels": [{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": EMAIL}]})
    assert_envelope(two, 502, [E.GATEWAY_ERROR, E.GATEWAY_ERROR], "two failing channels")
    assert "retry-after" not in two.headers
    assert outbox(rt) == []
    assert scalar(rt, "SELECT count(*) FROM delivery WHERE status <> 'failed'") == 0


class _ExplodingGateway:
    """A gateway whose failure text is full of internals, as a database or provider error can be."""
    name = "exploding"

    async def send(self, message):
        raise RuntimeError("(sqlite3.OperationalError) no such table: outbox_message [SQL: INSERT INTO "
                           "outbox_message ...] (Background on this error at: https://sqlalche.me/e/21/e3q8)")


def test_gateway_failure_does_not_leak_internals(rt, api, auth):
    rt.gateways = {**rt.gateways, **{c: _ExplodingGateway() for c in rt.gateways if c.value == "SMS"}}
    response = api.post(GENERATE_PATH, auth=auth, json={
        **GENERATE, "channels": [{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": EMAIL}]})
    assert response.status_code == 200, response.text
    [warning] = response.json()["warnings"]
    assert warning["code"] == E.GATEWAY_ERROR
    for leak in ("SQL", "INSERT", "outbox_message", "sqlalche.me", "OperationalError"):
        assert leak not in warning["message"], warning["message"]
    # The delivery record keeps the full error for staff.
    assert "no such table" in scalar(rt, "SELECT error FROM delivery WHERE channel = 'SMS'")


# --- 6. health and the OpenAPI description -------------------------------------------------------

def _resolve(schema: dict, ref: str) -> dict:
    assert ref.startswith("#/components/schemas/"), ref
    name = ref.rsplit("/", 1)[1]
    assert name in schema["components"]["schemas"], f"{ref} does not exist"
    return schema["components"]["schemas"][name]


def test_health_openapi_and_docs(rt, api):
    health = api.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json() == {
        "status": "ok", "database": "ok"}

    response = api.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {GENERATE_PATH, VALIDATE_PATH, "/health"} <= set(schema["paths"])
    for path, required in ((GENERATE_PATH, {"entityType", "entityValue", "action", "channels"}),
                           (VALIDATE_PATH, {"entityType", "entityValue", "action", "code"})):
        operation = schema["paths"][path]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = _resolve(schema, ref)
        assert required <= set(body["properties"]), (path, sorted(body["properties"]))
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert {"warnings"} <= set(_resolve(schema, ok)["properties"])
        assert {"400", "401", "403", "429", "502", "503"} <= set(operation["responses"]), path
        assert operation["security"] == [{"basic": []}, {"bearer": []}, {"capAccessToken": []},
                                         {"capOauthToken": []}], path
    assert schema["components"]["securitySchemes"]["basic"]["scheme"] == "basic"
    channel_ref = schema["components"]["schemas"]["GenerateBody"]["properties"]["channels"]["anyOf"][0]["items"]["$ref"]
    assert {"type", "value"} <= set(_resolve(schema, channel_ref)["properties"])
    for ref in set(re.findall(r'"\$ref":\s*"([^"]+)"', response.text)):  # no dangling reference anywhere
        _resolve(schema, ref)

    docs = api.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in docs.text.lower() and "/openapi.json" in docs.text


def test_unknown_paths_and_methods_answer_in_the_envelope(rt, api, auth):
    missing = api.post("/v2/otp/nothing", json={}, auth=auth)
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == 404
    wrong = api.get(GENERATE_PATH, auth=auth)
    assert wrong.status_code == 405 and wrong.json() == {
        "errors": [{"status": False, "code": 405, "message": "Method Not Allowed"}], "warnings": []}


# --- 7. a real server over real HTTP -------------------------------------------------------------

def _latest_code(db_path) -> str:
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT body FROM outbox_message ORDER BY id DESC LIMIT 1").fetchone()
    assert row, "nothing in the outbox"
    match = CODE_IN_MESSAGE.search(row[0])
    assert match, row[0]
    return match.group(1)


def test_real_uvicorn_server_end_to_end(tmp_path):
    db_path = tmp_path / "otp.db"
    key_file = tmp_path / "secret.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTP_")}
    env.update(OTP_DATABASE_URL=f"sqlite:///{db_path}", OTP_SECRET_KEY_FILE=str(key_file), OTP_ENV="development",
               PYTHONUNBUFFERED="1")
    made = subprocess.run([sys.executable, "-m", "cli", "client", "create", "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    key_line = re.search(r"^key: (\S+)$", made.stdout, re.M)
    secret_line = re.search(r"^secret: (\S+)$", made.stdout, re.M)
    assert key_line and secret_line, made.stdout
    key, secret = key_line.group(1), secret_line.group(1)
    assert secret not in made.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "api:app", "--host", "127.0.0.1",
                                   "--port", str(port), "--log-level", "warning"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, f"uvicorn exited: {log_path.read_text()}"
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"uvicorn did not answer /health: {log_path.read_text()}"
                time.sleep(0.1)
            assert http.get("/health").json()["status"] == "ok"

            unauthorised = http.post(GENERATE_PATH, json=GENERATE)
            assert_envelope(unauthorised, 401, [401], "real server without credentials")
            assert unauthorised.headers["www-authenticate"]

            generated = http.post(GENERATE_PATH, json=GENERATE, auth=(key, secret))
            assert generated.status_code == 200, generated.text
            assert set(generated.json()) == {"createdId", "warnings"} and generated.json()["warnings"] == []
            code = _latest_code(db_path)

            bearer = {"Authorization": f"Bearer {key}.{secret}"}
            valid = http.post(VALIDATE_PATH, json={**GENERATE, "code": code}, headers=bearer)
            assert valid.status_code == 200 and valid.json() == {"entity": True, "warnings": []}, valid.text
            again = http.post(VALIDATE_PATH, json={**GENERATE, "code": code}, auth=(key, secret))
            assert again.status_code == 200, again.text
            assert again.json()["entity"] is False
            assert [w["code"] for w in again.json()["warnings"]] == [E.NO_VALID_OTP]
            for response in (generated, valid, again):
                assert_code_absent(response, code)

            # Through a real HTTP parser: an oversized chunked body and one over Content-Length are refused.
            chunked = http.post(GENERATE_PATH, content=_oversized_chunks(BODY_LIMIT + 1), auth=(key, secret))
            assert_envelope(chunked, 413, [E.INVALID_BODY], "real server, chunked")
            sized = http.post(GENERATE_PATH, content=b" " * (BODY_LIMIT + 1), auth=(key, secret))
            assert_envelope(sized, 413, [E.INVALID_BODY], "real server, Content-Length")
            garbage = http.post(VALIDATE_PATH, content=b"[" * 60_000, auth=(key, secret))
            assert_envelope(garbage, 400, [E.INVALID_BODY], "real server, deep nesting")
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("SELECT count(*) FROM otp_request").fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM outbox_message").fetchone()[0] == 1
    finally:
        stop(server)


def test_a_server_start_freezes_the_start_up_heap(tmp_path):
    """Start-up objects stay out of full collections (api._freeze_startup_heap); in a child process, since a
    freeze is for the life of the process."""
    script = ("import gc; from fastapi.testclient import TestClient; import api\n"
              "with TestClient(api.create_app()) as client:\n"
              "    assert client.get('/health').status_code == 200\n"
              "    print(gc.get_freeze_count())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTP_")}
    env.update(OTP_DATABASE_URL=f"sqlite:///{tmp_path / 'otp.db'}", OTP_SECRET_KEY_FILE=str(tmp_path / "key"))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 50_000  # the modules, the engine and the runtime
