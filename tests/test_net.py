"""Client addresses and the per-address limit, through the real server: a backend client's own address is no
customer's, an end user's address counts only when the client or a trusted proxy supplies it, and a made-up
X-Forwarded-For from the host changes nothing (uvicorn's own proxy-header handling is off)."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import time

import httpx
import pytest
from starlette.datastructures import Headers

from core.db.schemas import PrivateSchema
from core.net import end_user_address
from core.settings import ROOT, Settings
from tests.conftest import PG_URL, TEST_KEY
from tests.servers import ApiServer, ForwardingProxy, new_client

DEFAULT_IP_LIMIT = Settings.model_fields["ip_limit"].default  # 60 generates per address per 10 minutes


def customer(i: int) -> dict:
    """A generate for customer i: its own number, whose prefix (all but the last 4 digits) no other shares."""
    number = f"98{i:04d}{i:04d}"
    return {"entityType": "MOBILE", "entityValue": number, "action": "COUPON",
            "channels": [{"type": "SMS", "value": number}]}


def basic(key: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}


async def _send(url: str, auth: dict, calls: list[tuple[dict, dict]], *, local_address: str | None = None,
                connections: int = 16) -> list[httpx.Response]:
    """Each (body, extra headers) as a generate, `connections` at a time, from local_address when given."""
    transport = httpx.AsyncHTTPTransport(local_address=local_address, limits=httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections))
    gate = asyncio.Semaphore(connections)
    async with httpx.AsyncClient(base_url=url, headers=auth, transport=transport, timeout=120) as client:
        async def one(body: dict, headers: dict) -> httpx.Response:
            async with gate:
                return await client.post("/v2/otp/generate", json=body, headers=headers)
        return await asyncio.gather(*(one(body, headers) for body, headers in calls))


def send(url: str, auth: dict, calls: list[tuple[dict, dict]], **options) -> list[httpx.Response]:
    return asyncio.run(_send(url, auth, calls, **options))


def reasons(responses: list[httpx.Response]) -> list[str | None]:
    """None for an accepted generate, else the refusal's reason (or status)."""
    out = []
    for r in responses:
        if r.status_code == 200:
            out.append(None)
        else:
            out.append(r.json()["errors"][0].get("reason", str(r.status_code)))
    return out


@contextlib.contextmanager
def database(backend: str, tmp_path):
    """A fresh database with default settings (no limit switched off) and the test key."""
    if backend == "sqlite":
        yield {"OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY}
        return
    with PrivateSchema(PG_URL, "otp_net") as url:
        yield {"OTP_DATABASE_URL": url, "OTP_SECRET_KEY": TEST_KEY}


@pytest.fixture
def default_env(monkeypatch):
    """Default settings: no OTP_* limit or proxy setting of the runner's environment reaches the servers."""
    for name in list(os.environ):
        if name.startswith("OTP_") and name != "OTP_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.mark.parametrize("backend, workers", [("sqlite", 1), pytest.param("postgresql", 2,
                                                                          marks=pytest.mark.postgresql)])
def test_a_backend_client_serves_a_thousand_customers_and_the_other_limits_still_hold(
        default_env, tmp_path, backend, workers):
    with database(backend, tmp_path) as env:
        auth = basic(*new_client(env))  # a backend: no end-user address header
        with ApiServer(env, workers=workers, serve=True) as server:
            started = time.monotonic()
            thousand = send(server.url, auth, [(customer(i), {}) for i in range(1000)])
            seconds = time.monotonic() - started
            print(f"\n{backend}, {workers} worker(s): 1000 generates in {seconds:.1f} s")
            # One address, 1,000 customers: every one is served (the per-address limit would stop the 61st).
            assert reasons(thousand) == [None] * 1000

            # The limits on customers, destinations and prefixes still refuse, from this same backend.
            same_number = "9812345678"
            to_one_number = [({"entityType": "EMAIL", "entityValue": f"u{i}@example.com", "action": "COUPON",
                               "channels": [{"type": "SMS", "value": same_number}]}, {}) for i in range(6)]
            assert reasons(send(server.url, auth, to_one_number, connections=1)) == [None] * 5 + ["destination"]
            one_customer = [({"entityType": "EMAIL", "entityValue": "same@example.com", "action": "POINTS",
                              "channels": [{"type": "EMAIL", "value": f"copy{i}@example.com"}]}, {})
                            for i in range(6)]
            assert reasons(send(server.url, auth, one_customer, connections=1)) == [None] * 5 + ["code_sends"]
            one_prefix = [({"entityType": "MOBILE", "entityValue": f"987654{i:04d}", "action": "GENERIC"}, {})
                          for i in range(101)]
            assert reasons(send(server.url, auth, one_prefix, connections=1)) == [None] * 100 + ["prefix"]


