"""Capillary OAuth (core/admin/tokens.py, POST /v3/oauth/token/generate): tokens that work, and every kind that must not.

Most tests drive `create_app(rt)` in process on the parametrized runtime (SQLite, and PostgreSQL when
OTP_TEST_DATABASE_URL is set), its clock frozen so expiry is exact to the second. Two start the real server:
`uvicorn api:app` to show wrong secrets are hashed off its event loop, and `python serve.py --workers 2` on
PostgreSQL to show a token from one worker is good at the other.
"""
from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from api import create_app
from core.admin.clients import set_token_ttl
from core.admin.tokens import DEFAULT_TTL_SECONDS
from core.crypto import load_master_key, token_key
from core.runtime import Runtime
from core.services.admin_actions import revoke_api_client, set_api_client_token_ttl
from tests.conftest import TEST_KEY, code_sent_to, make_settings, no_collector_pauses
from tests.servers import ApiServer, cli
from tests.servers import new_client as cli_new_client
from tests.test_api import (GENERATE, GENERATE_PATH, PHONE, VALIDATE_PATH, assert_envelope, assert_nothing_written,
                            counts, new_client, scalar)
from tests.test_serve import workers_of

TOKEN_PATH = "/v3/oauth/token/generate"
HEADERS = ("CAP-API-ACCESS-TOKEN", "X-CAP-API-OAUTH-TOKEN")


