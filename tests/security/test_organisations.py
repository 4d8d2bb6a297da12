"""Organisations (issue 14), the API half of the isolation battery: an API client of one organisation cannot reach
another's customers, codes, limits, tokens, receipts or rows, and the limits that must see all traffic do.

Every test names the defence it proves; each was checked to fail with that defence removed (the report of the
organisations branch lists how). Runs on SQLite, and on PostgreSQL when OTP_TEST_DATABASE_URL is set; the last
tests start a real `serve.py` on a fresh database.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from api import create_app
from core import errors as E
from core.admin.clients import NewClientCredentials, create_client
from core.admin.gateways import save_gateway
from core.admin.organisations import create_organisation
from core.admin.staff import StaffIdentity, create_first_admin
from core.db.models import ApiClient, ApiClientCreate, GatewayConfigBase, OrganisationBase
from core.runtime import Runtime
from core.services.receipts import webhook_signature
from tests.conftest import TEST_KEY, make_settings
from tests.fakes import FakeProvider
from tests.servers import ApiServer, cli, new_client

PHONE = "+919955882233"
GENERATE = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}


# --- helpers -------------------------------------------------------------------------------------------------

def make_org(rt: Runtime, slug: str, **fields) -> int:
    with rt.session() as session:
        made = create_organisation(session, actor="test", fields=OrganisationBase(slug=slug, name=slug.title(),
                                                                                  **fields))
    rt.configuration_changed()
    return made.id


def client_of(rt: Runtime, org_id: int, name: str = "shop", **fields) -> NewClientCredentials:
    with rt.session() as session:
        return create_client(session, client_create=ApiClientCreate(name=name, **fields), org_id=org_id)


def basic(creds: NewClientCredentials) -> dict[str, str]:
    return {"Authorization": f"Bearer {creds.key}.{creds.secret}"}


def outbox_code(rt: Runtime, org_id: int, recipient: str = PHONE) -> str:
    """The newest code the organisation's outbox holds for recipient (built-in templates end with the code)."""
    with rt.db.connect() as conn:
        body = conn.execute(text("SELECT body FROM outbox_message WHERE org_id = :o AND recipient = :r "
                                 "ORDER BY id DESC"), {"o": org_id, "r": recipient}).scalar()
    assert body, f"nothing was sent to {recipient} in organisation {org_id}"
    return body.rsplit(" ", 1)[-1].rstrip(".")


def reason(response) -> str | None:
    """Which limit refused a 429 (the extra key beside Capillary's error)."""
    return response.json()["errors"][0].get("reason")


def rows(rt: Runtime, sql: str, **params) -> list[dict]:
    with rt.db.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


@pytest.fixture
def orgs(rt):
    """Two organisations beside the default one, each with its own API client: {"default", "alpha", "beta"}."""
    alpha, beta = make_org(rt, "alpha"), make_org(rt, "beta")
    return {"default": (1, client_of(rt, 1, "d")), "alpha": (alpha, client_of(rt, alpha, "a")),
            "beta": (beta, client_of(rt, beta, "b"))}


@pytest.fixture
def api(rt):
    with TestClient(create_app(rt), raise_server_exceptions=False) as client:
        yield client


def generate(api, creds, body=None, **headers):
    return api.post("/v2/otp/generate", json=body or GENERATE, headers={**basic(creds), **headers})


def validate(api, creds, code, body=None):
    return api.post("/v2/otp/validate", json={**(body or GENERATE), "code": code}, headers=basic(creds))


# --- customers, codes, attempts and locks are per organisation ---------------------------------------------------

def test_a_code_issued_in_one_organisation_never_validates_in_another(rt, api, orgs):
    """Defence: the customer's key carries the organisation (core.issuing.entities.user_key), and the code's MAC
    binds that key. Same number, same action, the right code: refused in beta, accepted in alpha."""
    (alpha, a), (_beta, b) = orgs["alpha"], orgs["beta"]
    assert generate(api, a).status_code == 200
    code = outbox_code(rt, alpha)
    refused = validate(api, b, code)
    assert refused.status_code == 200 and refused.json()["entity"] is False, refused.json()
    assert refused.json()["warnings"][0]["code"] == E.NO_VALID_OTP  # "no valid OTP for this user": nothing leaks
    accepted = validate(api, a, code)
    assert accepted.json()["entity"] is True
    # And across the default organisation too (its keys are the ones from before organisations).
    (_d, default) = orgs["default"]
    assert generate(api, default).status_code == 200
    assert validate(api, b, outbox_code(rt, 1)).json()["entity"] is False


