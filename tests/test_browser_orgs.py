"""Organisations in a real browser: a person who works in two organisations signs in to `streamlit run
console.py` in headless Chromium, switches between them in the sidebar and sees only the selected one's
templates; a person of one organisation sees no switcher. Screenshots go to tests/artifacts/."""
from __future__ import annotations

import os
import shutil

import pytest

from core.admin.organisations import create_organisation
from core.admin.staff import StaffIdentity, assign_staff, create_first_admin, create_staff
from core.admin.template_versions import approve, save_draft, submit_for_review
from core.db.models import OrganisationBase, StaffCreate, TemplateVersionCreate
from core.enums import Action
from core.runtime import Runtime
from tests.browser import console_server, go, headless_chromium, require_chromium, settled, shot, sign_in, wait_text
from tests.conftest import TEST_KEY, make_settings

pytestmark = pytest.mark.browser
require_chromium()


def _approved(rt: Runtime, org_id: int, editor: StaffIdentity, approver: StaffIdentity, wording: str) -> None:
    config = rt.config_for(org_id, Action.COUPON)
    with rt.session() as db:
        draft = save_draft(db, actor=editor, org_id=org_id, config=config, fields=TemplateVersionCreate(
            action="COUPON", channel="SMS", text=wording))
        submit_for_review(db, actor=editor, org_id=org_id, version_id=draft.id, config=config)
    with rt.session() as db:
        approve(db, actor=approver, org_id=org_id, version_id=draft.id, config=config)


@pytest.fixture
def two_orgs_console(tmp_path, sqlite_template):
    """The console on a database with organisations Alpha Shop and Beta Bank, each with an approved COUPON SMS
    template of its own wording; "tess" works in both (editor in Alpha, viewer in Beta), "al" in Alpha only."""
    target = tmp_path / "otp.db"
    shutil.copy(sqlite_template, target)
    url = f"sqlite:///{target}"
    rt = Runtime(make_settings(url, tmp_path))
    with rt.session() as db:
        made = create_first_admin(db, username="ada", password="correct horse 1")
    ada = StaffIdentity(made.id, made.username, made.role)
    orgs = {}
    for slug, name in (("alpha", "Alpha Shop"), ("beta", "Beta Bank")):
        with rt.session() as db:
            orgs[slug] = create_organisation(db, actor=ada, fields=OrganisationBase(slug=slug, name=name)).id
    rt.configuration_changed()
    with rt.session() as db:
        tess, _al, ed = (create_staff(db, actor=ada, org_id=orgs["alpha"], staff_create=StaffCreate(
            username=username, password="password-123", role="editor")) for username in ("tess", "al", "ed"))
    with rt.session() as db:
        assign_staff(db, actor=ada, staff_id=tess.id, org_id=orgs["beta"], role="viewer")
    with rt.session() as db:
        assign_staff(db, actor=ada, staff_id=ed.id, org_id=orgs["beta"], role="editor")
    author = StaffIdentity(ed.id, ed.username, ed.role)  # four eyes: ed writes, ada approves
    _approved(rt, orgs["alpha"], author, ada, "Alpha wording {{ validation_code }}")
    _approved(rt, orgs["beta"], author, ada, "Beta wording {{ validation_code }}")
    rt.db.dispose()
    env = {**os.environ, "OTP_DATABASE_URL": url, "OTP_SECRET_KEY": TEST_KEY,
           "OTP_LOGIN_FAILURE_DELAY_SECONDS": "0.1"}
    env.pop("OTP_SECRET_KEY_FILE", None)
    with console_server(env) as console_url:
        yield console_url


def templates_text(page, expect: str) -> str:  # type: ignore[no-untyped-def]
    """The Templates page with COUPON picked, as the person reads it once the template expected is drawn (the
    heading comes before the template in force on a slow machine)."""
    go(page, "Templates", "Templates")
    page.get_by_label("Action").first.click()
    page.get_by_role("option", name="COUPON", exact=True).click()
    wait_text(page, "Which template COUPON uses")
    wait_text(page, expect)
    settled(page)
    return page.inner_text("[data-testid='stMain']")


def switch_to(page, name: str, role: str) -> None:  # type: ignore[no-untyped-def]
    """Pick the organisation in the sidebar's switcher; wait until the sidebar shows the role held there."""
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_label("Organisation").click()
    page.get_by_role("option", name=name, exact=True).click()
    sidebar.get_by_text(f"({role})").wait_for(timeout=30_000)
    settled(page)


def test_switching_organisations_shows_only_the_selected_ones_templates(two_orgs_console):
    with headless_chromium() as chromium:
        page = chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        sign_in(page, two_orgs_console, "tess", "password-123")
        sidebar = page.locator("[data-testid='stSidebar']")
        assert sidebar.get_by_label("Organisation").count() == 1
        assert "(editor)" in sidebar.inner_text()
        shown = templates_text(page, "Alpha wording")
        assert "Alpha wording" in shown and "Beta wording" not in shown
        shot(page, "30-orgs-alpha-templates")

        switch_to(page, "Beta Bank", "viewer")
        shown = templates_text(page, "Beta wording")
        assert "Beta wording" in shown and "Alpha wording" not in shown
        assert "read only for your role" in shown  # a viewer in Beta
        assert "(viewer)" in sidebar.inner_text()
        assert sidebar.get_by_role("link", name="Test send").count() == 0  # not an editor in Beta
        shot(page, "31-orgs-beta-templates")

        switch_to(page, "Alpha Shop", "editor")
        shown = templates_text(page, "Alpha wording")
        assert "Alpha wording" in shown and "Beta wording" not in shown
        assert sidebar.get_by_role("link", name="Test send").count() == 1

        # Someone of Alpha alone sees no switcher, and Alpha's templates.
        other = chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        sign_in(other, two_orgs_console, "al", "password-123")
        assert other.locator("[data-testid='stSidebar']").get_by_label("Organisation").count() == 0
        shown = templates_text(other, "Alpha wording")
        assert "Alpha wording" in shown and "Beta" not in shown
