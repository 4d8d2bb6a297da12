"""Editing an organisation (issue 14): a platform admin changes its name, brand, time zone or phone region, checked as
a new one is, audited as a platform action, and used by the engine from this process's next request on; nobody else
may, and bad input changes nothing. Runs on SQLite, and on PostgreSQL when OTP_TEST_DATABASE_URL is set.

Every test names the defence it proves; each was checked to fail with that defence removed.
"""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api import create_app
from console_ui.state import ACCESS_KEY
from core.admin.clients import create_client
from core.admin.organisations import OrganisationRefused, UnknownOrganisation, create_organisation, update_organisation
from core.admin.staff import PermissionDenied, StaffIdentity, assign_staff, create_first_admin, create_staff
from core.db.models import ApiClientCreate, OrganisationBase, OrganisationUpdate, StaffCreate
from core.runtime import Runtime
from core.services.admin_actions import save_organisation
from core.services.trials import trial_generate
from tests.conftest import make_settings
from tests.console_app import frame_with, on_page, texts

PHONE = "+919955882233"


def person(made) -> StaffIdentity:  # type: ignore[no-untyped-def]
    return StaffIdentity(made.id, made.username, made.role)


def rows(rt: Runtime, sql: str, **params) -> list[dict]:
    with rt.db.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def stored(rt: Runtime) -> list[dict]:
    return rows(rt, "SELECT id, slug, name, brand, timezone, phone_region FROM organisation ORDER BY id")


def edits(rt: Runtime) -> list[dict]:
    return rows(rt, "SELECT org_id, actor, action, target, detail, reason FROM audit_log WHERE action = 'org.update' "
                    "ORDER BY id")


@pytest.fixture
def cached(db_url, tmp_path, clock):
    """A runtime that keeps organisations an hour (OTP_CACHE_SECONDS=3600), as a busy API process would: only
    the edit's own invalidation can make this process see it at once."""
    rt = Runtime(make_settings(db_url, tmp_path, cache_seconds=3600.0, daily_limit=1), clock=clock)
    yield rt
    rt.db.dispose()


@pytest.fixture
def people(cached):
    """ada (platform admin); organisations alpha and beta; al (alpha's admin) and bea (beta's admin)."""
    rt = cached
    with rt.session() as db:
        ada = person(create_first_admin(db, username="ada", password="correct horse 1"))
    with rt.session() as db:
        alpha = create_organisation(db, actor=ada, fields=OrganisationBase(slug="alpha", name="Alpha Shop")).id
    with rt.session() as db:
        beta = create_organisation(db, actor=ada, fields=OrganisationBase(slug="beta", name="Beta Bank")).id
    with rt.session() as db:
        al = person(create_staff(db, actor=ada, org_id=alpha, staff_create=StaffCreate(
            username="al", password="password-123", role="admin")))
        bea = person(create_staff(db, actor=ada, org_id=beta, staff_create=StaffCreate(
            username="bea", password="password-123", role="admin")))
    rt.configuration_changed()
    return {"ada": ada, "al": al, "bea": bea, "alpha": alpha, "beta": beta}


def test_a_new_brand_is_in_the_next_test_send_of_this_process(cached, people):
    """Defence: save_organisation clears the runtime's cache of organisations (Runtime.configuration_changed).
    With organisations cached for an hour, the test send right after the edit renders alpha's new brand."""
    rt, ada, alpha = cached, people["ada"], people["alpha"]
    template = "{{ brand }} code {{ validation_code }}"

    def sent(phone: str) -> str:
        trial_generate(rt, actor=ada, org_id=alpha, payload={"entityType": "MOBILE", "entityValue": phone,
                                                             "action": "COUPON", "template": template,
                                                             "channels": [{"type": "SMS", "value": phone}]})
        return rows(rt, "SELECT body FROM outbox_message WHERE org_id = :o ORDER BY id DESC", o=alpha)[0]["body"]

    assert sent(PHONE).startswith(" code ")  # OTP_BRAND is empty in the tests
    edited = save_organisation(rt, actor=ada, org_id=alpha, fields=OrganisationUpdate(brand="Alpha Rewards"))
    assert edited.changes == {"brand": (None, "Alpha Rewards")}
    assert sent("+919811100022").startswith("Alpha Rewards code ")
    assert rt.org(people["beta"]).brand == ""  # beta keeps the service's