def test_the_same_number_in_two_organisations_has_its_own_codes(rt, api, orgs):
    """Defence: the live-code index is per organisation and customer: beta's generate issues beta's own code
    (no 7002 re-send of alpha's), and each validates only at home."""
    (alpha, a), (beta, b) = orgs["alpha"], orgs["beta"]
    first, second = generate(api, a).json(), generate(api, b).json()
    assert first["warnings"] == [] and second["warnings"] == [], (first, second)
    assert first["createdId"] != second["createdId"]
    codes = rows(rt, "SELECT org_id, user_key FROM otp_code WHERE state = 'active' ORDER BY org_id")
    assert [(r["org_id"], r["user_key"]) for r in codes] == [(alpha, f"o{alpha}|MOBILE:{PHONE}"),
                                                             (beta, f"o{beta}|MOBILE:{PHONE}")]
    assert validate(api, b, outbox_code(rt, beta)).json()["entity"] is True
    assert validate(api, a, outbox_code(rt, alpha)).json()["entity"] is True


def test_one_organisations_client_cannot_exhaust_anothers_customers_daily_limit(db_url, tmp_path, clock):
    """Defence: OTP_DAILY_LIMIT counts per organisation's customer (the counter's key is the customer's key)."""
    rt = Runtime(make_settings(db_url, tmp_path, daily_limit=3), clock=clock)
    try:
        alpha, beta = make_org(rt, "alpha"), make_org(rt, "beta")
        a, b = client_of(rt, alpha), client_of(rt, beta)
        with TestClient(create_app(rt), raise_server_exceptions=False) as api:
            statuses = []
            for _ in range(4):
                statuses.append(generate(api, a).status_code)
                clock.advance(minutes=11)  # a new code each time: only the daily limit refuses
            assert statuses == [200, 200, 200, 429], statuses
            assert reason(generate(api, a)) == "daily"
            assert generate(api, b).status_code == 200  # beta's customer with the same number is untouched
    finally:
        rt.db.dispose()


def test_failed_attempts_and_locks_are_per_organisation(rt, api, orgs):
    """Defence: the consecutive-failure lock (failure_counter) and the validate window are keyed by the
    organisation's customer: alpha's customer locked by wrong guesses leaves beta's customer open."""
    (alpha, a), (beta, b) = orgs["alpha"], orgs["beta"]
    with rt.session() as session:  # alpha locks after 2 consecutive failures
        from core.admin.action_configs import update_action_config
        from core.db.models import ActionConfigUpdate
        from core.enums import Action
        update = ActionConfigUpdate(**{**rt.config_for(alpha, Action.COUPON).to_update().model_dump(),
                                       "max_consecutive_failures": 2})
        update_action_config(session, org_id=alpha, action=Action.COUPON, update=update, actor="test",
                             service_daily_limit=rt.settings.daily_limit)
    rt.configuration_changed()
    assert generate(api, a).status_code == 200 and generate(api, b).status_code == 200
    alpha_code, beta_code = outbox_code(rt, alpha), outbox_code(rt, beta)
    wrong = "000000" if alpha_code != "000000" else "111111"
    for _ in range(2):
        assert validate(api, a, wrong).json()["entity"] is False
    locked = validate(api, a, alpha_code)
    assert locked.status_code == 429 and reason(locked) == "lock"
    assert beta_code != wrong and validate(api, b, beta_code).json()["entity"] is True
    events = rows(rt, "SELECT org_id, kind FROM security_event WHERE kind = 'lock'")
    assert events == [{"org_id": alpha, "kind": "lock"}]  # recorded in alpha, invisible to beta's dashboards


