"""core.issuing.limits: a send that reached no one costs nothing, and "why refused" says what the next request meets.

Gateways are real HTTP and SMTP servers on 127.0.0.1 (or a closed port); every count is read back from the
database, on SQLite and PostgreSQL.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from sqlalchemy import event, text
from sqlmodel import select

from core import errors as E
from core.admin.gateways import save_gateway
from core.admin.staff import StaffIdentity, create_first_admin
from core.db.models import ActionConfig, GatewayConfigBase, Staff, TemplateVersion
from core.db.schemas import PrivateSchema
from core.enums import Action, Channel, EntityType
from core.errors import OtpError
from core.issuing.action_config import OtpConfig
from core.issuing.counters import bump, local_day, window_start
from core.issuing.entities import NormalisedEntity
from core.issuing.limits import explain_refusal, user_counters
from core.issuing.requests import ChannelTarget
from core.runtime import Runtime, run
from core.services.failover import run_due_failovers
from core.services.generation import generate
from core.services.validation import validate
from tests.conftest import BACKENDS, PG_URL, TEST_KEY, code_sent_to, configure, make_settings
from tests.fakes import Answer, FakeProvider, free_port
from tests.servers import ApiServer, new_client

PHONE = "+919955882233"
EMAIL = "ana@example.com"
CLIENT, IP = 7, "203.0.113.9"
FAST = {"backoff_seconds": 0.01, "timeout_seconds": 1.0, "attempts": 2}
# Every limit small enough that five spent sends would refuse the sixth request.
TIGHT = dict(daily_limit=6, destination_limit=5, ip_limit=5, prefix_limit=5, client_limit=5,
             channel_budgets="SMS=5,EMAIL=5,WHATSAPP=5")


def runtime(db_url, tmp_path, clock, **settings) -> Runtime:
    return Runtime(make_settings(db_url, tmp_path, **settings), clock=clock)


@pytest.fixture
def tight(db_url, tmp_path, clock):
    rt = runtime(db_url, tmp_path, clock, **TIGHT)
    configure(rt, Action.COUPON, daily_cap=5)
    yield rt
    rt.db.dispose()


def admin_of(rt) -> StaffIdentity:
    """The first admin, made on first use."""
    with rt.session() as db:
        staff = db.exec(select(Staff)).first() or create_first_admin(db, username="ada", password="correct horse 1")
        return StaffIdentity(staff.id, staff.username, staff.role)


def add_gateway(rt, *, name, channel, provider, endpoint, sender="", options=None, credentials=None):
    with rt.session() as db:
        save_gateway(db, rt.box, actor=admin_of(rt), credentials=credentials, config=GatewayConfigBase(
            name=name, channel=channel, provider=provider, endpoint=endpoint, sender=sender,
            options=json.dumps({**FAST, **(options or {})}), is_default=True), org_id=1)
    rt.configuration_changed()


def webhook_sms(rt, endpoint: str) -> None:
    add_gateway(rt, name="hook", channel="SMS", provider="webhook_sms", endpoint=endpoint, sender="ACME",
                credentials={"token": "t"}, options={"body": {"to": "{to}", "text": "{text}"}})


def counters(rt) -> dict[tuple[str, str], int]:
    with rt.db.connect() as conn:
        return {(r.scope, r.user_key): r.count for r in conn.execute(text(
            "SELECT scope, user_key, count FROM usage_counter WHERE scope NOT LIKE 'validate:%'"))}


def send_counts(rt) -> list[int]:
    with rt.db.connect() as conn:
        return list(conn.execute(text("SELECT send_count FROM otp_code ORDER BY id")).scalars())


def gen(rt, **body):
    return run(generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON", **body},
                        client_id=CLIENT, client_ip=IP, org_id=1))


def code_in(seen) -> str:
    return re.search(r"is (\d+)\.", seen.json()["text"]).group(1)


# --- a fault costs the customer nothing -------------------------------------------------------------

@pytest.mark.parametrize("outage", ["answers 500", "port closed"])
def test_an_outage_spends_nothing_and_the_same_code_goes_out_when_it_ends(tight, outage):
    rt = tight
    port = free_port()
    with FakeProvider(port=port) if outage == "answers 500" else _Nothing() as down:
        if down is not None:
            down.script = [Answer(status=500, body={"error": "down"})]
        webhook_sms(rt, f"http://127.0.0.1:{port}/send")
        for _ in range(10):  # twice every limit: without the give-back the sixth would be a 429
            with pytest.raises(OtpError) as failed:
                gen(rt)
            assert failed.value.http_status == 502, failed.value
        tried = [code_in(seen) for seen in down.requests] if down is not None else []
    assert all(count == 0 for count in counters(rt).values()), counters(rt)
    assert send_counts(rt) == [0]

    with FakeProvider(port=port) as up:  # the gateway is back, on the same address
        result = gen(rt)
    [seen] = up.requests
    assert result.resent and [w.code for w in result.warnings] == [E.RESENT_SAME_CODE]
    # The code every failed attempt carried; a 500 after the POST is not retried (the provider may have sent).
    assert set(tried) <= {code_in(seen)} and len(tried) == (10 if outage == "answers 500" else 0)
    # Every counter now equals the one delivered request.
    assert counters(rt) == {("daily:*", f"MOBILE:{PHONE}"): 1, ("daily:COUPON", f"MOBILE:{PHONE}"): 1,
                            ("dest:SMS", PHONE): 1, ("budget", "SMS"): 1, ("client", str(CLIENT)): 1,
                            ("ip", IP): 1, ("prefix", PHONE[:-4]): 1}
    assert send_counts(rt) == [1]
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM limit_event")).scalar() == 0


class _Nothing:
    """No server at all: the port stays closed, so every connection is refused."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def test_a_failed_channel_beside_a_delivered_one_gives_back_its_own_counts(tight):
    rt = tight
    with FakeProvider() as sms:
        webhook_sms(rt, sms.url + "/send")
        add_gateway(rt, name="mail", channel="EMAIL", provider="smtp", endpoint=f"127.0.0.1:{free_port()}",
                    sender="otp@example.com", options={"security": "none"})
        result = gen(rt, channels=[{"type": "SMS", "value": PHONE}, {"type": "EMAIL", "value": EMAIL}])
    assert [w.code for w in result.warnings] == [E.GATEWAY_ERROR]
    spent = counters(rt)
    assert spent[("dest:SMS", PHONE)] == 1 and spent[("budget", "SMS")] == 1
    assert spent[("dest:EMAIL", EMAIL)] == 0 and spent[("budget", "EMAIL")] == 0
    assert spent[("daily:*", f"MOBILE:{PHONE}")] == 1 and send_counts(rt) == [1]


