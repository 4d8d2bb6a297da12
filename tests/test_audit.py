"""The audit trail: every sign-in, test send, gateway, staff and client change is recorded by the core function
that does it (so every face gets it), without a password, a code or a credential; the page filters and exports."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from core.admin import audit
from core.admin.console_sessions import end_session
from core.admin.gateways import save_gateway
from core.admin.organisations import create_organisation
from core.admin.staff import StaffIdentity, assign_staff, authenticate, create_staff
from core.clock import utcnow
from core.db.models import GatewayConfigBase, OrganisationBase, StaffCreate
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


@pytest.fixture
def two_orgs(rt, team):
    """Beside the default organisation (ada, eve, abe, vic): alpha with al (admin) and val (viewer), beta with bea
    (admin), and mo, who works in alpha and beta. Each signs in once (mo and val also out; bea also fails once), a
    name that is no account fails, and ada (platform admin) signs in."""
    ada = team["admin"]
    with rt.session() as db:
        alpha = create_organisation(db, actor=ada, fields=OrganisationBase(slug="alpha", name="Alpha")).id
    with rt.session() as db:
        beta = create_organisation(db, actor=ada, fields=OrganisationBase(slug="beta", name="Beta")).id
    people = {}
    with rt.session() as db:
        for name, org_id, role in (("al", alpha, "admin"), ("val", alpha, "viewer"), ("bea", beta, "admin"),
                                   ("mo", alpha, "editor")):
            made = create_staff(db, actor=ada, org_id=org_id, staff_create=StaffCreate(
                username=name, password="password-123", role=role))
            people[name] = StaffIdentity(made.id, made.username, made.role)
    with rt.session() as db:
        assign_staff(db, actor=ada, staff_id=people["mo"].id, org_id=beta, role="viewer")
    for name, password in (("al", "password-123"), ("val", "password-123"), ("bea", "wrong-password"),
                           ("bea", "password-123"), ("mo", "password-123"), ("nobody-here", "x"),
                           ("ada", "correct horse 1"), ("eve", "password-123")):
        with rt.session() as db:
            authenticate(db, username=name, password=password)
    for name in ("val", "mo"):
        with rt.session() as db:
            end_session(db, identity=people[name], token=None)
    return {"alpha": alpha, "beta": beta, **people, "ada": ada, "abe": team["approver"]}


def sign_ins(rt, *, staff_id: int, org_id: int) -> set[tuple[str, str]]:
    """(who, what) of every sign-in row the person reads in the organisation, as the audit page asks core."""
    with rt.session() as db:
        platform = audit.platform_rows_for(db, staff_id=staff_id, org_id=org_id)
        return {(r.actor, r.action) for r in audit.search(db, org_id=org_id, platform=platform, kind="session")}


def test_an_organisations_staff_read_the_sign_ins_of_its_members_and_of_no_one_else(rt, two_orgs):
    """Defence: audit.platform_rows_for gives an organisation's staff (with other organisations about) the
    "members" view, and search reads platform rows in it only when they are sign-ins of the organisation's own
    members (staff_membership, not platform admins). alpha's admin reads al's, val's and mo's (mo also works in
    beta), not bea's, ada's, eve's (default organisation) or the unknown name's; beta's admin reads bea's (the
    failed attempt too) and mo's; a platform admin reads all of them; no one outside reads the others'."""
    w = two_orgs
    alpha_view = sign_ins(rt, staff_id=w["al"].id, org_id=w["alpha"])
    assert alpha_view == {("al", "session.sign_in"), ("val", "session.sign_in"), ("val", "session.sign_out"),
                          ("mo", "session.sign_in"), ("mo", "session.sign_out")}
    assert sign_ins(rt, staff_id=w["bea"].id, org_id=w["beta"]) == {
        ("bea", "session.sign_in_failed"), ("bea", "session.sign_in"), ("mo", "session.sign_in"),
        ("mo", "session.sign_out")}
    # The default organisation's approver: eve's, not ada's (a platform admin: her sign-ins are the platform's).
    assert sign_ins(rt, staff_id=w["abe"].id, org_id=1) == {("eve", "session.sign_in")}
    everyone = sign_ins(rt, staff_id=w["ada"].id, org_id=w["alpha"])
    assert {"ada", "eve", "bea", "al", "val", "mo"} < {who for who, _ in everyone}
    assert any(who.startswith("n… (11 chars") for who, _ in everyone)
    with rt.session() as db:
        platform = audit.platform_rows_for(db, staff_id=w["al"].id, org_id=w["alpha"])
        assert platform == "members"
        # ada is there for adding alpha's staff (alpha's own rows), not for her sign-in.
        assert audit.actors(db, org_id=w["alpha"], platform=platform) == ["ada", "al", "mo", "val"]
        # Nor the other platform rows: organisations made, staff assigned.
        assert audit.search(db, org_id=w["alpha"], platform=platform, kind="org") == []
        assert {(r.org_id, r.action) for r in audit.search(db, org_id=w["alpha"], platform=platform, kind="staff")} \
            == {(w["alpha"], "staff.create")}  # alpha's own; not mo's assignment to beta (a platform row)
    # Taken out of alpha, mo's sign-ins are beta's alone.
    with rt.session() as db:
        assign_staff(db, actor=w["ada"], staff_id=w["mo"].id, org_id=w["alpha"], role=None)
    assert {who for who, _ in sign_ins(rt, staff_id=w["al"].id, org_id=w["alpha"])} == {"al", "val"}


def test_with_one_organisation_its_staff_read_every_sign_in_as_before(rt, team):
    """Defence: platform_rows_for answers "all" while there is no other organisation: the log reads as it did
    before organisations (the first admin's and a failed unknown name's sign-ins included)."""
    for name, password in (("ada", "correct horse 1"), ("ghost", "x")):
        with rt.session() as db:
            authenticate(db, username=name, password=password)
    assert sign_ins(rt, staff_id=team["approver"].id, org_id=1) == {
        ("ada", "session.sign_in"), ("g… (5 chars, no such account)", "session.sign_in_failed")}


def test_the_audit_page_shows_an_organisations_admin_its_members_sign_ins(rt, two_orgs):
    """The page asks core which platform rows to show: alpha's admin sees al's, val's and mo's sign-ins and
    nothing of bea's, ada's or eve's, in the table, the Who filter and the CSV."""
    at = on_page(rt, two_orgs["al"], "pages/audit.py")
    assert not at.exception, at.exception
    at.selectbox(key="audit_kind").select("session").run()
    assert set(at.dataframe[0].value["who"]) == {"al", "val", "mo"}
    assert at.selectbox(key="audit_actor").options == ["everyone", "ada", "al", "mo", "val"]  # ada: alpha's staff
    assert not [s for s in ("bea", "eve", "nobody", "n…") if s in at.dataframe[0].value.to_csv()]
    assert "those of this organisation's own staff" in " ".join(c.value for c in at.caption)