# --- tokens ---------------------------------------------------------------------------------------------------

def test_a_token_carries_its_organisation_and_cannot_be_replayed_as_another(rt, api, orgs):
    """Defence: the access token's org_id claim must equal its client's organisation on every use (api.token_client).
    A token claiming beta for alpha's client is refused; so is alpha's own token once its client is moved to beta
    (the claim no longer matches)."""
    (alpha, a), (beta, _b) = orgs["alpha"], orgs["beta"]
    issued = api.post("/v3/oauth/token/generate", json={"key": a.key, "secret": a.secret}).json()["data"]
    token = issued["accessToken"]
    from joserfc import jwt
    assert jwt.decode(token, rt.tokens._key).claims["org_id"] == alpha  # noqa: SLF001
    ok = api.post("/v2/otp/generate", json=GENERATE, headers={"CAP-API-ACCESS-TOKEN": token})
    assert ok.status_code == 200
    forged = rt.tokens.issue(client_id=a.client.id, org_id=beta, ttl_seconds=300, now=rt.clock()).access_token
    refused = api.post("/v2/otp/validate", json={**GENERATE, "code": "123456"},
                       headers={"CAP-API-ACCESS-TOKEN": forged})
    assert refused.status_code == 401, refused.json()
    with rt.db.begin() as conn:  # the client changes organisation: its tokens from before stop at once
        conn.execute(update(ApiClient).where(ApiClient.id == a.client.id).values(org_id=beta))
    rt.auth.forget_all()
    replayed = api.post("/v2/otp/generate", json=GENERATE, headers={"CAP-API-ACCESS-TOKEN": token})
    assert replayed.status_code == 401


# --- receipts -------------------------------------------------------------------------------------------------

@pytest.fixture
def provider():
    with FakeProvider() as fake:
        yield fake


def _hook(rt, org_id: int, secret: str, provider: FakeProvider, admin: StaffIdentity) -> None:
    with rt.session() as session:
        save_gateway(session, rt.box, actor=admin, org_id=org_id, credentials={"webhook_secret": secret},
                     config=GatewayConfigBase(name="hook", channel="SMS", provider="webhook_sms", endpoint=provider.url,
                                              sender="ACME", is_default=True,
                                              options=json.dumps({"timeout_seconds": 2, "attempts": 1})))
    rt.configuration_changed()


def _signed(secret: str, message_id: str, status: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"message_id": message_id, "status": status}).encode()
    stamp = str(int(time.time()))
    return body, {"X-Timestamp": stamp, "X-Signature": webhook_signature(secret, stamp, body),
                  "Content-Type": "application/json"}


def test_a_receipt_signed_with_one_organisations_secret_cannot_change_anothers_delivery(rt, api, orgs, provider):
    """Defence: a receipt names its organisation in its URL, is verified with that organisation's gateway secret,
    and finds its delivery among that organisation's deliveries only. Both organisations have a gateway named
    'hook' and the provider gives both deliveries the same message id: the worst case."""
    with rt.session() as session:
        made = create_first_admin(session, username="ada", password="correct horse 1")
    admin = StaffIdentity(made.id, made.username, made.role)
    (default_org, d), (beta, b) = orgs["default"], orgs["beta"]
    _hook(rt, default_org, "secret-of-default", provider, admin)
    _hook(rt, beta, "secret-of-beta", provider, admin)
    assert generate(api, d).status_code == 200 and generate(api, b).status_code == 200
    sent = rows(rt, "SELECT org_id, gateway, status, provider_message_id FROM delivery ORDER BY org_id")
    assert [(r["org_id"], r["gateway"], r["status"], r["provider_message_id"]) for r in sent] == [
        (default_org, "hook", "sent", "msg-1"), (beta, "hook", "sent", "msg-1")]

    # The default organisation's secret, sent to beta's URL: beta verifies with its own secret.
    body, headers = _signed("secret-of-default", "msg-1", "failed")
    assert api.post("/v2/otp/receipts/beta/hook", content=body, headers=headers).status_code == 401
    # Beta's secret at the default organisation's URL: the same.
    body, headers = _signed("secret-of-beta", "msg-1", "failed")
    assert api.post("/v2/otp/receipts/hook", content=body, headers=headers).status_code == 401
    assert [r["status"] for r in rows(rt, "SELECT status FROM delivery ORDER BY org_id")] == ["sent", "sent"]

    # A correctly signed receipt changes its own organisation's delivery and nothing of the other's.
    body, headers = _signed("secret-of-beta", "msg-1", "delivered")
    answer = api.post("/v2/otp/receipts/beta/hook", content=body, headers=headers)
    assert answer.status_code == 200, answer.json()
    states = rows(rt, "SELECT org_id, status FROM delivery ORDER BY org_id")
    assert [(r["org_id"], r["status"]) for r in states] == [(default_org, "sent"), (beta, "delivered")]
    assert rows(rt, "SELECT org_id FROM delivery_receipt") == [{"org_id": beta}]