def _failover(rt, wa_url: str) -> None:
    add_gateway(rt, name="wa", channel="WHATSAPP", provider="meta_whatsapp", endpoint=wa_url, sender="10987",
                credentials={"access_token": "EAAG"})
    with rt.session() as db:
        db.add(TemplateVersion(org_id=1, action="COUPON", channel="WHATSAPP", version=1, status="approved", is_active=True,
                               author="a", reviewer="b", whatsapp_name="otp_auth", whatsapp_language="en"))
        db.commit()
    configure(rt, Action.COUPON, failover="WHATSAPP,SMS", failover_seconds=30)


def test_a_failover_whose_every_step_fails_spends_nothing(tight):
    rt = tight
    with FakeProvider() as wa:
        wa.script = [Answer(status=400, body={"error": {"message": "not a WhatsApp user"}})]
        _failover(rt, wa.url)
        webhook_sms(rt, f"http://127.0.0.1:{free_port()}/send")  # the SMS failover step fails too
        for _ in range(6):
            with pytest.raises(OtpError) as failed:
                gen(rt)
            assert failed.value.http_status == 502
    assert counters(rt) and all(count == 0 for count in counters(rt).values()), counters(rt)
    assert send_counts(rt) == [0]


def test_a_failed_first_step_gives_back_its_counts_when_the_next_delivers(tight):
    rt = tight
    with FakeProvider() as wa, FakeProvider() as sms:
        wa.script = [Answer(status=400, body={"error": {"message": "not a WhatsApp user"}})]
        _failover(rt, wa.url)
        webhook_sms(rt, sms.url + "/send")
        gen(rt)
    spent = counters(rt)
    assert spent[("dest:WHATSAPP", PHONE)] == 0 and spent[("budget", "WHATSAPP")] == 0
    assert spent[("dest:SMS", PHONE)] == 1 and spent[("budget", "SMS")] == 1
    assert spent[("daily:*", f"MOBILE:{PHONE}")] == 1 and send_counts(rt) == [1]


