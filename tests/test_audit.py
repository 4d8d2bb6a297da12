"""The audit trail: every sign-in, test send, gateway, staff and client change is recorded by the core function
that does it (so every face gets it), without a password, a code or a credential; the page filters and exports."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from core.admin import audit
from core.admin.gateways import save_gateway
from core.clock import utcnow
from core.db.models import GatewayConfigBase
from core.services.admin_actions import new_api_client, revoke_api_client
from core.settings import ROOT
from tests.conftest import outbox
from tests.console_app import app, on_page, texts


def entries(rt, kind: str | None = None) -> list[dict]:
    with rt.session() as db:
        return [r.model_dump() for r in reversed(audit.search(db, kind=kind, org_id=1))]


def everything(rt) -> str:
    """Every audit column of every row, as one string to search for secrets."""
    with rt.db.connect() as conn:
        return "\n".join(" | ".join(str(v) for v in row) for row in conn.execute(text("SELECT * FROM audit_log")))


def test_sign_ins_and_failures_are_audited_without_the_password(rt, team):
    at = app(rt).run()
    for user, password in (("eve", "wrong-password-1"), ("hunter2-secret-pass", "password-123"), ("eve", "password-123")):
        at.text_input(key="login_username").input(user)
        at.text_input(key="login_password").input(password)
        at.button(key="login_submit").click().run()
    assert at.title[0].value == "OTP service status"
    rows = entries(rt, "session")
    assert [(r["actor"], r["action"], json.loads(r["detail"] or "{}").get("why")) for r in rows] == [
        ("eve", "session.sign_in_failed", "wrong password"),
        ("h… (19 chars, no such account)", "session.sign_in_failed", "no such account"),
        ("eve", "session.sign_in", None)]
    logged = everything(rt)
    # A name that matches no account is often a password typed in the wrong box: only its first character stays.
    assert "wrong-password-1" not in logged and "password-123" not in logged and "hunter2" not in logged
    at.run()  # AppTest replays the sign-in click into the next run once; a browser does not (see test_browser)
    at.button(key="sign_out").click().run()
    assert at.title[0].value == "Sign in to the OTP console"
    assert entries(rt, "session")[-1]["action"] == "session.sign_out"


def test_test_send_and_validate_are_audited_masked_and_without_the_code(rt, team):
    at = on_page(rt, team["editor"], "pages/test_send.py")
    at.text_input(key="ts_entity_value").input("9955882233")
    at.multiselect(key="ts_channels").select("SMS")
    at.button(key="ts_submit").click().run()
    [message] = outbox(rt)
    code = message["body"].rsplit(" ", 1)[-1].rstrip(".")
    at.text_input(key="ts_code").input("000000" if code != "000000" else "111111")
    at.button(key="ts_validate_submit").click().run()
    at.text_input(key="ts_code").input(code)
    at.button(key="ts_validate_submit").click().run()
    assert "Valid: the code is now used." in texts(at)
    rows = entries(rt, "test")
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
        ("eve", "test.send", "user:MOBILE:995*****33"), ("eve", "test.validate", "user:MOBILE:995*****33"),
        ("eve", "test.validate", "user:MOBILE:995*****33")]
    send = json.loads(rows[0]["detail"])
    assert send["outcome"] == "new code" and send["channels"] == ["SMS 995*****33"]
    assert send["deliveries"] == ["SMS +91********33 via outbox: delivered"]
    assert [json.loads(r["detail"])["outcome"] for r in rows[1:]] == ["invalid", "valid"]
    logged = everything(rt)
    assert code not in logged and "9955882233" not in logged


def test_a_refused_test_send_is_audited_too(rt, team):
    at = on_page(rt, team["editor"], "pages/test_send.py")
    at.text_input(key="ts_entity_value").input("12")
    at.button(key="ts_submit").click().run()
    assert "Refused with HTTP 400" in texts(at)
    [row] = entries(rt, "test")
    assert json.loads(row["detail"])["outcome"] == "refused 400"


def test_gateway_save_records_before_and_after_with_credentials_as_hints_and_the_reason(rt, team):
    def save(sender: str, credentials: dict | None, reason: str) -> None:
        with rt.session() as db:
            save_gateway(db, rt.box, actor=team["admin"], credentials=credentials, reason=reason,
                         config=GatewayConfigBase(name="tw", channel="SMS", provider="twilio_sms", sender=sender,
                                                  options='{"attempts": 2}', is_default=True), org_id=1)
    save("+15005550006", {"account_sid": "AC1234567890", "auth_token": "very-secret-token"}, "first SMS provider")
    save("+15005550007", None, "new sender number")
    first, second = entries(rt, "gateway")
    assert json.loads(first["detail"])["before"] is None and first["reason"] == "first SMS provider"
    change = json.loads(second["detail"])
    assert change["before"]["sender"] == "+15005550006" and change["after"]["sender"] == "+15005550007"
    assert change["after"]["credentials"] == {"account_sid": "••••7890", "auth_token": "••••oken"}
    assert change["credentials_changed"] == [] and second["reason"] == "new sender number"
    assert json.loads(first["detail"])["credentials_changed"] == ["account_sid", "auth_token"]
    logged = everything(rt)
    assert "very-secret-token" not in logged and "AC1234567890" not in logged


def test_client_changes_name_the_client(rt, team):
    made = new_api_client(rt, actor=team["admin"], name="shop", permissions="otp:write", org_id=1)
    with rt.db.connect() as conn:
        client_id = conn.execute(text("SELECT id FROM api_client WHERE key = :k"), {"k": made.key}).scalar()
    revoke_api_client(rt, actor=team["admin"], client_id=client_id, org_id=1)
    assert [(r["action"], r["target"]) for r in entries(rt, "client")] == [("client.create", "client:shop"),
                                                                           ("client.revoke", "client:shop")]
    assert made.secret not in everything(rt)


def test_search_filters_by_kind_actor_and_dates_and_the_csv_has_what_the_page_shows(rt, team):
    with rt.session() as db:
        audit.record(db, actor="eve", action="config.update", target="config:COUPON", reason="tighter limit", org_id=1)
        db.commit()
        rows = audit.search(db, org_id=1)
        assert {r.actor for r in audit.search(db, actor="eve", org_id=1)} == {"eve"}
        assert [r.action for r in audit.search(db, kind="config", org_id=1)] == ["config.update"]
        assert {r.action for r in audit.search(db, kind="staff", org_id=1)} == {"staff.first_admin", "staff.create"}
        assert audit.search(db, start=utcnow() + timedelta(minutes=1), org_id=1) == []
        assert len(audit.search(db, end=utcnow() + timedelta(minutes=1), org_id=1)) == len(rows)
        assert "eve" in audit.actors(db, org_id=1) and "ada" in audit.actors(db, org_id=1)
        exported = list(csv.reader(io.StringIO(audit.to_csv(rows))))
    assert exported[0] == ["when (UTC)", "who", "what", "target", "why", "detail"]
    assert exported[1][1:5] == ["eve", "config.update", "config:COUPON", "tighter limit"]
    assert len(exported) == len(rows) + 1


def test_audit_page_filters_and_offers_the_csv(rt, team):
    with rt.session() as db:
        audit.record(db, actor="eve", action="config.update", target="config:COUPON", reason="tighter limit", org_id=1)
        db.commit()
    at = on_page(rt, team["admin"], "pages/audit.py")
    assert not at.exception
    assert len(at.dataframe[0].value) == 5  # the first admin, three staff, one configuration change
    at.selectbox(key="audit_kind").select("config").run()
    assert list(at.dataframe[0].value["what"]) == ["config.update"]
    at.selectbox(key="audit_kind").select("all").run()
    at.selectbox(key="audit_actor").select("ada").run()
    assert set(at.dataframe[0].value["who"]) == {"ada"}


def test_every_recorded_action_is_of_a_kind_the_page_can_filter():
    recorded = set()
    for path in [*Path(ROOT, "core").rglob("*.py"), *Path(ROOT, "pages").glob("*.py")]:
        recorded |= set(re.findall(r'action=f?"([a-z_]+)\.', path.read_text()))
    assert recorded and recorded <= set(audit.KINDS), recorded - set(audit.KINDS)