def test_a_receipt_for_a_message_of_another_organisation_finds_nothing(rt, api, orgs, provider):
    """Defence: the delivery a receipt changes is looked up within the gateway's organisation
    (core.services.receipts.delivery_for_receipt): alpha's own gateway, correctly signed, naming a message id
    that only beta's delivery has, is a 404 and changes nothing."""
    with rt.session() as session:
        made = create_first_admin(session, username="ada", password="correct horse 1")
    admin = StaffIdentity(made.id, made.username, made.role)
    (alpha, _a), (beta, b) = orgs["alpha"], orgs["beta"]
    _hook(rt, alpha, "secret-of-alpha", provider, admin)
    _hook(rt, beta, "secret-of-beta", provider, admin)
    assert generate(api, b).status_code == 200  # only beta sent anything: msg-1 is beta's
    body, headers = _signed("secret-of-alpha", "msg-1", "failed")
    answer = api.post("/v2/otp/receipts/alpha/hook", content=body, headers=headers)
    assert answer.status_code == 404, answer.json()
    assert rows(rt, "SELECT org_id, status FROM delivery") == [{"org_id": beta, "status": "sent"}]


def test_guessed_gateway_names_and_organisations_do_not_reach_another_organisations_rows(rt, api, orgs, provider):
    """Defence: the default receipt URL reaches the default organisation's gateways only, and an unknown
    organisation answers exactly like an unknown gateway (404): a guess learns nothing."""
    with rt.session() as session:
        made = create_first_admin(session, username="ada", password="correct horse 1")
    admin = StaffIdentity(made.id, made.username, made.role)
    (beta, b) = orgs["beta"]
    _hook(rt, beta, "secret-of-beta", provider, admin)
    assert generate(api, b).status_code == 200
    body, headers = _signed("secret-of-beta", "msg-1", "failed")
    unknown_gateway = api.post("/v2/otp/receipts/hook", content=body, headers=headers)  # beta's name, default URL
    unknown_org = api.post("/v2/otp/receipts/nosuch/hook", content=body, headers=headers)
    assert unknown_gateway.status_code == unknown_org.status_code == 404
    assert unknown_gateway.json() == unknown_org.json()
    assert rows(rt, "SELECT status FROM delivery") == [{"status": "sent"}]