def test_a_late_failover_step_that_fails_gives_back_its_own_counts(tight, clock):
    """The poller's step runs after the request answered: its failure gives back that step's counts only."""
    rt = tight
    with FakeProvider() as wa:
        wa.script = [Answer(body={"messages": [{"id": "wamid.1"}]})]
        _failover(rt, wa.url)
        webhook_sms(rt, f"http://127.0.0.1:{free_port()}/send")
        gen(rt)
        clock.advance(seconds=31)
        assert run(run_due_failovers(rt)) == 1
    spent = counters(rt)
    assert spent[("dest:SMS", PHONE)] == 0 and spent[("budget", "SMS")] == 0
    assert spent[("dest:WHATSAPP", PHONE)] == 1 and spent[("budget", "WHATSAPP")] == 1


# --- a failed write of a delivery's status ----------------------------------------------------------

def _fail_once(rt, db_url, statement_start: str) -> list[str]:
    """Make the next statement starting with statement_start fail in the driver, once: a real storage fault."""
    error = sqlite3.OperationalError("disk I/O error") if db_url.startswith("sqlite") \
        else psycopg.errors.OperationalError("server closed the connection unexpectedly")
    failed: list[str] = []

    @event.listens_for(rt.db, "before_cursor_execute")
    def fault(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not failed and statement.lstrip().upper().startswith(statement_start):
            failed.append(statement)
            raise error
    return failed


def test_a_failed_status_write_is_retried_so_the_failover_still_fires(db_url, tmp_path, clock):
    rt = runtime(db_url, tmp_path, clock)
    try:
        with FakeProvider() as wa:
            wa.script = [Answer(body={"messages": [{"id": "wamid.2"}]})]
            _failover(rt, wa.url)
            failed = _fail_once(rt, db_url, "UPDATE DELIVERY")
            gen(rt)
        assert failed, "the fault did not fire"
        with rt.db.connect() as conn:
            row = conn.execute(text("SELECT status, receipt_deadline FROM delivery")).one()
        assert row.status == "sent" and row.receipt_deadline is not None
        clock.advance(seconds=31)
        assert run(run_due_failovers(rt)) == 1
        with rt.db.connect() as conn:
            assert list(conn.execute(text("SELECT channel, status FROM delivery ORDER BY id"))) == [
                ("WHATSAPP", "sent"), ("SMS", "delivered")]
    finally:
        rt.db.dispose()


# --- every lock is a security event -----------------------------------------------------------------

def test_every_lock_is_a_security_event(rt, clock):
    configure(rt, Action.COUPON, max_consecutive_failures=2, lock_minutes=5, validate_limit=50)
    payload = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}
    run(generate(rt, payload, org_id=1))
    wrong = "000000" if code_sent_to(rt, PHONE) != "000000" else "111111"
    for _ in range(2):
        run(validate(rt, {**payload, "code": wrong}, org_id=1))
    with pytest.raises(OtpError):  # locked
        run(validate(rt, {**payload, "code": wrong}, org_id=1))
    clock.advance(minutes=6)  # waited out
    run(validate(rt, {**payload, "code": wrong}, org_id=1))  # the count was not reset: one more failure locks again
    with pytest.raises(OtpError) as again:
        run(validate(rt, {**payload, "code": wrong}, org_id=1))
    assert again.value.problems[0].reason == "lock"
    with rt.db.connect() as conn:
        assert list(conn.execute(text("SELECT kind FROM security_event ORDER BY id")).scalars()) == ["lock", "lock"]


