"""Organisations (issue 14), the console half of the isolation battery: a viewer, editor, approver or admin of
organisation alpha cannot read, change, approve, export or learn the existence of beta's templates, versions,
gateways and credentials, configuration, API clients, staff, audit rows or outbox messages; neither through the
console's pages (AppTest), nor by calling core directly, nor with beta's organisation id forged into their session,
nor with beta's ids (versions, clients, gateways) guessed.

Every test names the defence it proves; each was checked to fail with that defence removed (the report of the
orgs-console branch lists how). Runs on SQLite, and on PostgreSQL when OTP_TEST_DATABASE_URL is set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from console_ui.state import SESSION_KEY
from core.admin.clients import NewClientCredentials
from core.admin.gateway_forms import GatewayForm, save_gateway_form, stored_form
from core.admin.gateways import GatewayRefused, save_gateway
from core.admin.organisations import create_organisation, update_organisation
from core.admin.staff import (InvalidStaff, PermissionDenied, StaffIdentity, all_staff, assign_staff,
                              create_first_admin, create_staff, disable_staff, list_staff, set_role)
from core.admin.template_versions import (TemplateRefused, approve, deactivate, list_versions, reactivate, reject,
                                          save_draft, submit_for_review)
from core.db.models import (ActionConfigUpdate, GatewayConfigBase, OrganisationBase, OrganisationUpdate, StaffCreate,
                            TemplateVersionCreate)
from core.enums import Action, Channel
from core.services.admin_actions import (new_api_client, revoke_api_client, save_action_config,
                                         set_api_client_end_user_ip_header, set_api_client_token_ttl)
from core.services.trials import outbox_messages, send_gateway_test, trial_dry_run, trial_generate, trial_validate
from tests.console_app import frame_with, signed_in, texts

ALPHA_PHONE = "+919955882233"
BETA_PHONE = "+919811100022"
# Everything of beta's that alpha's staff must never see: its name and slug, its people, its client, its gateway
# and that gateway's secret, its template's wording, its configuration's reason, its customer's number.
BETA_MARKERS = ("beta", "Beta", "bea", "bob", "9811100022", "Sekrit wording", "S3CRET-hook-9876")
PAGES = ("pages/home.py", "pages/templates.py", "pages/test_send.py", "pages/outbox.py", "pages/config.py",
         "pages/gateways.py", "pages/admin.py", "pages/audit.py")


@dataclass
class World:
    alpha: int
    beta: int
    ada: StaffIdentity  # the platform admin
    staff: dict[str, StaffIdentity]  # alpha's viewer, editor, approver and admin, by role
    bea: StaffIdentity  # beta's admin
    bob: StaffIdentity  # beta's editor
    pending: int  # beta's template version awaiting approval
    active: int  # beta's approved, active template version
    retired: int  # beta's approved version that is no longer active
    client: NewClientCredentials  # beta's API client


def person(made) -> StaffIdentity:  # type: ignore[no-untyped-def]
    return StaffIdentity(made.id, made.username, made.role)


def rows(rt, sql: str, **params) -> list[dict]:  # type: ignore[no-untyped-def]
    with rt.db.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


@pytest.fixture
def world(rt) -> World:
    """Organisations alpha and beta beside the default one; alpha's four roles; beta with a template version of
    every state, a gateway with a credential, an API client, a configuration change, a test send in its outbox."""
    with rt.session() as db:
        ada = person(create_first_admin(db, username="ada", password="correct horse 1"))
    with rt.session() as db:
        alpha = create_organisation(db, actor=ada, fields=OrganisationBase(slug="alpha", name="Alpha Shop")).id
    with rt.session() as db:
        beta = create_organisation(db, actor=ada, fields=OrganisationBase(slug="beta", name="Beta Bank")).id
    rt.configuration_changed()
    staff = {}
    with rt.session() as db:
        for name, role in (("vic", "viewer"), ("eve", "editor"), ("abe", "approver"), ("al", "admin")):
            staff[role] = person(create_staff(db, actor=ada, org_id=alpha, staff_create=StaffCreate(
                username=name, password="password-123", role=role)))
        bea = person(create_staff(db, actor=ada, org_id=beta, staff_create=StaffCreate(
            username="bea", password="password-123", role="admin")))
        bob = person(create_staff(db, actor=bea, org_id=beta, staff_create=StaffCreate(
            username="bob", password="password-123", role="editor")))
    config = rt.config_for(beta, Action.COUPON)
    ids = []
    for wording in ("Sekrit wording one {{ validation_code }}", "Sekrit wording two {{ validation_code }}",
                    "Sekrit wording three {{ validation_code }}"):
        with rt.session() as db:
            draft = save_draft(db, actor=bob, org_id=beta, config=config, fields=TemplateVersionCreate(
                action="COUPON", channel="SMS", text=wording))
            submit_for_review(db, actor=bob, org_id=beta, version_id=draft.id, config=config)
        ids.append(draft.id)
    for version_id in ids[:2]:
        with rt.session() as db:
            approve(db, actor=bea, org_id=beta, version_id=version_id, config=config)
    with rt.session() as db:
        save_gateway(db, rt.box, actor=bea, org_id=beta, credentials={"webhook_secret": "S3CRET-hook-9876"},
                     config=GatewayConfigBase(name="beta-hook", channel="SMS", provider="webhook_sms",
                                              endpoint="http://127.0.0.1:9/beta", sender="BETA", is_default=False,
                                              enabled=False, options=json.dumps({"attempts": 1})))
    client = new_api_client(rt, actor=bea, org_id=beta, name="beta-shop", permissions="otp:write")
    update = rt.config_for(beta, Action.COUPON).to_update().model_copy(update={"code_length": 8})
    save_action_config(rt, actor=bea, org_id=beta, action=Action.COUPON, update=update,
                       reason="beta wants eight digits")
    rt.configuration_changed()
    trial_generate(rt, actor=bob, org_id=beta, payload={"entityType": "MOBILE", "entityValue": BETA_PHONE,
                                                        "action": "COUPON"})
    assert rows(rt, "SELECT org_id FROM outbox_message") == [{"org_id": beta}]
    return World(alpha, beta, ada, staff, bea, bob, ids[2], ids[1], ids[0], client)


def screen(at) -> str:  # type: ignore[no-untyped-def]
    """Everything a person could read on the screen: texts, tables, the options of every choice, field values."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "code", "text", "error", "warning", "info",
                 "success", "metric", "json"):
        for element in getattr(at, kind, []):
            parts.append(str(getattr(element, "value", "")))
            parts.append(str(getattr(element, "label", "")))
    for frame in at.dataframe:
        parts.append(frame.value.to_csv())
    for kind in ("selectbox", "multiselect", "radio"):
        for widget in getattr(at, kind, []):
            parts.extend(str(o) for o in widget.options)
            parts.append(str(widget.value))
    for kind in ("text_input", "text_area"):
        for widget in getattr(at, kind, []):
            parts.append(str(widget.value))
    for tab in at.tabs:
        parts.append(tab.label)
    return "\n".join(parts)