def test_guessed_ids_in_core_operations_do_not_reach_another_organisations_rows(rt, orgs):
    """Defence: operations that take an id check its organisation: revoking alpha's client "as beta" finds nothing
    and alpha's client keeps working; beta cannot approve, reject or re-activate alpha's template versions."""
    from core.admin.template_versions import TemplateRefused, approve, reactivate, reject, save_draft, submit_for_review
    from core.db.models import TemplateVersionCreate
    from core.enums import Action
    from core.services.admin_actions import revoke_api_client
    with rt.session() as session:
        made = create_first_admin(session, username="ada", password="correct horse 1")  # a platform admin
    ada = StaffIdentity(made.id, made.username, made.role)
    (alpha, a), (beta, _b) = orgs["alpha"], orgs["beta"]
    assert revoke_api_client(rt, actor=ada, org_id=beta, client_id=a.client.id) is False
    assert rt.auth.verify(a.key, a.secret) is not None
    config = rt.config_for(alpha, Action.COUPON)
    with rt.session() as session:
        draft = save_draft(session, actor=ada, org_id=alpha, config=config, fields=TemplateVersionCreate(
            action="COUPON", channel="SMS", text="Alpha {{ validation_code }}"))
    for attempt in (lambda s: submit_for_review(s, actor=ada, org_id=beta, version_id=draft.id, config=config),
                    lambda s: approve(s, actor=ada, org_id=beta, version_id=draft.id, config=config),
                    lambda s: reject(s, actor=ada, org_id=beta, version_id=draft.id, reason="no"),
                    lambda s: reactivate(s, actor=ada, org_id=beta, version_id=draft.id, reason="no")):
        with rt.session() as session, pytest.raises(TemplateRefused, match="no such template version|only an approved"):
            attempt(session)
    assert rows(rt, "SELECT org_id, status FROM template_version") == [{"org_id": alpha, "status": "draft"}]


# --- what is the organisation's own: configuration, templates, gateways, brand, region, day -----------------------

def test_each_organisation_sends_with_its_own_gateways_templates_and_brand(rt, api, orgs):
    """Gateways, approved templates and the brand are the organisation's own: beta's default SMS gateway and
    brand are never used for alpha's customers."""
    from core.admin.staff import create_staff
    from core.admin.template_versions import approve, save_draft, submit_for_review
    from core.db.models import StaffCreate, TemplateVersionCreate
    from core.enums import Action
    (alpha, a), (beta, b) = orgs["alpha"], orgs["beta"]
    with rt.db.begin() as conn:
        conn.execute(text("UPDATE organisation SET brand = 'Beta Brand' WHERE id = :b"), {"b": beta})
    with rt.session() as session:
        made = create_first_admin(session, username="ada", password="correct horse 1")
    ada = StaffIdentity(made.id, made.username, made.role)
    with rt.session() as session:
        save_gateway(session, rt.box, actor=ada, org_id=beta, credentials=None, config=GatewayConfigBase(
            name="beta-sms", channel="SMS", provider="outbox", is_default=True))
        eve = create_staff(session, actor=ada, org_id=beta,
                           staff_create=StaffCreate(username="eve", password="password-123", role="editor"))
    editor = StaffIdentity(eve.id, eve.username, eve.role)
    config = rt.config_for(beta, Action.COUPON)
    with rt.session() as session:
        draft = save_draft(session, actor=editor, org_id=beta, config=config, fields=TemplateVersionCreate(
            action="COUPON", channel="SMS", text="{{ brand }}: {{ validation_code }}"))
    with rt.session() as session:
        submit_for_review(session, actor=editor, org_id=beta, version_id=draft.id, config=config)
    with rt.session() as session:
        approve(session, actor=ada, org_id=beta, version_id=draft.id, config=config)
    rt.configuration_changed()
    channels = {**GENERATE, "channels": [{"type": "SMS", "value": PHONE}]}
    assert generate(api, a, channels).status_code == 200 and generate(api, b, channels).status_code == 200
    sent = rows(rt, "SELECT d.org_id, d.gateway, o.body FROM delivery d JOIN outbox_message o "
                    "ON o.delivery_id = d.id ORDER BY d.org_id")
    assert [(r["org_id"], r["gateway"]) for r in sent] == [(alpha, "outbox"), (beta, "beta-sms")]
    assert sent[1]["body"].startswith("Beta Brand: ")
    assert sent[0]["body"].startswith("Hi user.Your otp for validation is ")  # alpha: the built-in template