# --- why refused: one answer, the engine's ----------------------------------------------------------

OTHER = "+919955880000"  # same prefix as PHONE (the number without its last four digits)
SMS_TO = [{"type": "SMS", "value": PHONE}]
# limit type -> (settings, action configuration, what fills it); each case leaves every other limit far away.
CASES = {
    "daily": ({"daily_limit": 2}, {}, ["gen", "gen"]),
    "action_daily": ({}, {"daily_cap": 2}, ["gen", "gen"]),
    "code_sends": ({}, {"max_sends_per_code": 2}, ["gen", "gen"]),
    "destination": ({"destination_limit": 2}, {}, ["gen", "gen"]),
    "budget": ({"channel_budgets": "SMS=2"}, {}, ["gen", "gen"]),
    "client": ({"client_limit": 2}, {}, ["gen", "gen_other"]),
    "ip": ({"ip_limit": 2}, {}, ["gen", "gen_other"]),
    "prefix": ({"prefix_limit": 2}, {}, ["gen", "gen_other"]),
    "validate": ({}, {"validate_limit": 2}, ["gen", "wrong", "wrong"]),
    "lock": ({}, {"max_consecutive_failures": 2}, ["gen", "wrong", "wrong"]),
}


@pytest.mark.parametrize("limit_type", list(CASES))
def test_why_refused_names_the_limit_the_next_request_meets(db_url, tmp_path, clock, limit_type):
    settings, config, steps = CASES[limit_type]
    rt = runtime(db_url, tmp_path, clock, **settings)
    try:
        if config:
            configure(rt, Action.COUPON, **config)
        user = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}
        refuses = "validate" if limit_type in ("validate", "lock") else "generate"

        def explain() -> list:
            with rt.read_db.connect() as conn:
                return [r for r in explain_refusal(
                    conn, rt.settings, rt.config_for(1, Action.COUPON), entity=NormalisedEntity(EntityType.MOBILE, PHONE),
                    targets=[ChannelTarget(Channel.SMS, PHONE)], client_id=CLIENT, client_ip=IP, now=clock())
                    if r.refuses == refuses]

        def next_request() -> None:
            if refuses == "generate":
                run(generate(rt, {**user, "channels": SMS_TO}, client_id=CLIENT, client_ip=IP, org_id=1))
            else:
                run(validate(rt, {**user, "code": wrong}, org_id=1))

        assert explain() == []
        wrong = ""
        for step in steps:
            if step == "gen":
                run(generate(rt, {**user, "channels": SMS_TO}, client_id=CLIENT, client_ip=IP, org_id=1))
                wrong = "000000" if code_sent_to(rt, PHONE) != "000000" else "111111"
            elif step == "gen_other":  # another user, same API client, address and number prefix
                run(generate(rt, {**user, "entityValue": OTHER, "channels": [{"type": "SMS", "value": OTHER}]},
                             client_id=CLIENT, client_ip=IP, org_id=1))
            else:
                run(validate(rt, {**user, "code": wrong}, org_id=1))
        said = explain()
        with pytest.raises(OtpError) as refused:
            next_request()
        assert refused.value.http_status == 429
        assert said and said[0].limit_type == refused.value.problems[0].reason == limit_type, said
        assert said[0].used >= said[0].limit
        assert refused.value.retry_after == max(1, math.ceil((said[0].lifts_at - clock()).total_seconds()))
    finally:
        rt.db.dispose()