@pytest.fixture
def api(rt):
    with TestClient(create_app(rt), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def creds(rt):
    return new_client(rt)


def get_token(api, creds) -> dict:
    response = api.post(TOKEN_PATH, json={"key": creds.key, "secret": creds.secret})
    assert response.status_code == 200, response.text
    return response.json()


def claims_of(token: str) -> tuple[dict, dict]:
    header, payload, _ = token.split(".")
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    return decode(header), decode(payload)


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assert_token_refused(api, rt, token: str, label: str) -> None:
    """Refused with 401 on both endpoints under both header names, and nothing written."""
    before = counts(rt)
    for path, name in ((GENERATE_PATH, HEADERS[0]), (VALIDATE_PATH, HEADERS[1])):
        body = GENERATE if path == GENERATE_PATH else {**GENERATE, "code": "123456"}
        response = api.post(path, json=body, headers={name: token})
        assert_envelope(response, 401, [401], f"{label} on {path} via {name}")
    assert counts(rt) == before, f"{label}: rows were written"


def assert_token_error(response: httpx.Response, status: int, codes: list[int], label: str) -> None:
    """The token endpoint's refusal: our envelope with Capillary's data: null beside it, and no token."""
    where = f"{label}: HTTP {response.status_code} {response.text[:300]}"
    assert response.status_code == status, where
    body = response.json()
    assert set(body) == {"data", "errors", "warnings"} and body["data"] is None and body["warnings"] == [], where
    assert sorted(e["code"] for e in body["errors"]) == sorted(codes), where
    assert all(set(e) == {"status", "code", "message"} and e["status"] is False for e in body["errors"]), where
    assert "accessToken" not in response.text, where


# --- the happy path ------------------------------------------------------------------------------

def test_a_token_generates_and_validates_through_either_header(rt, api, creds, clock):
    body = get_token(api, creds)
    assert set(body) == {"data", "errors"} and body["errors"] is None
    assert set(body["data"]) == {"accessToken", "ttlSeconds"} and body["data"]["ttlSeconds"] == DEFAULT_TTL_SECONDS
    token = body["data"]["accessToken"]
    header, claims = claims_of(token)
    assert header["alg"] == "HS256"
    assert claims["client_id"] == creds.client.id and claims["sub"] == str(creds.client.id)
    assert claims["iat"] == int(clock().timestamp()) and claims["exp"] == claims["iat"] + DEFAULT_TTL_SECONDS
    assert claims["jti"] and claims["jti"] != claims_of(get_token(api, creds)["data"]["accessToken"])[1]["jti"]

    for first, second in (HEADERS, reversed(HEADERS)):
        generated = api.post(GENERATE_PATH, json=GENERATE, headers={first: token})
        assert generated.status_code == 200 and generated.json()["warnings"] == [], generated.text
        code = code_sent_to(rt, PHONE)
        validated = api.post(VALIDATE_PATH, json={**GENERATE, "code": code}, headers={second: token})
        assert validated.json() == {"entity": True, "warnings": []}, (first, second)
    # The request is recorded as the token's client's.
    assert scalar(rt, "SELECT count(*) FROM otp_request WHERE client_id = :c", c=creds.client.id) == 2


def test_a_token_expires_after_its_clients_ttl(rt, api, creds, clock):
    token = get_token(api, creds)["data"]["accessToken"]
    clock.advance(seconds=DEFAULT_TTL_SECONDS - 1)
    assert api.post(GENERATE_PATH, json=GENERATE, headers={HEADERS[0]: token}).status_code == 200
    clock.advance(seconds=1)
    assert_token_refused(api, rt, token, "expired token")

    # The TTL is the client's own, set on the console (or with the CLI): new tokens get it, at once here.
    assert set_api_client_token_ttl(rt, actor=_admin(rt), client_id=creds.client.id, seconds=120, org_id=1)
    body = get_token(api, creds)["data"]
    assert body["ttlSeconds"] == 120
    _, claims = claims_of(body["accessToken"])
    assert claims["exp"] - claims["iat"] == 120
    clock.advance(seconds=120)
    assert_token_refused(api, rt, body["accessToken"], "token past a TTL of 120 s")
    with pytest.raises(ValueError, match="60 to 86400"):
        with rt.session() as session:
            set_token_ttl(session, client_id=creds.client.id, seconds=59, org_id=1)


def _admin(rt):
    from core.admin.staff import StaffIdentity, create_first_admin
    with rt.session() as db:
        made = create_first_admin(db, username="ada", password="correct horse 1")
    return StaffIdentity(made.id, made.username, made.role)


# --- tokens that must not work -------------------------------------------------------------------

def test_tampered_and_foreign_tokens_are_401(rt, api, creds):
    other = new_client(rt, name="other")
    token = get_token(api, creds)["data"]["accessToken"]
    header, payload, signature = token.split(".")
    _, claims = claims_of(token)
    key = OctKey.import_key(token_key(load_master_key(rt.settings)))  # the service's own signing key
    now = claims["iat"]
    cases = {
        # The signature was made over the original claims: another client id in them must not verify.
        "claims changed (another client)": f"{header}.{b64({**claims, 'client_id': other.client.id, 'sub': str(other.client.id)})}.{signature}",
        "claims changed (longer life)": f"{header}.{b64({**claims, 'exp': now + 10**6})}.{signature}",
        "signature changed": f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}",
        "signature removed": f"{header}.{payload}.",
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg none, no dot": f"{b64({'alg': 'none'})}.{payload}",
        # HS512 over the same claims with the service's own key: only the fixed algorithm refuses it.
        "HS512 with our key": jwt.encode({"alg": "HS512"}, claims, key, algorithms=["HS512"]),
        "RS256 with a stranger's key": jwt.encode({"alg": "RS256"}, claims, RSAKey.generate_key(2048),
                                                  algorithms=["RS256"]),
        "HS256 with another key": jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(b"k" * 32),
                                             algorithms=["HS256"]),
        "HS256, our key, not an access token": jwt.encode({"alg": "HS256"}, {**claims, "token_use": "other"}, key,
                                                          algorithms=["HS256"]),
        "HS256, our key, no expiry": jwt.encode({"alg": "HS256"}, {k: v for k, v in claims.items() if k != "exp"},
                                                key, algorithms=["HS256"]),
        "HS256, our key, client id as a string": jwt.encode(
            {"alg": "HS256"}, {**claims, "client_id": str(creds.client.id)}, key, algorithms=["HS256"]),
        "the key.secret pair": f"{creds.key}.{creds.secret}",
        "empty": "",
        "not a JWT": "hello",
        "huge": "a" * 100_000,
    }
    for label, forged in cases.items():
        assert_token_refused(api, rt, forged, label)
    # The original still works: the refusals above were about the changes, not the token.
    assert api.post(GENERATE_PATH, json=GENERATE, headers={HEADERS[0]: token}).status_code == 200