def test_a_late_failover_sends_with_the_organisations_own_plan_and_gateways(rt, api, orgs, provider):
    """The failover poller, with no request in hand, finds the organisation from the delivery's request: beta's
    plan (SMS then voice), beta's voice gateway, beta's customer's code."""
    from core.admin.action_configs import update_action_config
    from core.db.models import ActionConfigUpdate
    from core.enums import Action
    from core.runtime import run
    from core.services.failover import run_due_failovers
    with rt.session() as session:
        made = create_first_admin(session, username="ada", password="correct horse 1")
    admin = StaffIdentity(made.id, made.username, made.role)
    (beta, b) = orgs["beta"]
    _hook(rt, beta, "secret-of-beta", provider, admin)  # SMS: 'sent', awaiting a receipt
    with rt.session() as session:
        save_gateway(session, rt.box, actor=admin, org_id=beta, credentials=None, config=GatewayConfigBase(
            name="beta-voice", channel="PHONE", provider="outbox", is_default=True))
    with rt.session() as session:
        update = ActionConfigUpdate(**{**rt.config_for(beta, Action.COUPON).to_update().model_dump(),
                                       "failover": "SMS,PHONE", "failover_seconds": 30})
        update_action_config(session, org_id=beta, action=Action.COUPON, update=update, actor="test",
                             service_daily_limit=rt.settings.daily_limit)
    rt.configuration_changed()
    assert generate(api, b).status_code == 200
    rt.clock.advance(seconds=31)  # no 'delivered' receipt in time
    assert run(run_due_failovers(rt)) == 1
    steps = rows(rt, "SELECT org_id, channel, gateway, status, failover_step FROM delivery ORDER BY id")
    assert steps == [{"org_id": beta, "channel": "SMS", "gateway": "hook", "status": "sent", "failover_step": 0},
                     {"org_id": beta, "channel": "PHONE", "gateway": "beta-voice", "status": "delivered",
                      "failover_step": 1}]
    spoken = rows(rt, "SELECT org_id, body FROM outbox_message")
    assert len(spoken) == 1 and spoken[0]["org_id"] == beta
    code = spoken[0]["body"].rsplit(" ", 1)[-1].rstrip(".")
    assert provider.requests[0].json()["text"].endswith(f" {code}.")  # the same code as the SMS
    assert validate(api, b, code).json()["entity"] is True


def test_national_numbers_are_read_in_the_organisations_region(rt, api):
    """An organisation in Vietnam reads a national number as VN; the default organisation as OTP_DEFAULT_REGION."""
    vn = make_org(rt, "acme-vn", phone_region="VN")
    vn_client, default_client = client_of(rt, vn), client_of(rt, 1)
    national = {"entityType": "MOBILE", "entityValue": "0912345678", "action": "COUPON"}
    assert generate(api, vn_client, national).status_code == 200
    assert rows(rt, "SELECT user_key FROM otp_code") == [{"user_key": f"o{vn}|MOBILE:+84912345678"}]
    assert generate(api, default_client, national).status_code == 400  # not a valid Indian number


def test_the_daily_limit_restarts_at_the_organisations_midnight(db_url, tmp_path, clock):
    """The day of the per-customer daily limit begins at the organisation's own midnight."""
    rt = Runtime(make_settings(db_url, tmp_path, daily_limit=1), clock=clock)  # the clock is 10:00 UTC
    try:
        tokyo = make_org(rt, "tokyo", timezone="Asia/Tokyo")  # 19:00 there: its day ends at 15:00 UTC
        t, d = client_of(rt, tokyo), client_of(rt, 1)
        with TestClient(create_app(rt), raise_server_exceptions=False) as api:
            assert generate(api, t).status_code == 200 and generate(api, d).status_code == 200
            clock.advance(hours=5, minutes=30)  # 15:30 UTC: a new day in Tokyo, not in UTC
            assert generate(api, t).status_code == 200
            refused = generate(api, d)
            assert refused.status_code == 429 and reason(refused) == "daily"
    finally:
        rt.db.dispose()


# --- what stays service-wide: destination, prefix, address, platform budget --------------------------------------

def test_the_destination_limit_counts_across_organisations(db_url, tmp_path, clock):
    """Defence against traffic pumping: sends to one phone number per window are counted across organisations
    (the counter's key is the number, not the customer)."""
    rt = Runtime(make_settings(db_url, tmp_path, destination_limit=2), clock=clock)
    try:
        alpha, beta = make_org(rt, "alpha"), make_org(rt, "beta")
        a, b = client_of(rt, alpha), client_of(rt, beta)
        body = {**GENERATE, "channels": [{"type": "SMS", "value": PHONE}]}
        with TestClient(create_app(rt), raise_server_exceptions=False) as api:
            assert generate(api, a, body).status_code == 200
            assert generate(api, b, body).status_code == 200
            refused = generate(api, a, {**body, "action": "POINTS"})
            assert refused.status_code == 429 and reason(refused) == "destination", refused.json()
    finally:
        rt.db.dispose()