def leaked(at) -> list[str]:  # type: ignore[no-untyped-def]
    shown = screen(at)
    return [marker for marker in BETA_MARKERS if marker in shown]


def open_page(rt, identity: StaffIdentity, page: str):  # type: ignore[no-untyped-def]
    at = signed_in(rt, identity).run()
    assert not at.exception, at.exception
    return at.switch_page(page).run()


# --- the pages ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["viewer", "editor", "approver", "admin"])
def test_no_page_shows_anything_of_another_organisation(rt, world, role):
    """Defence: every page passes the selected organisation (console_ui.state.selected_org) to core, and core
    filters by it; the audit log hides platform rows (which name every organisation) from an organisation's staff.
    Each page alpha's person may open is drawn, every version of alpha's templates picked, and nothing of beta's
    is on the screen; they see no switcher (alpha is their only organisation)."""
    identity = world.staff[role]
    # alpha's own content, so each page has something to show (and the pages are shown to be alpha's).
    with rt.session() as db:
        save_draft(db, actor=world.ada, org_id=world.alpha, config=rt.config_for(world.alpha, Action.COUPON),
                   fields=TemplateVersionCreate(action="COUPON", channel="SMS", text="Alpha words {{ validation_code }}"))
    trial_generate(rt, actor=world.ada, org_id=world.alpha,
                   payload={"entityType": "MOBILE", "entityValue": ALPHA_PHONE, "action": "COUPON"})
    opened = []
    for page in PAGES:
        try:
            at = open_page(rt, identity, page)
        except ValueError as exc:  # not in this role's navigation
            assert "Could not find a navigation page" in str(exc)
            continue
        assert not at.exception, (page, at.exception)
        opened.append(page)
        assert not [s for s in at.sidebar.selectbox if s.label == "Organisation"], "a switcher for one organisation"
        assert leaked(at) == [], (page, leaked(at))
        if page == "pages/templates.py":
            at.selectbox(key="tpl_action").select("COUPON").run()
            assert "Alpha words" in screen(at)
            for label in at.selectbox(key="tpl_pick").options:
                at.selectbox(key="tpl_pick").select(label).run()
                assert leaked(at) == [], (label, leaked(at))
        if page == "pages/admin.py":
            assert [t.label for t in at.tabs] == ["Staff", "API clients"]  # no Organisations tab
            assert {"al", "ada"} <= set(frame_with(at, "username")["username"])
        if page == "pages/outbox.py":
            assert ALPHA_PHONE in screen(at)
        if page == "pages/config.py":
            assert at.number_input(key="cfg_code_length").value == 6  # alpha's, not beta's 8
    assert opened == {"viewer": ["pages/home.py", "pages/templates.py"],
                      "editor": ["pages/home.py", "pages/templates.py", "pages/test_send.py", "pages/outbox.py"],
                      "approver": ["pages/home.py", "pages/templates.py", "pages/test_send.py", "pages/outbox.py",
                                   "pages/audit.py"],
                      "admin": list(PAGES)}[role]