def test_a_new_time_zone_moves_the_day_boundary_of_the_daily_limit(cached, people):
    """Defence: the organisation's time zone comes from its row through the runtime's cache, cleared by the edit.
    OTP_DAILY_LIMIT=1; the clock is 10:00 UTC. In UTC alpha's day ends at midnight UTC; moved to Asia/Tokyo
    (19:00 there) it ends at 15:00 UTC, so at 15:30 UTC alpha's customer may generate again, the default
    organisation's (UTC) may not."""
    rt, alpha = cached, people["alpha"]
    with rt.session() as db:
        a = create_client(db, client_create=ApiClientCreate(name="a"), org_id=alpha)
    with rt.session() as db:
        d = create_client(db, client_create=ApiClientCreate(name="d"), org_id=1)
    body = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}
    with TestClient(create_app(rt), raise_server_exceptions=False) as api:
        def generate(creds) -> int:  # type: ignore[no-untyped-def]
            return api.post("/v2/otp/generate", json=body,
                            headers={"Authorization": f"Bearer {creds.key}.{creds.secret}"}).status_code

        assert generate(a) == 200 and generate(d) == 200
        assert rt.org(alpha).timezone == "UTC"  # read (and cached) before the edit
        save_organisation(rt, actor=people["ada"], org_id=alpha, fields=OrganisationUpdate(timezone="Asia/Tokyo"))
        assert generate(a) == 429  # 19:00 in Tokyo: still the same day there
        rt.clock.advance(hours=5, minutes=30)  # 15:30 UTC: 00:30 tomorrow in Tokyo
        assert generate(a) == 200
        assert generate(d) == 429


def test_an_edit_is_audited_as_a_platform_action_with_before_and_after(cached, people):
    """Defence: update_organisation records "org.update" (org_id NULL, as creation) with each changed field's
    before and after, and the reason; an edit that changes nothing records nothing. The slug never changes."""
    rt, ada, alpha = cached, people["ada"], people["alpha"]
    edited = save_organisation(rt, actor=ada, org_id=alpha, reason="rebrand", fields=OrganisationUpdate(
        name=" Alpha Stores ", brand="Alpha", timezone="Asia/Ho_Chi_Minh", phone_region="vn"))
    assert edited.organisation.slug == "alpha" and edited.organisation.phone_region == "VN"
    [entry] = edits(rt)
    assert {k: v for k, v in entry.items() if k != "detail"} == {
        "org_id": None, "actor": "ada", "action": "org.update", "target": "org:alpha", "reason": "rebrand"}
    assert json.loads(entry["detail"]) == {"name": {"from": "Alpha Shop", "to": "Alpha Stores"},
                                           "brand": {"from": None, "to": "Alpha"},
                                           "timezone": {"from": None, "to": "Asia/Ho_Chi_Minh"},
                                           "phone_region": {"from": None, "to": "VN"}}
    # Only what changed is recorded; the empty brand is the service's again.
    save_organisation(rt, actor=ada, org_id=alpha, fields=OrganisationUpdate(name="Alpha Stores", brand=""))
    assert json.loads(edits(rt)[-1]["detail"]) == {"brand": {"from": "Alpha", "to": None}}
    again = save_organisation(rt, actor=ada, org_id=alpha, fields=OrganisationUpdate(name="Alpha Stores"))
    assert again.changes == {} and len(edits(rt)) == 2
    # A slug smuggled into the fields is not a field of an edit.
    with rt.session() as db:
        update_organisation(db, actor=ada, org_id=alpha, fields=OrganisationUpdate.model_validate(
            {"slug": "omega", "name": "Omega"}))
    assert [o["slug"] for o in stored(rt)] == ["default", "alpha", "beta"]
    assert rt.org(alpha).name == "Omega"