def test_the_prefix_limit_counts_across_organisations(db_url, tmp_path, clock):
    """Defence against SMS pumping to a number range: codes per number prefix are counted across organisations,
    and the block is a security event of the organisation whose request met it."""
    rt = Runtime(make_settings(db_url, tmp_path, prefix_limit=2), clock=clock)
    try:
        alpha, beta = make_org(rt, "alpha"), make_org(rt, "beta")
        a, b = client_of(rt, alpha), client_of(rt, beta)
        with TestClient(create_app(rt), raise_server_exceptions=False) as api:
            for creds, number in ((a, "+919955880001"), (b, "+919955880002")):
                assert generate(api, creds, {**GENERATE, "entityValue": number}).status_code == 200
            refused = generate(api, b, {**GENERATE, "entityValue": "+919955880003"})
            assert refused.status_code == 429 and reason(refused) == "prefix", refused.json()
        assert rows(rt, "SELECT org_id, kind FROM security_event") == [{"org_id": beta, "kind": "prefix_block"}]
    finally:
        rt.db.dispose()


def test_the_end_user_address_limit_counts_across_organisations(db_url, tmp_path, clock):
    """Defence: generates per end-user address are counted across organisations (one attacker, many brands)."""
    rt = Runtime(make_settings(db_url, tmp_path, ip_limit=2), clock=clock)
    try:
        alpha, beta = make_org(rt, "alpha"), make_org(rt, "beta")
        a = client_of(rt, alpha, end_user_ip_header="X-End-User-IP")
        b = client_of(rt, beta, end_user_ip_header="X-End-User-IP")
        with TestClient(create_app(rt), raise_server_exceptions=False) as api:
            for creds, number in ((a, "+919955882201"), (b, "+919811882202")):
                answer = generate(api, creds, {**GENERATE, "entityValue": number}, **{"X-End-User-IP": "203.0.113.9"})
                assert answer.status_code == 200, answer.json()
            refused = generate(api, a, {**GENERATE, "entityValue": "+917011882203"}, **{"X-End-User-IP": "203.0.113.9"})
            assert refused.status_code == 429 and reason(refused) == "ip", refused.json()
    finally:
        rt.db.dispose()


def test_the_platform_channel_budget_counts_across_organisations_and_an_actions_budget_does_not(
        db_url, tmp_path, clock):
    """Defence: OTP_CHANNEL_BUDGETS is one platform-wide budget above the organisations' (its counter has no
    organisation); an action's own budget is its organisation's, even when two organisations give the same action
    a budget of the same channel."""
    rt = Runtime(make_settings(db_url, tmp_path, channel_budgets="SMS=3"), clock=clock)
    try:
        alpha, beta = make_org(rt, "alpha"), make_org(rt, "beta")
        a, b = client_of(rt, alpha), client_of(rt, beta)
        from core.admin.action_configs import update_action_config
        from core.db.models import ActionConfigUpdate
        from core.enums import Action
        for org_id in (alpha, beta):  # each organisation's COUPON has a budget of its own: 1 SMS a day
            with rt.session() as session:
                update = ActionConfigUpdate(**{**rt.config_for(org_id, Action.COUPON).to_update().model_dump(),
                                               "channel_budgets": "SMS=1"})
                update_action_config(session, org_id=org_id, action=Action.COUPON, update=update, actor="test",
                                     service_daily_limit=rt.settings.daily_limit)
        rt.configuration_changed()

        def sms(number: str, action: str = "COUPON") -> dict:
            return {**GENERATE, "action": action, "entityValue": number,
                    "channels": [{"type": "SMS", "value": number}]}
        with TestClient(create_app(rt), raise_server_exceptions=False) as api:
            assert generate(api, a, sms("+919955882211")).status_code == 200
            own = generate(api, a, sms("+919811882212"))  # alpha's COUPON budget is spent ...
            assert own.status_code == 429 and reason(own) == "budget"
            assert generate(api, b, sms("+917011882213")).status_code == 200  # ... beta's COUPON budget is not
            assert generate(api, b, sms("+918011882214", "POINTS")).status_code == 200  # the platform's third SMS
            spent = generate(api, b, sms("+916011882215", "POINTS"))
            assert spent.status_code == 429 and reason(spent) == "budget", spent.json()
        trips = rows(rt, "SELECT org_id, detail FROM security_event WHERE kind = 'budget_trip' ORDER BY id")
        assert trips == [{"org_id": alpha, "detail": "SMS, COUPON budget"}, {"org_id": beta, "detail": "SMS, COUPON budget"},
                         {"org_id": beta, "detail": "SMS"}]
    finally:
        rt.db.dispose()