def test_the_limits_panel_shows_a_destination_refusal(db_url, tmp_path, clock):
    """The issue's case: five codes to one number in ten minutes; the panel said "not blocked" meanwhile."""
    from tests.console_app import frame_with, on_page
    rt = runtime(db_url, tmp_path, clock, destination_limit=5)
    try:
        # One code per action: no live code is near its send cap, only the destination is full.
        for action in ("COUPON", "POINTS", "REGISTRATION", "USERGROUP", "SUBSCRIPTION"):
            run(generate(rt, {"entityType": "MOBILE", "entityValue": "9955882233", "action": action}, org_id=1))
        with pytest.raises(OtpError) as refused:  # the console's test send meets it too
            run(generate(rt, {"entityType": "MOBILE", "entityValue": PHONE, "action": "GENERIC"}, org_id=1))
        assert refused.value.problems[0].reason == "destination"
        at = on_page(rt, admin_of(rt), "pages/dash_limits.py")
        at.text_input(key="limits_user").input(PHONE).run()
        assert not at.exception
        assert not [s for s in at.success if "not blocked" in s.value]
        shown = frame_with(at, "why")
        [row] = shown[shown["limit"] == "Destination"].to_dict("records")
        assert row["channel"] == "SMS" and row["used"] == "5 of 5" and row["action"] == "all"
        assert row["refuses"] == "generate"
    finally:
        rt.db.dispose()


# --- the same through the deployed server -----------------------------------------------------------

@pytest.fixture(params=BACKENDS)
def fresh_database_url(request, tmp_path):
    """An empty database for a server to start on: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with PrivateSchema(PG_URL, "otp_refund") as url:
        yield url


def test_the_server_charges_nothing_for_an_outage(fresh_database_url, tmp_path):
    """serve.py with two workers behind a trusted proxy: ten 502s during an outage, then the same code at once."""
    env = {"OTP_DATABASE_URL": fresh_database_url, "OTP_SECRET_KEY": TEST_KEY, "OTP_ENV": "test",
           "OTP_TRUSTED_PROXIES": "127.0.0.1", "OTP_DAILY_LIMIT": "6", "OTP_DESTINATION_LIMIT": "5",
           "OTP_IP_LIMIT": "5", "OTP_PREFIX_LIMIT": "5", "OTP_CLIENT_LIMIT": "5", "OTP_CHANNEL_BUDGETS": "SMS=5",
           "OTP_CACHE_SECONDS": "0"}
    setup = Runtime(make_settings(fresh_database_url, tmp_path, daily_limit=6))  # migrates the new database
    port = free_port()
    try:
        webhook_sms(setup, f"http://127.0.0.1:{port}/send")
        key, secret = new_client(env)
        with ApiServer(env, workers=2) as server, httpx.Client(base_url=server.url, auth=(key, secret),
                                                               headers={"X-Forwarded-For": IP}, timeout=30) as api:
            body = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON",
                    "channels": [{"type": "SMS", "value": PHONE}]}
            statuses = [api.post("/v2/otp/generate", json=body).status_code for _ in range(10)]
            assert statuses == [502] * 10
            with FakeProvider(port=port) as up:
                answer = api.post("/v2/otp/generate", json=body)
            assert answer.status_code == 200, answer.text
            assert [w["code"] for w in answer.json()["warnings"]] == [E.RESENT_SAME_CODE]
        [seen] = up.requests
        assert code_in(seen) == stored_code(setup)
        spent = counters(setup)
        assert {scope for scope, _k in spent} >= {"daily:*", "dest:SMS", "budget", "client", "prefix"}
        assert set(spent.values()) == {1}, spent  # the delivered request, nothing for the ten that failed
        assert send_counts(setup) == [1]
    finally:
        setup.db.dispose()


def stored_code(rt) -> str:
    """The live code, recovered from its encrypted copy (the test plays the recipient)."""
    with rt.db.connect() as conn:
        row = conn.execute(text("SELECT user_key, action, code_enc FROM otp_code")).one()
    return rt.keys.decrypt_code(row.user_key, row.action, bytes(row.code_enc))


def test_the_console_dry_run_names_the_limit_a_real_send_meets(db_url, tmp_path, clock):
    """The test-send page's dry run reads the same limits: a destination that is full is named, not missed."""
    from core.services.dry_run import dry_run
    rt = runtime(db_url, tmp_path, clock, destination_limit=2)
    try:
        body = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON", "channels": SMS_TO}
        assert dry_run(rt, body, org_id=1).problems == []
        for action in ("COUPON", "POINTS"):
            run(generate(rt, {**body, "action": action}, org_id=1))
        said = dry_run(rt, {**body, "action": "REGISTRATION"}, org_id=1)
        with pytest.raises(OtpError) as refused:
            run(generate(rt, {**body, "action": "REGISTRATION"}, org_id=1))
        assert refused.value.problems[0].reason == "destination"
        assert [p.message for p in said.problems] == [
            "at most 2 codes per 10 minutes to one destination: a generate would be refused (destination, 2 of 2)"]
    finally:
        rt.db.dispose()


