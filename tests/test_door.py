"""At the door: enum names in ASCII only, one-line header fields, slow and abandoned bodies, 405 with Allow.

The first tests drive create_app(rt) in process (bad input is about the request, not the server); the others
start the real server (`uvicorn api:app`, as the README says) and talk to it over a raw socket where the
point is what the server does with a connection: a body that trickles in, a client that hangs up.
"""
from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api import create_app
from core.delivery.templates import RenderError, check_template, render
from core.enums import Action, Channel, EntityType
from core.linebreaks import LINE_BREAKS
from tests.conftest import TEST_KEY
from tests.servers import ApiServer, cli, new_client
from tests.test_api import assert_envelope, assert_nothing_written, basic_header
from tests.test_api import new_client as api_client

PHONE = "+919955882233"
GENERATE = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}
BODY_READ_SECONDS = 1.0


@pytest.fixture
def api(rt):
    with TestClient(create_app(rt), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def auth(rt) -> dict[str, str]:
    creds = api_client(rt)
    return basic_header(creds.key, creds.secret)


# --- enum names: ASCII letters only ------------------------------------------------------------------

def test_look_alike_letters_are_unknown_names_not_folded_into_ascii_ones():
    # What the defence is against: Python's upper() maps dotless i and long s onto ASCII letters.
    assert "poınts".upper() == "POINTS" and "ſms".upper() == "SMS" and "mobıle".upper() == "MOBILE"
    assert Action.parse("poınts") is None and Action.parse("ſubscription") is None
    assert Channel.parse("ſms") is None and Channel.parse("mobıle") is None and Channel.parse("whatſapp") is None
    assert EntityType.parse("emaıl") is None and EntityType.parse("\u00a0EMAIL") is None
    # ASCII letter case and ASCII spaces still fold, as Capillary clients expect.
    assert Action.parse(" Points\t") is Action.POINTS and Channel.parse("sMs") is Channel.SMS
    assert Channel.parse("Mobile\n") is Channel.PHONE and EntityType.parse("email") is EntityType.EMAIL


def test_the_api_refuses_look_alike_enum_names_with_their_codes_and_writes_nothing(rt, api, auth):
    cases = [  # (path, body, expected codes)
        ("generate", {**GENERATE, "action": "poınts"}, [600]),
        ("generate", {**GENERATE, "entityType": "moBıle"}, [601]),
        ("generate", {**GENERATE, "channels": [{"type": "ſms", "value": PHONE}]}, [603]),
        ("generate", {**GENERATE, "channels": [{"type": "mobıle", "value": PHONE}]}, [603]),
        ("validate", {**GENERATE, "action": "poınts", "code": "123456"}, [600]),
    ]
    for path, body, codes in cases:
        response = api.post(f"/v2/otp/{path}", json=body, headers=auth)
        assert_envelope(response, 400, codes, f"{path} {body}")
    assert_nothing_written(rt, "look-alike enum names")


# --- header-bound fields: one line -------------------------------------------------------------------

SINGLE_LINE_FIELDS = {  # field: the code its problems get
    "emailTemplate.subject": 608, "whatsappTemplateName": 607, "whatsappTemplateLanguage": 607,
    "zaloTemplateIdentifier": 621}


def _with_field(field: str, value: str) -> dict:
    if field == "emailTemplate.subject":
        return {**GENERATE, "emailTemplate": {"subject": value, "body": "Your code: {{ validation_code }}"}}
    return {**GENERATE, field: value}


def test_a_line_break_in_a_header_bound_field_is_refused_before_anything_is_counted(rt, api, auth):
    assert len(LINE_BREAKS) == 11  # CR, LF, VT, FF, FS, GS, RS, NEL, LS, PS and NUL
    for char in LINE_BREAKS:
        for field, code in SINGLE_LINE_FIELDS.items():
            body = _with_field(field, f"Your code{char}Bcc: victim@example.com")
            response = api.post("/v2/otp/generate", json=body, headers=auth)
            assert_envelope(response, 400, [code], f"{field} with U+{ord(char):04X}")
    # A Jinja string constant renders a real line feed from an escape the source spells with two characters.
    response = api.post("/v2/otp/generate", headers=auth,
                        json=_with_field("emailTemplate.subject", 'Code{{ "\\r\\nBcc: victim@example.com" }}'))
    assert_envelope(response, 400, [608], "a constant holding CR LF")
    assert_nothing_written(rt, "line breaks in one-line fields")


def test_the_consoles_template_check_and_the_renderer_keep_a_subject_on_one_line():
    for char in LINE_BREAKS:
        check = check_template(f"Code{char}Bcc: x@example.com", kind="subject", require_placeholder=False)
        assert not check.ok and "one line" in str(check.errors[0]), repr(char)
    assert check_template("Line one\nline two {{ validation_code }}", kind="body").ok  # a body may have lines
    assert check_template("Your {{ brand }} code", kind="subject", require_placeholder=False).ok
    with pytest.raises(RenderError, match="one line"):  # the brand setting is a variable the check cannot see
        render("Your {{ brand }} code", {"brand": "Shop\r\nBcc: x@example.com"}, kind="subject",
               require_placeholder=False)


# --- the real server: slow bodies, hang-ups, 405 -----------------------------------------------------

@pytest.fixture(scope="module")
def door(tmp_path_factory):
    """`uvicorn api:app` on its own SQLite file with a 1 s body read time; its log goes to a file."""
    base = tmp_path_factory.mktemp("door")
    env = {"OTP_DATABASE_URL": f"sqlite:///{base / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY, "OTP_IP_LIMIT": "0",
           "OTP_BODY_READ_SECONDS": str(BODY_READ_SECONDS)}
    cli(env, "migrate")
    key, secret = new_client(env)
    with ApiServer(env, log=base / "server.log") as server:
        httpx.post(f"{server.url}/v2/otp/validate", json={}, auth=(key, secret), timeout=30)  # verify once: cached
        yield server, basic_header(key, secret), base


def _head(port: int, path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _rows(base: Path, table: str) -> int:
    with sqlite3.connect(base / "otp.db") as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_trickling_body_is_cut_off_with_408_after_the_read_time(door):
    server, auth, base = door
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        # One byte every 0.1 s: each read gets data at once, so only a limit on the whole body's time stops it.
        while not stop.is_set():
            try:
                sock.sendall(b" ")
            except OSError:  # the server closed the connection
                return
            stop.wait(0.1)

    # A byte that arrives just as the server closes makes its kernel answer with a reset, which can take the
    # 408 with it: a TCP artefact of a client still sending, so the scenario is tried again (at most 3 times).
    for attempt in range(3):
        stop.clear()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(_head(server.port, "/v2/otp/generate", auth, 100_000 // 2) + b'{"entityType": "MOBILE",')
            started = time.monotonic()
            sender = threading.Thread(target=trickle, args=(sock,))
            sender.start()
            try:
                answer = _read_until_closed(sock)  # the server ends the connection itself
            except ConnectionResetError:
                answer = b""
            finally:
                stop.set()
                sender.join()
            elapsed = time.monotonic() - started
        if answer:
            break
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"\r\nconnection: close" in head.lower(), head
    assert json.loads(body)["errors"][0]["code"] == 7000, body
    assert BODY_READ_SECONDS <= elapsed < BODY_READ_SECONDS + 5, elapsed
    assert _rows(base, "otp_request") == 0 and _rows(base, "usage_counter") == 0


def test_a_client_hanging_up_mid_body_costs_one_short_log_line(door):
    server, auth, base = door
    log = base / "server.log"
    before = log.read_text()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_head(server.port, "/v2/otp/generate", auth, 500) + b'{"entityType": "MOBILE", "entityV')
    deadline = time.monotonic() + 30
    while "hung up" not in log.read_text()[len(before):]:
        assert time.monotonic() < deadline, log.read_text()[len(before):]
        time.sleep(0.05)
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200  # the server carries on
    written = log.read_text()[len(before):]
    assert written.count("\n") == 1 and len(written) < 200, written
    assert "client hung up before sending the whole request body: POST /v2/otp/generate" in written
    assert "Traceback" not in written and "Exception in ASGI" not in written, written
    assert _rows(base, "otp_request") == 0


@pytest.mark.parametrize("method, path, allowed", [
    ("POST", "/health", "GET"), ("GET", "/v2/otp/generate", "POST"), ("PUT", "/v2/otp/validate", "POST"),
    ("DELETE", "/metrics", "GET"), ("POST", "/static-offline-docs/swagger-ui.css", "GET, HEAD")])
def test_a_405_names_the_allowed_methods(door, method, path, allowed):
    server, _auth, _base = door
    response = httpx.request(method, f"{server.url}{path}", timeout=30)
    assert response.status_code == 405, response.text
    assert response.headers.get("allow") == allowed
    assert response.json()["errors"][0]["code"] == 405