# --- the way it is deployed: serve.py and the CLI on a fresh database --------------------------------------------

def _fresh_env(request, tmp_path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY,
                "OTP_DESTINATION_LIMIT": "0", "OTP_IP_LIMIT": "0", "OTP_PREFIX_LIMIT": "0"}
    return request.getfixturevalue("pg_schema_env")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def fresh_env(request, tmp_path):
    return _fresh_env(request, tmp_path)


def test_a_real_server_keeps_two_organisations_apart(fresh_env, tmp_path):
    """serve.py on a fresh database, organisations and clients made with the CLI as the README says: a code
    issued to the default organisation's customer is refused to beta's client for the same number and action,
    beta's national numbers are Vietnamese, and the token endpoint signs beta's org id into beta's tokens."""
    env = fresh_env
    made = dict(line.split(": ", 1) for line in cli(env, "org", "create", "beta", "--name", "Beta",
                                                   "--region", "VN").splitlines() if ": " in line)
    assert made["slug"] == "beta"
    listed = cli(env, "org", "list")
    assert "\tdefault\tDefault\t" in listed and "\tbeta\tBeta\t" in listed
    default_key, default_secret = new_client(env)
    beta_key, beta_secret = new_client(env, "--org", "beta")
    with ApiServer(env, serve=True) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        d, b = (default_key, default_secret), (beta_key, beta_secret)
        assert http.post("/v2/otp/generate", json=GENERATE, auth=d).status_code == 200
        import sqlalchemy
        engine = sqlalchemy.create_engine(env["OTP_DATABASE_URL"])
        with engine.connect() as conn:
            body = conn.execute(text("SELECT body FROM outbox_message ORDER BY id DESC")).scalar()
        code = body.rsplit(" ", 1)[-1].rstrip(".")
        crossed = http.post("/v2/otp/validate", json={**GENERATE, "code": code}, auth=b)
        assert crossed.status_code == 200 and crossed.json()["entity"] is False
        national = http.post("/v2/otp/generate", auth=b,
                             json={"entityType": "MOBILE", "entityValue": "0912345678", "action": "COUPON"})
        assert national.status_code == 200, national.json()
        token = http.post("/v3/oauth/token/generate", json={"key": beta_key, "secret": beta_secret}).json()
        from joserfc import jwt
        claims = jwt.decode(token["data"]["accessToken"], rt_token_key(env)).claims
        assert claims["org_id"] == int(made["id"])
        assert http.post("/v2/otp/validate", json={**GENERATE, "code": code}, auth=d).json()["entity"] is True
        with engine.connect() as conn:
            keys = [r[0] for r in conn.execute(text("SELECT user_key FROM otp_code ORDER BY id"))]
        engine.dispose()
    assert keys == [f"MOBILE:{PHONE}", f"o{made['id']}|MOBILE:+84912345678"]


def rt_token_key(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from joserfc.jwk import OctKey

    from core.crypto import load_master_key, token_key
    from core.settings import Settings
    return OctKey.import_key(token_key(load_master_key(Settings(secret_key=env["OTP_SECRET_KEY"]))))