# --- core.issuing.counters: the one atomic count, and the period arithmetic every limit uses -------------------------

def test_a_count_stops_at_its_limit_and_a_refusal_changes_nothing(rt):
    """limit 3 lets exactly 3 through; the fourth is refused and the row still says 3 (not 4, not 2)."""
    with rt.db.begin() as conn:
        got = [bump(conn, scope="s", user_key="u", period="p", limit=3) for _ in range(5)]
        other = bump(conn, scope="s", user_key="u", period="p2", limit=3)  # another period starts at one
        stored = conn.execute(text("SELECT count FROM usage_counter WHERE scope='s' AND period='p'")).scalar_one()
    assert got == [1, 2, 3, None, None] and stored == 3 and other == 1
    with rt.db.begin() as conn:
        assert bump(conn, scope="s", user_key="u", period="p", limit=4) == 4  # a raised limit lets one more in


def test_fixed_windows_start_on_their_boundary():
    start = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
    for offset in (timedelta(0), timedelta(minutes=7, seconds=30), timedelta(minutes=14, seconds=59, microseconds=9)):
        assert window_start(start + offset, 15) == int(start.timestamp())
    assert window_start(start + timedelta(minutes=15), 15) == int(start.timestamp()) + 900
    assert window_start(start + timedelta(seconds=61), 1) == int(start.timestamp()) + 60


def test_the_day_and_the_time_left_in_it_are_local(tmp_path):
    def retry_after(moment: datetime, zone: str) -> int:  # what a daily-limit refusal at moment answers
        settings = make_settings("sqlite://", tmp_path, timezone=zone)
        config = OtpConfig.from_row(ActionConfig(action="COUPON"))
        return user_counters(settings, config, user_key="MOBILE:1", now=moment)[0].retry_after(moment)

    new_york = ZoneInfo("America/New_York")
    late = datetime(2026, 11, 27, 4, 59, 59, 500000, tzinfo=timezone.utc)  # 23:59:59.5 on the 26th in New York
    assert local_day(late, new_york) == "2026-11-26" and local_day(late, timezone.utc) == "2026-11-27"
    assert retry_after(late, "America/New_York") == 1  # half a second left: rounded up, never 0
    assert retry_after(late - timedelta(seconds=1, microseconds=300000), "America/New_York") == 2
    assert retry_after(late + timedelta(microseconds=500000), "America/New_York") == 24 * 3600
    assert retry_after(datetime(2026, 11, 27, 12, tzinfo=timezone.utc), "UTC") == 12 * 3600
