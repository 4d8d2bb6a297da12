"""The template workflow in core: drafts, checks, four eyes, rollback, diffs, and the engine's cache."""
from __future__ import annotations

import pytest

from core.admin.staff import PermissionDenied
from core.admin.template_versions import (TemplateRefused, approve, check_version, diff_versions, list_versions,
                                          reactivate, reject, save_draft, submit_for_review)
from core.db.models import TemplateVersionCreate
from core.enums import Action, Channel
from core.runtime import Runtime, run
from core.services.generation import generate
from tests.conftest import make_settings, outbox

INJECTIONS = [
    "{{ ''.__class__.__mro__ }} {{ validation_code }}",
    "{{ validation_code|attr('format') }}",
    "{{ range(10**9)|list }} {{ validation_code }}",
    "{% for a in range(99) %}{% for b in range(99) %}{{ a }}{% endfor %}{% endfor %}{{ validation_code }}",
    "{{ 'x'*10**9 }} {{ validation_code }}",
]


def sms(text: str) -> TemplateVersionCreate:
    return TemplateVersionCreate(action="COUPON", channel="SMS", text=text)


def draft(rt, who, text):
    with rt.session() as db:
        return save_draft(db, actor=who, fields=sms(text), config=rt.config_for(1, Action.COUPON), org_id=1)


def step(rt, fn, who, version_id, **kwargs):
    with rt.session() as db:
        return fn(db, actor=who, org_id=1, version_id=version_id, **kwargs)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_payloads_are_refused_at_save_time(rt, team, payload):
    with pytest.raises(TemplateRefused) as refused:
        draft(rt, team["editor"], payload)
    assert all("not allowed" in reason for reason in refused.value.reasons)
    with rt.session() as db:
        assert list_versions(db, action=Action.COUPON, channel=Channel.SMS, org_id=1) == []


def test_a_draft_may_lack_its_placeholder_but_cannot_be_submitted(rt, team):
    saved = draft(rt, team["editor"], "no code here")
    assert saved.status == "draft" and saved.version == 1
    with pytest.raises(TemplateRefused) as refused:
        step(rt, submit_for_review, team["editor"], saved.id, config=rt.config_for(1, Action.COUPON))
    assert any("exactly once" in r for r in refused.value.reasons)


def test_four_eyes_and_single_transitions(rt, team):
    config = rt.config_for(1, Action.COUPON)
    saved = draft(rt, team["approver"], "Hi {{ validation_code }}")
    step(rt, submit_for_review, team["approver"], saved.id, config=config)
    with pytest.raises(TemplateRefused, match="author"):
        step(rt, approve, team["approver"], saved.id, config=config)
    with pytest.raises(PermissionDenied):
        step(rt, approve, team["editor"], saved.id, config=config)
    done = step(rt, approve, team["admin"], saved.id, config=config)
    assert done.status == "approved" and done.is_active and done.reviewer == "ada"
    with pytest.raises(TemplateRefused, match="only a pending version"):
        step(rt, approve, team["admin"], saved.id, config=config)
    with pytest.raises(TemplateRefused, match="only a pending version"):
        step(rt, reject, team["admin"], saved.id, reason="late")


def test_rollback_diff_and_the_engine_cache(db_url, tmp_path, clock, team):
    # A runtime that trusts its cache for a minute: it sees a change at once only when told.
    rt = Runtime(make_settings(db_url, tmp_path, cache_seconds=60), clock=clock)
    try:
        config = rt.config_for(1, Action.COUPON)
        first = draft(rt, team["editor"], "One {{ validation_code }}")
        step(rt, submit_for_review, team["editor"], first.id, config=config)
        run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919955882233", "action": "COUPON"}, org_id=1))
        step(rt, approve, team["approver"], first.id, config=config)
        run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919955882234", "action": "COUPON"}, org_id=1))
        assert outbox(rt)[-1]["body"].startswith("Hi user.")  # cached: the change is not seen yet
        rt.configuration_changed()
        run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919955882235", "action": "COUPON"}, org_id=1))
        assert outbox(rt)[-1]["body"].startswith("One ")

        second = draft(rt, team["editor"], "Two {{ validation_code }}\nsecond line")
        step(rt, submit_for_review, team["editor"], second.id, config=config)
        step(rt, approve, team["approver"], second.id, config=config)
        with rt.session() as db:
            versions = list_versions(db, action=Action.COUPON, channel=Channel.SMS, org_id=1)
        assert [(v.version, v.is_active) for v in versions] == [(2, True), (1, False)]
        assert diff_versions(versions[1], versions[0]).splitlines()[2:] == [
            "@@ -1 +1,2 @@", "-text: One {{ validation_code }}", "+text: Two {{ validation_code }}",
            "+text: second line"]

        step(rt, reactivate, team["approver"], first.id, reason="rollback")
        rt.configuration_changed()
        run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919955882236", "action": "COUPON"}, org_id=1))
        assert outbox(rt)[-1]["body"].startswith("One ")
        with rt.session() as db:
            versions = list_versions(db, action=Action.COUPON, channel=Channel.SMS, org_id=1)
        # Versions are immutable: the texts are what they were when written.
        assert [(v.version, v.is_active, v.text.split()[0]) for v in versions] == [(2, False, "Two"), (1, True, "One")]
    finally:
        rt.db.dispose()


def test_checks_per_channel(rt):
    config = rt.config_for(1, Action.COUPON)
    email = check_version(TemplateVersionCreate(action="COUPON", channel="EMAIL", subject="Code for {{ action }}",
                                                body="<p>{{ validation_code }}</p>", is_html=True), config)
    assert email.ok and email.preview_subject == "Code for COUPON" and email.preview_text == "<p>123456</p>"
    whatsapp = check_version(TemplateVersionCreate(action="COUPON", channel="WHATSAPP"), config)
    assert whatsapp.issues == ["the WhatsApp template name is required"]
    zalo = check_version(TemplateVersionCreate(action="COUPON", channel="ZALO", zalo_template_id="z1"), config)
    assert zalo.ok
    long_sms = check_version(sms("ç {{ validation_code }} " + "x" * 80), config)
    assert long_sms.ok and long_sms.sms.encoding == "UCS-2" and long_sms.sms.segments == 2
    assert any("segments" in h for h in long_sms.hints)


def test_a_template_using_an_empty_brand_says_so(rt):
    """With OTP_BRAND unset, "Your {{ brand }} code" previews as "Your  code": the check says why; with a brand,
    or without the variable, it says nothing."""
    config = rt.config_for(1, Action.COUPON)
    branded = sms("Your {{ brand }} code is {{ validation_code }}")
    empty = check_version(branded, config, brand="")
    assert empty.ok and empty.preview_text == "Your  code is 123456"
    assert any("OTP_BRAND is not set" in h for h in empty.hints)
    assert not any("OTP_BRAND" in h for h in check_version(branded, config, brand="Acme").hints)
    assert not any("OTP_BRAND" in h for h in check_version(sms("Code {{ validation_code }}"), config).hints)
    email = check_version(TemplateVersionCreate(action="COUPON", channel="EMAIL", subject="{{ brand }} code",
                                                body="{{ validation_code }}"), config)
    assert any("OTP_BRAND is not set" in h for h in email.hints)