def test_a_revoked_clients_tokens_stop(rt, api, creds, tmp_path):
    token = get_token(api, creds)["data"]["accessToken"]
    assert api.post(GENERATE_PATH, json=GENERATE, headers={HEADERS[0]: token}).status_code == 200
    # Another process (a second worker) that used the token too, trusting a client for 1 s.
    other = Runtime(make_settings(rt.settings.database_url, tmp_path, auth_cache_seconds=1.0), clock=rt.clock,
                    prepare=False)
    other_api = TestClient(create_app(other), raise_server_exceptions=False)
    assert other_api.post(GENERATE_PATH, json=GENERATE, headers={HEADERS[1]: token}).status_code == 200

    assert revoke_api_client(rt, actor=_admin(rt), client_id=creds.client.id, org_id=1)
    requests_before = scalar(rt, "SELECT count(*) FROM otp_request")
    response = api.post(GENERATE_PATH, json=GENERATE, headers={HEADERS[0]: token})
    assert_envelope(response, 401, [401], "revoked client's token, same process")
    # The other process refuses it once its trust runs out (OTP_AUTH_CACHE_SECONDS), and not much later.
    with no_collector_pauses():
        revoked_at, polls = time.monotonic(), 0
        while (answer := other_api.post(GENERATE_PATH, headers={HEADERS[1]: token}, json={
                **GENERATE, "entityValue": f"+9199558{polls:05d}"})).status_code == 200:  # new users: no limit hit
            assert time.monotonic() - revoked_at < 5, "the other process still accepts a revoked client's token"
            polls += 1
            time.sleep(0.05)
        refused_after = time.monotonic() - revoked_at
    assert_envelope(answer, 401, [401], "revoked client's token, other process")
    assert refused_after < 1.5
    # A new token is not to be had either.
    assert_token_error(api.post(TOKEN_PATH, json={"key": creds.key, "secret": creds.secret}), 401, [401], "revoked")
    assert scalar(rt, "SELECT count(*) FROM otp_request") == requests_before + polls
    other.db.dispose()


def test_a_token_of_a_client_without_otp_write_is_403(rt, api):
    reader = new_client(rt, name="reader", permissions="otp:read")
    token = get_token(api, reader)["data"]["accessToken"]  # a token says who, not what they may do
    for path, name in ((GENERATE_PATH, HEADERS[0]), (VALIDATE_PATH, HEADERS[1])):
        body = GENERATE if path == GENERATE_PATH else {**GENERATE, "code": "123456"}
        assert_envelope(api.post(path, json=body, headers={name: token}), 403, [403], f"otp:read on {path}")
    assert_nothing_written(rt, "after 403")


# --- the token endpoint refuses bad requests -----------------------------------------------------

def test_token_generate_refuses_wrong_credentials_and_bad_bodies(rt, api, creds):
    wrong = creds.secret[:-1] + ("A" if creds.secret[-1] != "A" else "B")
    for label, kwargs, status, codes in (
            ("wrong secret", {"json": {"key": creds.key, "secret": wrong}}, 401, [401]),
            ("unknown key", {"json": {"key": "ck_" + "0" * 24, "secret": creds.secret}}, 401, [401]),
            ("the pair swapped", {"json": {"key": creds.secret, "secret": creds.key}}, 401, [401]),
            ("malformed JSON", {"content": b'{"key": "a", "secret":'}, 400, [7000]),
            ("not JSON at all", {"content": b"key=a&secret=b"}, 400, [7000]),
            ("an array", {"json": [{"key": creds.key, "secret": creds.secret}]}, 400, [7000]),
            ("no key", {"json": {"secret": creds.secret}}, 400, [7000]),
            ("no secret", {"json": {"key": creds.key}}, 400, [7000]),
            ("neither", {"json": {}}, 400, [7000, 7000]),
            ("numbers", {"json": {"key": 1, "secret": 2}}, 400, [7000, 7000]),
            ("empty strings", {"json": {"key": "", "secret": ""}}, 400, [7000, 7000]),
            ("null", {"json": None}, 400, [7000]),
            ("too large", {"json": {"key": creds.key, "secret": "x" * 70_000}}, 413, [7000])):
        assert_token_error(api.post(TOKEN_PATH, **kwargs), status, codes, label)
    # Basic credentials in a header are not what this endpoint reads: the body must carry them.
    assert_token_error(api.post(TOKEN_PATH, json={}, auth=(creds.key, creds.secret)), 400, [7000, 7000], "Basic")
    assert_nothing_written(rt, "after refused token requests")
    assert get_token(api, creds)["data"]["ttlSeconds"] == DEFAULT_TTL_SECONDS