def test_a_forged_organisation_in_the_session_is_refused(rt, world):
    """Defence: console_ui.state.enter_org asks core (require) about the person's membership in the organisation
    their session names, on every run. alpha's admin with beta's id (or an id that does not exist) put into their
    session gets one message that says nothing about that organisation, none of its content, and is back in alpha
    on the next run."""
    admin = world.staff["admin"]
    seen = []
    for forged in (world.beta, 1, 999_999):
        for page in ("pages/templates.py", "pages/gateways.py", "pages/admin.py"):
            at = open_page(rt, admin, page)
            at.session_state[SESSION_KEY].org_id = forged
            at.run()
            assert not at.exception, at.exception
            assert leaked(at) == [] and "Default" not in screen(at)
            assert [t.value for t in at.title] == []  # no page ran
            seen.append(texts(at))
            at.run()
            assert at.session_state[SESSION_KEY].org_id == world.alpha
            assert leaked(at) == []
    assert set(seen) == {"You do not work in that organisation. Choose one of yours."}


# --- core called directly ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["editor", "approver", "admin"])
def test_core_refuses_every_operation_in_an_organisation_the_person_is_not_in(rt, world, role):
    """Defence: core.admin.staff.require(session, actor, permission, org_id) reads the role in org_id from
    staff_membership on every call. alpha's editor, approver or admin naming beta can read, change, approve,
    send, validate or export nothing of beta's, nor edit beta (by its id) or even alpha (a platform action);
    every refusal is PermissionDenied and nothing of beta's changes."""
    me = world.staff[role]
    b = world.beta
    config = rt.config_for(b, Action.COUPON)
    before = rows(rt, "SELECT id, status, is_active, reviewer FROM template_version ORDER BY id") + \
        rows(rt, "SELECT id, slug, name, brand, timezone, phone_region FROM organisation ORDER BY id") + \
        rows(rt, "SELECT name, enabled, endpoint, credentials_enc FROM gateway_config ORDER BY id") + \
        rows(rt, "SELECT id, revoked_at, token_ttl_seconds, end_user_ip_header FROM api_client ORDER BY id") + \
        rows(rt, "SELECT org_id, action, code_length FROM action_config ORDER BY org_id, action")
    form = GatewayForm("beta-hook", "SMS", "webhook_sms", {"endpoint": "http://127.0.0.1:9/x"}, editing="beta-hook")
    payload = {"entityType": "MOBILE", "entityValue": BETA_PHONE, "action": "COUPON"}
    attempts = {
        "save_draft": lambda db: save_draft(db, actor=me, org_id=b, config=config, fields=TemplateVersionCreate(
            action="COUPON", channel="SMS", text="x {{ validation_code }}")),
        "submit": lambda db: submit_for_review(db, actor=me, org_id=b, version_id=world.pending, config=config),
        "approve": lambda db: approve(db, actor=me, org_id=b, version_id=world.pending, config=config),
        "reject": lambda db: reject(db, actor=me, org_id=b, version_id=world.pending, reason="no"),
        "reactivate": lambda db: reactivate(db, actor=me, org_id=b, version_id=world.retired, reason="no"),
        "deactivate": lambda db: deactivate(db, actor=me, org_id=b, action=Action.COUPON, channel=Channel.SMS,
                                            reason="no"),
        "save_gateway": lambda db: save_gateway_form(db, rt.box, actor=me, org_id=b, form=form, reason="no"),
        "gateway_test": lambda db: send_gateway_test(rt, actor=me, org_id=b, gateway_name="beta-hook",
                                                     destination=BETA_PHONE),
        "config": lambda db: save_action_config(rt, actor=me, org_id=b, action=Action.COUPON, reason="no",
                                                update=ActionConfigUpdate(**{**config.to_update().model_dump(),
                                                                             "code_length": 4})),
        "new_client": lambda db: new_api_client(rt, actor=me, org_id=b, name="x", permissions="otp:write"),
        "revoke_client": lambda db: revoke_api_client(rt, actor=me, org_id=b, client_id=world.client.client.id),
        "token_ttl": lambda db: set_api_client_token_ttl(rt, actor=me, org_id=b, client_id=world.client.client.id,
                                                         seconds=600),
        "ip_header": lambda db: set_api_client_end_user_ip_header(rt, actor=me, org_id=b,
                                                                  client_id=world.client.client.id, header=None),
        "test_send": lambda db: trial_generate(rt, actor=me, org_id=b, payload=payload),
        "dry_run": lambda db: trial_dry_run(rt, actor=me, org_id=b, payload=payload),
        "validate": lambda db: trial_validate(rt, actor=me, org_id=b, payload={**payload, "code": "123456"}),
        "outbox": lambda db: outbox_messages(rt, actor=me, org_id=b),
        "create_staff": lambda db: create_staff(db, actor=me, org_id=b, staff_create=StaffCreate(
            username="mole", password="password-123", role="admin")),
        "set_role": lambda db: set_role(db, actor=me, staff_id=world.bob.id, role="viewer", org_id=b),
        "disable": lambda db: disable_staff(db, actor=me, staff_id=world.bob.id, org_id=b),
        "assign": lambda db: assign_staff(db, actor=me, staff_id=me.id, org_id=b, role="admin"),
        "all_staff": lambda db: all_staff(db, actor=me),
        "create_org": lambda db: create_organisation(db, actor=me, fields=OrganisationBase(slug="x", name="X")),
        # Editing an organisation is a platform action: beta's by a forged id, and alpha's own too.
        "update_org": lambda db: update_organisation(db, actor=me, org_id=b, fields=OrganisationUpdate(
            name="Owned", brand="Owned")),
        "update_own_org": lambda db: update_organisation(db, actor=me, org_id=world.alpha, fields=OrganisationUpdate(
            timezone="Asia/Tokyo")),
    }
    refused = []
    for name, attempt in attempts.items():
        with rt.session() as db:
            try:
                attempt(db)
            except PermissionDenied:
                refused.append(name)
    assert refused == list(attempts)
    after = rows(rt, "SELECT id, status, is_active, reviewer FROM template_version ORDER BY id") + \
        rows(rt, "SELECT id, slug, name, brand, timezone, phone_region FROM organisation ORDER BY id") + \
        rows(rt, "SELECT name, enabled, endpoint, credentials_enc FROM gateway_config ORDER BY id") + \
        rows(rt, "SELECT id, revoked_at, token_ttl_seconds, end_user_ip_header FROM api_client ORDER BY id") + \
        rows(rt, "SELECT org_id, action, code_length FROM action_config ORDER BY org_id, action")
    assert after == before
    assert rows(rt, "SELECT count(*) AS n FROM staff_membership WHERE staff_id = :s", s=me.id) == [{"n": 1}]
    assert rows(rt, "SELECT count(*) AS n FROM outbox_message") == [{"n": 1}]


