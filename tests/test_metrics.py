"""/metrics (core/metrics.py): Prometheus figures summed over serve.py's workers, labels free of customer data,
and the settings that turn the endpoint off or put it behind a token."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from api import create_app
from core.runtime import Runtime
from core.settings import Settings
from tests.conftest import TEST_KEY, make_settings
from tests.servers import ApiServer, cli, new_client
from tests.test_multiworker import _burst, basic
from tests.test_serve import workers_of

USERS = 24  # distinct customers, one SMS each
REPEAT = "+919900054321"  # a customer who asks again: re-sends, then the destination limit refuses
LABELS = {"action", "channel", "outcome", "reason", "gateway", "error", "le"}


def numbers(count: int) -> list[str]:
    return [f"+9199000{index:05d}" for index in range(count)]


def generate(phone: str) -> dict:
    return {"entityType": "MOBILE", "entityValue": phone, "action": "COUPON",
            "channels": [{"type": "SMS", "value": phone}]}


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple], float]:
    """Every sample of one scrape (on a new connection, so any worker may answer), keyed by name and labels."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version="), response.headers
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def assert_no_customer_data(samples: dict, secrets: list[str]) -> None:
    for (name, labels), _v in samples.items():
        assert {key for key, _ in labels} <= LABELS, (name, labels)
        for key, shown in labels:
            if key != "le":
                assert not re.search(r"\d{4}|@|\+", shown), (name, labels)
        for secret in secrets:
            assert all(secret not in shown for _k, shown in labels), (name, labels)


def test_two_workers_report_the_sum_of_their_figures_and_forget_a_dead_worker(tmp_path):
    env = {"OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY, "OTP_IP_LIMIT": "0",
           "OTP_PREFIX_LIMIT": "0", "OTP_DESTINATION_LIMIT": "3",
           "TMPDIR": str(tmp_path)}  # serve.py makes its metrics directory here, where the test can see it
    cli(env, "migrate")
    key, secret = new_client(env)
    phones = numbers(USERS)
    with ApiServer(env, workers=2) as server:  # python serve.py --workers 2
        assert server.process is not None
        (metrics_dir,) = tmp_path.glob("otp-metrics-*")
        # Many connections at once, so both workers take some; then one customer asks four times in a row.
        sent = asyncio.run(_burst(server.url, basic(key, secret), "/v2/otp/generate",
                                  [generate(p) for p in phones], 12))
        assert [r.status_code for r in sent] == [200] * USERS, [r.text for r in sent if r.status_code != 200]
        with httpx.Client(base_url=server.url, auth=(key, secret), timeout=30) as client:
            repeats = [client.post("/v2/otp/generate", json=generate(REPEAT)).status_code for _ in range(4)]
            assert repeats == [200, 200, 200, 429]  # sent, re-sent twice, then the 4th send to one number
            with sqlite3.connect(tmp_path / "otp.db") as conn:
                codes = [body.rsplit(" ", 1)[-1].rstrip(".") for (body,) in
                         conn.execute("SELECT body FROM outbox_message ORDER BY id")]
                first_code = conn.execute("SELECT body FROM outbox_message WHERE recipient = ?",
                                          (phones[0],)).fetchone()[0].rsplit(" ", 1)[-1].rstrip(".")
            checks = [client.post("/v2/otp/validate", json={**generate(phones[0]), "code": first_code}).json(),
                      *(client.post("/v2/otp/validate", json={**generate(p), "code": "000000"}).json()
                        for p in phones[1:6])]
            assert [c["entity"] for c in checks] == [True] + [False] * 5

        # Any worker answers a scrape with the same, summed figures.
        scrapes = [scrape(server.url) for _ in range(8)]
        assert all(s == scrapes[0] for s in scrapes[1:])
        samples = scrapes[0]
        assert value(samples, "otp_generates_total", action="COUPON", channel="SMS", outcome="sent") == USERS + 1
        assert value(samples, "otp_generates_total", action="COUPON", channel="SMS", outcome="resent") == 2
        assert value(samples, "otp_refusals_total", reason="destination") == 1
        assert value(samples, "otp_validates_total", action="COUPON", outcome="ok") == 1
        assert value(samples, "otp_validates_total", action="COUPON", outcome="wrong") == 5
        assert value(samples, "otp_gateway_send_seconds_count", gateway="outbox", channel="SMS") == USERS + 3
        assert value(samples, "otp_gateway_failures_total", gateway="outbox", channel="SMS") == 0
        assert value(samples, "otp_workers") == 2
        assert_no_customer_data(samples, [*phones, REPEAT, *codes])

        # A worker that dies is replaced; its counts stay, its live gauge goes (mark_process_dead).
        workers = workers_of(server.process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        gauge = metrics_dir / f"gauge_livesum_{workers[0]}.db"
        deadline = time.monotonic() + 60
        while gauge.exists() or len(set(workers_of(server.process.pid)) - {workers[0]}) < 2:
            assert time.monotonic() < deadline, sorted(p.name for p in metrics_dir.iterdir())
            time.sleep(0.1)
        while value(after := scrape(server.url), "otp_workers") < 2:  # until the replacement has started
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
        assert value(after, "otp_workers") == 2
        assert value(after, "otp_generates_total", action="COUPON", channel="SMS", outcome="sent") == USERS + 1
    assert not metrics_dir.exists()  # removed when serve.py stops


@pytest.fixture
def runtime_with(db_url, tmp_path, clock):
    made: list[Runtime] = []

    def build(**settings) -> TestClient:
        made.append(Runtime(make_settings(db_url, tmp_path, **settings), clock=clock))
        return TestClient(create_app(made[-1]), raise_server_exceptions=False)

    yield build
    for runtime in made:
        runtime.db.dispose()


def test_the_metrics_token_and_the_off_switch(runtime_with):
    with runtime_with(metrics_token="scrape-me-0123456789") as api:
        assert api.get("/metrics").status_code == 401
        assert api.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        answer = api.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
        assert answer.status_code == 200 and "otp_generates_total" in answer.text
    with runtime_with(metrics="off") as api:
        assert api.get("/metrics").status_code == 404
    assert "/metrics" not in runtime_with().app.openapi()["paths"]  # not part of the client contract


def test_production_needs_a_metrics_token_or_metrics_off(tmp_path):
    production = dict(env="production", secret_key=TEST_KEY, database_url=f"sqlite:///{tmp_path / 'x.db'}",
                      **{f"gateway_{c}": "none" for c in ("sms", "email", "phone", "whatsapp", "zalo")})
    with pytest.raises(ValidationError, match="OTP_METRICS_TOKEN is required"):
        Settings(**production)
    assert Settings(**production, metrics_token="scrape-me-0123456789").metrics == "on"
    assert Settings(**production, metrics="off").metrics == "off"