def test_wrong_secrets_are_hashed_off_the_event_loop(tmp_path):
    """While guesses at a secret are being hashed (Argon2, ~0.1 s each), the real server answers other requests
    at once: the hash runs in worker threads, a few at a time, not on the event loop that serves everyone."""
    env = {"OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY}
    cli(env, "migrate")
    key, _ = cli_new_client(env)

    async def scenario(url: str) -> tuple[float, list[float], list[int]]:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            started = time.perf_counter()
            assert (await client.post(TOKEN_PATH, json={"key": key, "secret": "guess"})).status_code == 401
            one_guess = time.perf_counter() - started
            guesses = [asyncio.create_task(client.post(TOKEN_PATH, json={"key": key, "secret": f"guess-{i}"}))
                       for i in range(8)]
            latencies = []
            while not all(guess.done() for guess in guesses):  # probe for as long as the guesses last
                started = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                latencies.append(time.perf_counter() - started)
            return one_guess, latencies, [r.status_code for r in await asyncio.gather(*guesses)]

    with ApiServer(env) as server:  # uvicorn api:app, one worker: one event loop for everyone
        one_guess, latencies, statuses = asyncio.run(scenario(server.url))
    assert statuses == [401] * 8
    assert len(latencies) >= 3, latencies
    # On the event loop the eight hashes would run one after another in it, and a probe arriving meanwhile
    # would wait for all of them to end: longer than one guess takes on its own.
    assert max(latencies) < one_guess, (one_guess, latencies)


def test_openapi_documents_the_token_endpoint_and_header_schemes(rt, api):
    schema = api.get("/openapi.json").json()
    operation = schema["paths"][TOKEN_PATH]["post"]
    body = schema["components"]["schemas"]["TokenRequestBody"]
    assert set(body["required"]) == {"key", "secret"}
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TokenRequestBody")
    assert {"200", "400", "401", "413"} <= set(operation["responses"])
    ok = schema["components"]["schemas"]["TokenData"]
    assert set(ok["required"]) == {"accessToken", "ttlSeconds"}
    schemes = schema["components"]["securitySchemes"]
    assert {(s["in"], s["name"]) for s in schemes.values() if s["type"] == "apiKey"} == {
        ("header", "CAP-API-ACCESS-TOKEN"), ("header", "X-CAP-API-OAUTH-TOKEN")}
    for path in (GENERATE_PATH, VALIDATE_PATH):
        named = {name for entry in schema["paths"][path]["post"]["security"] for name in entry}
        assert {name for name, s in schemes.items() if s["type"] == "apiKey"} <= named, path


# --- through the real server: two workers on PostgreSQL ------------------------------------------

def _serving_worker(server_port: int, client_port: int, workers: list[int]) -> int:
    """The worker process holding the server side of the loopback connection from client_port."""
    wanted = f"0100007F:{server_port:04X} 0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" == wanted:
            inode = fields[9]
            break
    else:
        raise AssertionError(f"no server socket for client port {client_port}")
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except OSError:
                pass
    raise AssertionError("no worker holds the connection")


def _post_on_new_connection(port: int, path: str, body: dict, headers: dict, workers: list[int]
                            ) -> tuple[int, httpx.Response]:
    """(serving worker, response) for one request on a fresh keep-alive TCP connection, the worker looked up
    while the connection is still open."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                         **headers})
        answer = connection.getresponse()
        content = answer.read()
        assert connection.sock is not None, "the server closed a keep-alive connection"
        worker = _serving_worker(port, connection.sock.getsockname()[1], workers)
    finally:
        connection.close()
    return worker, httpx.Response(answer.status, content=content)


@pytest.mark.postgresql
def test_a_token_from_one_worker_is_good_at_another(pg_schema_env):
    env = pg_schema_env
    cli(env, "migrate")
    key, secret = cli_new_client(env)
    with ApiServer(env, workers=2) as server:  # python serve.py --workers 2
        assert server.process is not None
        workers = workers_of(server.process.pid)
        assert len(workers) == 2
        issuer, response = _post_on_new_connection(server.port, TOKEN_PATH, {"key": key, "secret": secret},
                                                   {}, workers)
        assert response.status_code == 200, response.text
        token = response.json()["data"]["accessToken"]
        other = next(w for w in workers if w != issuer)
        served_by: dict[int, list[int]] = {}
        for attempt in range(200):  # fresh connections until the other worker has answered under both headers
            worker, answer = _post_on_new_connection(
                server.port, GENERATE_PATH, {**GENERATE, "entityValue": f"+9199558{attempt:05d}"},
                {HEADERS[len(served_by.get(other, [])) % 2]: token}, workers)
            served_by.setdefault(worker, []).append(answer.status_code)
            if len(served_by.get(other, [])) >= 2:
                break
        assert served_by.get(other) == [200, 200], f"the other worker: {served_by}"
        assert all(set(statuses) == {200} for statuses in served_by.values()), served_by
        # A forged token is refused there: the other worker does verify, it does not just accept.
        for attempt in range(200):
            worker, answer = _post_on_new_connection(server.port, GENERATE_PATH, GENERATE,
                                                     {HEADERS[0]: token[:-2] + "xx"}, workers)
            assert answer.status_code == 401
            if worker == other:
                break
        assert worker == other