def test_guessed_ids_of_another_organisation_answer_like_missing_ones(rt, world):
    """Defence: an id or name of another organisation's row, used in one's own organisation, is looked up within
    it. alpha's admin (allowed everything in alpha) naming beta's version, client and gateway in alpha gets the
    answer a missing one gets, and beta's rows stay as they were."""
    me, a = world.staff["admin"], world.alpha
    config = rt.config_for(a, Action.COUPON)
    for step in (lambda db: submit_for_review(db, actor=me, org_id=a, version_id=world.pending, config=config),
                 lambda db: approve(db, actor=me, org_id=a, version_id=world.pending, config=config),
                 lambda db: reject(db, actor=me, org_id=a, version_id=world.pending, reason="no"),
                 lambda db: reactivate(db, actor=me, org_id=a, version_id=world.retired, reason="no")):
        # The answer a missing id gets (re-activating answers a missing id and another's alike, with its rule).
        with rt.session() as db, pytest.raises(TemplateRefused,
                                               match="^(no such template version|only an approved version can"
                                                     " be re-activated)$"):
            step(db)
    with rt.session() as db:
        assert list_versions(db, org_id=a, action=Action.COUPON, channel=Channel.SMS) == []
        assert stored_form(db, rt.box, "beta-hook", org_id=a) is None
        with pytest.raises(GatewayRefused):  # editing beta's gateway "as alpha's": there is none of that name
            save_gateway_form(db, rt.box, actor=me, org_id=a, reason="x", form=GatewayForm(
                "beta-hook", "SMS", "webhook_sms", {"endpoint": "http://127.0.0.1:9/x"}, editing="beta-hook"))
        assert {s.username for s in list_staff(db, org_id=a)} == {"ada", "vic", "eve", "abe", "al"}
        with pytest.raises(InvalidStaff, match="no such"):
            set_role(db, actor=me, staff_id=world.bob.id, role="viewer", org_id=a)
        with pytest.raises(InvalidStaff, match="no such"):
            disable_staff(db, actor=me, staff_id=world.bob.id, org_id=a)
    with pytest.raises(ValueError, match="no gateway named"):
        send_gateway_test(rt, actor=me, org_id=a, gateway_name="beta-hook", destination=ALPHA_PHONE)
    client = world.client.client.id
    assert revoke_api_client(rt, actor=me, org_id=a, client_id=client) is False
    assert set_api_client_token_ttl(rt, actor=me, org_id=a, client_id=client, seconds=600) is False
    with pytest.raises(LookupError):
        set_api_client_end_user_ip_header(rt, actor=me, org_id=a, client_id=client, header="X-End-User-IP")
    assert outbox_messages(rt, actor=me, org_id=a) == []
    assert rows(rt, "SELECT status, is_active FROM template_version WHERE id = :v", v=world.pending) == \
        [{"status": "pending", "is_active": False}]
    assert rows(rt, "SELECT revoked_at, token_ttl_seconds, end_user_ip_header FROM api_client WHERE id = :c",
                c=client) == [{"revoked_at": None, "token_ttl_seconds": world.client.client.token_ttl_seconds,
                               "end_user_ip_header": None}]
    assert rt.auth.verify(world.client.key, world.client.secret) is not None