@pytest.mark.parametrize("fields, field, message", [
    ({"timezone": "Mars/Olympus_Mons"}, "timezone", "unknown time zone"),
    ({"timezone": "../../etc/passwd"}, "timezone", "unknown time zone"),
    ({"phone_region": "XX"}, "phone_region", "unknown ISO region"),
    ({"phone_region": "VNM"}, "phone_region", "unknown ISO region"),
    ({"name": "   "}, "name", "1 to 120 printable characters"),
    ({"name": None}, "name", "1 to 120 printable characters"),
    ({"name": "x" * 121}, "name", "1 to 120 printable characters"),
    ({"name": "Alpha\r\nBcc: everyone@example.com"}, "name", "on one line"),
    ({"brand": "b" * 101}, "brand", "at most 100 characters"),
    ({"brand": "Alpha\r\nX-Injected: 1"}, "brand", "on one line"),
    ({"brand": "Alpha\u2028Two"}, "brand", "on one line"),
    ({"brand": "Alpha\x00"}, "brand", "on one line"),
])
def test_bad_input_is_refused_by_field_and_changes_nothing(cached, people, fields, field, message):
    """Defence: update_organisation checks the edited organisation with organisation_problems before writing:
    every bad field is refused with a message of its own, the row, the engine's view and the audit log stay."""
    rt, alpha = cached, people["alpha"]
    before, org_before = stored(rt), rt.org(alpha)
    good = {"name": "Alpha Renamed", "brand": "Alpha Brand"}  # valid changes in the same edit are not saved either
    with pytest.raises(OrganisationRefused) as refused:
        save_organisation(rt, actor=people["ada"], org_id=alpha, fields=OrganisationUpdate(**{**good, **fields}))
    assert list(refused.value.problems) == [field] and message in refused.value.problems[field][0]
    assert stored(rt) == before and edits(rt) == []
    rt.configuration_changed()
    assert rt.org(alpha) == org_before


def test_only_a_platform_admin_may_edit_an_organisation(cached, people):
    """Defence: update_organisation calls require(actor, "orgs.manage") before reading anything. alpha's admin
    (of alpha itself, of beta by a forged id, of an id that does not exist), beta's admin, a member of both
    organisations and a disabled platform admin are refused with PermissionDenied (not "no such organisation":
    nothing is learnt of which ids exist); nothing changes and nothing is recorded."""
    rt, ada, al, bea = cached, people["ada"], people["al"], people["bea"]
    alpha, beta = people["alpha"], people["beta"]
    with rt.session() as db:
        assign_staff(db, actor=ada, staff_id=bea.id, org_id=alpha, role="admin")  # bea: admin of both
    with rt.session() as db:
        old = person(create_staff(db, actor=ada, org_id=alpha, staff_create=StaffCreate(
            username="old", password="password-123", role="admin")))
        db.execute(text("UPDATE staff SET platform_admin = :t, disabled_at = created_at WHERE id = :s"),
                   {"t": True, "s": old.id})
        db.commit()
    before = stored(rt)
    attempts = [(al, alpha), (al, beta), (al, 1), (al, 999_999), (bea, alpha), (bea, beta), (old, alpha)]
    for actor, org_id in attempts:
        with pytest.raises(PermissionDenied):
            save_organisation(rt, actor=actor, org_id=org_id, fields=OrganisationUpdate(brand="Hijacked"))
    assert stored(rt) == before and edits(rt) == []
    # The platform admin may; an id that is none is then answered as such.
    with pytest.raises(UnknownOrganisation):
        save_organisation(rt, actor=ada, org_id=999_999, fields=OrganisationUpdate(brand="x"))
    assert save_organisation(rt, actor=ada, org_id=beta, fields=OrganisationUpdate(brand="Beta")).changes


# --- the console --------------------------------------------------------------------------------------------------

def column_of(at, key: str):  # type: ignore[no-untyped-def]
    """The column that holds the widget key (where the form shows that field's problems)."""
    [column] = [c for c in at.columns if any(w.key == key for w in c.text_input)]
    return column