def test_a_client_forwarding_end_user_addresses_gets_each_end_user_limited(default_env, tmp_path):
    with database("sqlite", tmp_path) as env:
        auth = basic(*new_client(env, "--end-user-ip-header", "X-End-User-IP"))
        with ApiServer(env, serve=True) as server:
            one_user = [(customer(i), {"X-End-User-IP": "203.0.113.7"}) for i in range(DEFAULT_IP_LIMIT + 1)]
            assert reasons(send(server.url, auth, one_user, connections=1)) == [None] * DEFAULT_IP_LIMIT + ["ip"]
            # Another end user of the same client, and the same one written another way, are told apart.
            other = [(customer(100), {"X-End-User-IP": "203.0.113.8"}),
                     (customer(101), {"X-End-User-IP": "::ffff:203.0.113.7"})]
            assert reasons(send(server.url, auth, other, connections=1)) == [None, "ip"]
            # A value that is not one address counts nothing: not refused, and not lumped into one bucket.
            junk = [(customer(200 + i), {"X-End-User-IP": value})
                    for i, value in enumerate(["unknown", "203.0.113.7, 10.0.0.1", ""] * 21)]
            assert reasons(send(server.url, auth, junk)) == [None] * len(junk)


@pytest.mark.parametrize("serve", [True, False], ids=["serve.py", "uvicorn --no-proxy-headers"])
def test_a_made_up_forwarded_for_from_the_host_changes_nothing(default_env, tmp_path, serve):
    """OTP_TRUSTED_PROXIES is empty: the client's requests come from its end users, so the connecting address
    counts, and rotating X-Forwarded-For from 127.0.0.1 (which uvicorn itself would believe) escapes nothing."""
    with database("sqlite", tmp_path) as env:
        auth = basic(*new_client(env, "--end-user-ip-header", "X-Forwarded-For"))
        with ApiServer(env, serve=serve) as server:
            spoofed = [(customer(i), {"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(DEFAULT_IP_LIMIT + 1)]
            assert reasons(send(server.url, auth, spoofed, connections=1)) == [None] * DEFAULT_IP_LIMIT + ["ip"]


def test_a_trusted_proxys_forwarded_for_is_believed(default_env, tmp_path):
    """A same-host proxy (OTP_TRUSTED_PROXIES=127.0.0.1) appends the address it saw: end users on 127.0.0.2 and
    127.0.0.3 are counted apart, and what they write into X-Forwarded-For themselves is ignored."""
    with database("sqlite", tmp_path) as env:
        env["OTP_TRUSTED_PROXIES"] = "127.0.0.1"
        auth = basic(*new_client(env, "--end-user-ip-header", "X-Forwarded-For"))
        with ApiServer(env, serve=True) as server, ForwardingProxy(server.url) as proxy:
            first = [(customer(i), {"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(DEFAULT_IP_LIMIT + 1)]
            assert reasons(send(proxy.url, auth, first, local_address="127.0.0.2", connections=1)) == \
                [None] * DEFAULT_IP_LIMIT + ["ip"]
            second = [(customer(100), {})]
            assert reasons(send(proxy.url, auth, second, local_address="127.0.0.3")) == [None]
            # Straight to the server from 127.0.0.2 (not through the proxy): the same end user, still refused.
            assert reasons(send(server.url, auth, [(customer(101), {})], local_address="127.0.0.2")) == ["ip"]


def test_a_bad_trusted_proxies_setting_stops_start_up_naming_it(default_env, tmp_path):
    env = {**os.environ, "OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY,
           "OTP_TRUSTED_PROXIES": "10.0.0.0/8, nonsense"}
    done = subprocess.run([sys.executable, "serve.py", "--port", "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3
    assert done.stderr.strip() == ("bad setting: OTP_TRUSTED_PROXIES: 'nonsense' is not an IP address or network "
                                   "(e.g. 10.0.0.0/8,127.0.0.1)"), done.stderr


class _Settings:
    def __init__(self, trusted: str) -> None:
        self.trusted_proxies = Settings(trusted_proxies=trusted).trusted_proxies


@pytest.mark.parametrize("header, peer, headers, trusted, expected", [
    (None, "203.0.113.9", {"X-End-User-IP": "198.51.100.1"}, "", None),               # a backend: no count
    ("X-End-User-IP", "203.0.113.9", {"x-end-user-ip": " 198.51.100.1 "}, "", "198.51.100.1"),
    ("X-End-User-IP", "203.0.113.9", {"X-End-User-IP": "2001:DB8::1"}, "", "2001:db8::1"),
    ("X-End-User-IP", "203.0.113.9", {}, "", None),                                     # missing: no count
    ("X-End-User-IP", "203.0.113.9", {"X-End-User-IP": "1.2.3.4:80"}, "", None),        # junk: no count
    ("X-Forwarded-For", "203.0.113.9", {"X-Forwarded-For": "198.51.100.1"}, "", "203.0.113.9"),
    ("X-Forwarded-For", "10.0.0.2", {"X-Forwarded-For": "1.1.1.1, 198.51.100.1"}, "10.0.0.0/8", "198.51.100.1"),
    ("x-forwarded-for", "::ffff:10.0.0.2", {}, "", "10.0.0.2"),
])
def test_end_user_address_believes_only_the_client_and_trusted_proxies(header, peer, headers, trusted, expected):
    assert end_user_address(peer, Headers(headers=headers), _Settings(trusted), end_user_ip_header=header) == expected