def test_an_organisations_admin_cannot_touch_a_platform_admin_or_anothers_account(rt, world):
    """Defence: core.admin.staff._check_platform_target and disable_staff's membership rule. Someone who works
    in alpha and beta is only taken out of alpha by alpha's admin (beta keeps them); the platform admin, shown in
    every organisation's staff, cannot be demoted or disabled by an organisation's admin."""
    al = world.staff["admin"]
    with rt.session() as db:
        assign_staff(db, actor=world.ada, staff_id=world.bob.id, org_id=world.alpha, role="editor")
    with rt.session() as db:
        assert disable_staff(db, actor=al, staff_id=world.bob.id, org_id=world.alpha) == "removed"
    assert rows(rt, "SELECT s.disabled_at, m.org_id, m.role FROM staff s JOIN staff_membership m "
                    "ON m.staff_id = s.id WHERE s.id = :s", s=world.bob.id) == \
        [{"disabled_at": None, "org_id": world.beta, "role": "editor"}]
    for step in (lambda db: set_role(db, actor=al, staff_id=world.ada.id, role="viewer", org_id=world.alpha),
                 lambda db: disable_staff(db, actor=al, staff_id=world.ada.id, org_id=world.alpha)):
        with rt.session() as db, pytest.raises(InvalidStaff, match="only a platform admin"):
            step(db)
    assert rows(rt, "SELECT platform_admin, disabled_at FROM staff WHERE id = :s", s=world.ada.id) == \
        [{"platform_admin": True, "disabled_at": None}]


# --- the switcher ---------------------------------------------------------------------------------------------------