def test_a_platform_admin_edits_an_organisation_on_the_admin_page(cached, people):
    """Defence: the Organisations tab's edit form is filled with what is stored for the organisation picked,
    saves through save_organisation, shows each refusal next to its field with what was typed kept and nothing
    saved, and after a save this console's runtime (organisations cached an hour) uses the new values."""
    rt, alpha, beta = cached, people["alpha"], people["beta"]
    at = on_page(rt, people["ada"], "pages/admin.py")
    assert not at.exception, at.exception
    at.selectbox(key="org_edit_pick").select(alpha).run()
    assert [at.text_input(key=k).value for k in ("org_edit_name", "org_edit_brand", "org_edit_timezone",
                                                  "org_edit_region")] == ["Alpha Shop", "", "", ""]
    at.text_input(key="org_edit_name").input("   ")
    at.text_input(key="org_edit_brand").input("Alpha")
    at.text_input(key="org_edit_timezone").input("Mars/Olympus")
    at.button(key="org_edit_save").click().run()
    assert not at.exception, at.exception
    assert "Not saved: the problems are shown next to their fields. Nothing was changed." in texts(at)
    assert [e.value for e in column_of(at, "org_edit_timezone").error] == [
        "unknown time zone 'Mars/Olympus' (e.g. Asia/Ho_Chi_Minh)"]
    assert [e.value for e in column_of(at, "org_edit_name").error] == [
        "the name must be 1 to 120 printable characters on one line"]
    assert list(column_of(at, "org_edit_brand").error) == []
    assert at.text_input(key="org_edit_timezone").value == "Mars/Olympus"  # as typed
    assert stored(rt)[1]["name"] == "Alpha Shop" and stored(rt)[1]["brand"] is None and edits(rt) == []
    at.text_input(key="org_edit_name").input("Alpha Stores")
    at.text_input(key="org_edit_timezone").input("Asia/Tokyo")
    at.text_input(key="org_edit_region").input("jp")
    at.button(key="org_edit_save").click().run()
    assert "Saved Alpha Stores (alpha): changed name, brand, time zone, phone region." in texts(at)
    assert at.text_input(key="org_edit_region").value == "JP"  # what is stored now
    assert "Alpha Stores" in frame_with(at, "slug")["name"].tolist()
    org = rt.org(alpha)
    assert (org.name, org.brand, org.timezone, org.region) == ("Alpha Stores", "Alpha", "Asia/Tokyo", "JP")
    at.selectbox(key="org_edit_pick").select(beta).run()
    assert at.text_input(key="org_edit_name").value == "Beta Bank"
    assert at.text_input(key="org_edit_timezone").value == ""


def test_an_organisations_admin_sees_no_edit_form_and_core_refuses_a_demoted_platform_admin(cached, people):
    """Defence: the form is drawn for platform admins only (can("orgs.manage")), and the save is checked again
    in core: a platform admin demoted (to admin of the default organisation) after the form was drawn gets
    "Not saved" and nothing changes."""
    rt, ada = cached, people["ada"]
    for admin in (people["al"], people["bea"]):
        at = on_page(rt, admin, "pages/admin.py")
        assert not at.exception, at.exception
        assert [t.label for t in at.tabs] == ["Staff", "API clients"]
        assert [w for w in at.selectbox if w.key == "org_edit_pick"] == []
        assert [w for w in at.text_input if (w.key or "").startswith("org_edit")] == []
    at = on_page(rt, ada, "pages/admin.py")
    at.text_input(key="org_edit_brand").input("Hijacked")
    with rt.db.begin() as conn:
        conn.execute(text("UPDATE staff SET platform_admin = :f WHERE id = :s"), {"f": False, "s": ada.id})
    before = stored(rt)
    # In a browser the frame settles the person's access on every run; under AppTest it ran on the first only.
    del at.session_state[ACCESS_KEY]
    at.button(key="org_edit_save").click().run()
    assert not at.exception, at.exception
    assert "Not saved: ada may not orgs manage." in texts(at)
    assert stored(rt) == before and edits(rt) == []
    assert [t.label for t in at.tabs] == ["Staff", "API clients"]