def test_the_switcher_lists_only_ones_organisations_and_each_shows_only_its_own(rt, world):
    """Defence: the switcher offers organisations_of(person), switching forgets every page's state, and the pages
    show the selected organisation's rows: a person in alpha (editor) and beta (viewer) sees those two, beta's
    templates only in beta with beta's role, alpha's only in alpha, and nothing typed in alpha is kept in beta.
    (Under AppTest the frame, and so the sidebar, runs on a session's first run only; the browser walk in
    tests/test_browser_orgs.py switches from every page.)"""
    editor = world.staff["editor"]
    with rt.session() as db:
        assign_staff(db, actor=world.ada, staff_id=editor.id, org_id=world.beta, role="viewer")
    with rt.session() as db:
        save_draft(db, actor=world.ada, org_id=world.alpha, config=rt.config_for(world.alpha, Action.COUPON),
                   fields=TemplateVersionCreate(action="COUPON", channel="SMS", text="Alpha words {{ validation_code }}"))
    at = signed_in(rt, editor).run()
    [switcher] = [s for s in at.sidebar.selectbox if s.label == "Organisation"]
    assert switcher.options == ["Alpha Shop", "Beta Bank"] and switcher.value == world.alpha
    assert "(editor)" in "".join(c.value for c in at.sidebar.caption)
    at.session_state["tpl_text_COUPON_SMS"] = "typed in alpha {{ validation_code }}"  # a form of alpha's
    at.sidebar.selectbox(key="org_switch").select(world.beta).run()
    assert not at.exception
    assert at.session_state[SESSION_KEY].org_id == world.beta
    assert "tpl_text_COUPON_SMS" not in at.session_state
    assert "(viewer)" in "".join(c.value for c in at.sidebar.caption)
    at.switch_page("pages/templates.py").run()
    at.selectbox(key="tpl_action").select("COUPON").run()
    shown = screen(at)
    assert "Sekrit wording" in shown and "Alpha words" not in shown
    assert "read only for your role" in shown  # a viewer in beta
    at.switch_page("pages/test_send.py").run()  # an editor in alpha, not in beta
    assert texts(at) == "Your role does not allow this page."
    back = signed_in(rt, editor).run()
    back.sidebar.selectbox(key="org_switch").select(world.alpha).run()
    back.switch_page("pages/templates.py").run()
    back.selectbox(key="tpl_action").select("COUPON").run()
    assert "Alpha words" in screen(back) and "Sekrit" not in screen(back)


def test_a_platform_admin_switches_to_every_organisation_and_manages_them(rt, world):
    """Defence: the admin page's Organisations tab is for platform admins (can("orgs.manage")) and core checks
    it again; a platform admin sees every organisation in the switcher, makes one, and assigns staff to it (both
    audited as platform actions)."""
    at = signed_in(rt, world.ada).run()
    [switcher] = [s for s in at.sidebar.selectbox if s.label == "Organisation"]
    assert switcher.options == ["Default", "Alpha Shop", "Beta Bank"]
    at.switch_page("pages/admin.py").run()
    assert [t.label for t in at.tabs] == ["Staff", "API clients", "Organisations"]
    at.text_input(key="org_slug").input("gamma")
    at.text_input(key="org_name").input("Gamma Games")
    at.text_input(key="org_timezone").input("Europe/Berlin")
    at.button(key="org_add").click().run()
    assert "Added the organisation Gamma Games (gamma)." in texts(at)
    gamma = rows(rt, "SELECT id FROM organisation WHERE slug = 'gamma'")[0]["id"]
    at.selectbox(key="assign_who").select("vic").run()
    at.selectbox(key="assign_org").select(gamma).run()
    at.selectbox(key=f"assign_role_{world.staff['viewer'].id}_{gamma}").select("approver").run()
    at.button(key="assign_save").click().run()
    assert "vic: approver in Gamma Games (gamma)." in texts(at)
    assert rows(rt, "SELECT org_id, role FROM staff_membership WHERE staff_id = :s ORDER BY org_id",
                s=world.staff["viewer"].id) == [{"org_id": world.alpha, "role": "viewer"},
                                                 {"org_id": gamma, "role": "approver"}]
    assert [(r["org_id"], r["action"]) for r in rows(
        rt, "SELECT org_id, action FROM audit_log WHERE action IN ('org.create', 'staff.assign') ORDER BY id")][-2:] \
        == [(None, "org.create"), (None, "staff.assign")]
    # vic now has two organisations: the switcher appears for them, with exactly those.
    vic = signed_in(rt, world.staff["viewer"]).run()
    [switcher] = [s for s in vic.sidebar.selectbox if s.label == "Organisation"]
    assert switcher.options == ["Alpha Shop", "Gamma Games"]
