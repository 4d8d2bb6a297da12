"""Template versions: drafting, checks, four-eyes approval, rollback and diffs.

Versions are immutable: an edit is a new draft. Status moves draft → pending → approved or rejected, each
move a conditional UPDATE so two staff acting at once cannot both win. The engine uses only the active
approved version of an action and channel (core.delivery.active_templates reads it).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from core.admin import audit
from core.admin.staff import StaffIdentity, require
from core.clock import utcnow
from core.db.models import TemplateVersion, TemplateVersionCreate, TemplateVersionPublic
from core.delivery.templates import (SmsStats, TemplateCheck, TemplateIssue, check_template, render, sample_variables,
                                     sms_stats)
from core.enums import Action, Channel
from core.issuing.action_config import OtpConfig

CONTENT_FIELDS = ("text", "subject", "body", "is_html", "whatsapp_name", "whatsapp_language", "zalo_template_id")


class TemplateRefused(ValueError):
    """A workflow step that is not allowed, with every reason."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class TemplateReport:
    """Checks and a preview for one template version: the console shows it, submitting enforces it."""
    issues: list[str] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)  # refused even when saving a draft
    hints: list[str] = field(default_factory=list)
    placeholder_count: int = 0
    sms: SmsStats | None = None
    preview_subject: str | None = None
    preview_text: str | None = None

    @property
    def ok(self) -> bool:
        return not self.issues


def _prefixed(label: str, issues: list[TemplateIssue]) -> list[str]:
    return [f"{label}: {issue}" for issue in issues]


def _brand_hint(report: TemplateReport, brand: str, *checks: TemplateCheck) -> None:
    """A template that says {{ brand }} while OTP_BRAND is empty renders nothing there ("Your  code"): the
    preview shows it, this says why, before customers read it."""
    if not brand.strip() and any("brand" in check.variables for check in checks):
        report.hints.append("{{ brand }} is empty: OTP_BRAND is not set, so messages have nothing where it goes")


def check_version(fields: TemplateVersionCreate, config: OtpConfig, *, brand: str = "") -> TemplateReport:
    """Every problem with a template version for its channel, and a preview rendered with a sample code.

    The preview is made even when there are problems (from whatever renders), so editing never blocks.
    """
    report = TemplateReport()
    channel = Channel.parse(fields.channel)
    if channel is None:
        report.issues.append(f"unknown channel {fields.channel!r}")
        return report
    variables = sample_variables(action=config.action.value, code_length=config.code_length,
                                 validity_minutes=config.validity_minutes, brand=brand)
    if channel is Channel.WHATSAPP:
        if not (fields.whatsapp_name or "").strip():
            report.issues.append("the WhatsApp template name is required")
        if not (fields.whatsapp_language or "").strip():
            report.hints.append("no language given: 'en' will be used")
        report.preview_text = (f"WhatsApp template {fields.whatsapp_name or '?'} "
                               f"({fields.whatsapp_language or 'en'}) with code {variables['validation_code']}")
        return report
    if channel is Channel.ZALO:
        if not (fields.zalo_template_id or "").strip():
            report.issues.append("the Zalo template id is required")
        report.preview_text = f"Zalo ZNS template {fields.zalo_template_id or '?'} with otp {variables['validation_code']}"
        return report
    if channel is Channel.EMAIL:
        subject = check_template(fields.subject or "", kind="subject", require_placeholder=False)
        body = check_template(fields.body or "", kind="body")
        report.issues += _prefixed("subject", subject.errors) + _prefixed("body", body.errors)
        report.unsafe += _prefixed("subject", subject.unsafe) + _prefixed("body", body.unsafe)
        report.placeholder_count = body.placeholder_count
        report.preview_subject = _best_effort(fields.subject or "", variables, kind="subject", html=False)
        report.preview_text = _best_effort(fields.body or "", variables, kind="body", html=fields.is_html)
        _brand_hint(report, brand, subject, body)
        return report
    text = check_template(fields.text or "", kind="text")
    report.issues += _prefixed("text", text.errors)
    report.unsafe += _prefixed("text", text.unsafe)
    report.placeholder_count = text.placeholder_count
    report.preview_text = _best_effort(fields.text or "", variables, kind="text", html=False)
    _brand_hint(report, brand, text)
    if channel is Channel.SMS and report.preview_text is not None:
        report.sms = sms_stats(report.preview_text)
        if report.sms.segments > 1:
            report.hints.append(f"the message takes {report.sms.segments} SMS segments ({report.sms.encoding})")
        if report.sms.encoding == "UCS-2":
            report.hints.append("a character outside GSM-7 makes the whole message UCS-2 (70 characters a segment)")
    return report


def _best_effort(source: str, variables: dict, *, kind: str, html: bool) -> str | None:
    """The rendered preview when the template renders, else the source itself so the editor still sees it."""
    if not source:
        return None
    try:
        return render(source, variables, html=html, kind=kind, require_placeholder=kind != "subject")
    except ValueError:
        return source


def list_versions(session: Session, *, org_id: int, action: Action, channel: Channel) -> list[TemplateVersionPublic]:
    """The organisation's versions of one action and channel, newest first."""
    rows = session.exec(select(TemplateVersion).where(TemplateVersion.org_id == org_id,
                                                      TemplateVersion.action == action.value,
                                                      TemplateVersion.channel == channel.value)
                        .order_by(TemplateVersion.version.desc()))  # type: ignore[union-attr]
    return [TemplateVersionPublic.model_validate(r) for r in rows]


def save_draft(session: Session, *, actor: StaffIdentity, org_id: int, fields: TemplateVersionCreate,
               config: OtpConfig) -> TemplateVersionPublic:
    """A new immutable draft version in organisation org_id; a draft may lack its placeholder, but never holds an
    unsafe construct."""
    require(session, actor, "templates.edit", org_id)
    if Action.parse(fields.action) is None or Channel.parse(fields.channel) is None:
        raise TemplateRefused(["unknown action or channel"])
    unsafe = check_version(fields, config).unsafe
    if unsafe:
        raise TemplateRefused(["not saved, the template uses what is not allowed: " + issue for issue in unsafe])
    for attempt in range(3):
        number = session.exec(select(func.max(TemplateVersion.version)).where(
            TemplateVersion.org_id == org_id, TemplateVersion.action == fields.action,
            TemplateVersion.channel == fields.channel)).one() or 0
        row = TemplateVersion.model_validate(fields, update={"org_id": org_id, "version": number + 1,
                                                             "status": "draft", "author": actor.username,
                                                             "created_at": utcnow()})
        session.add(row)
        audit.record(session, org_id=org_id, actor=actor.username, action="template.draft",
                     target=f"template:{fields.action}/{fields.channel}/v{number + 1}")
        try:
            session.commit()
        except IntegrityError:  # another editor took this version number at the same moment
            session.rollback()
            continue
        session.refresh(row)
        return TemplateVersionPublic.model_validate(row)
    raise TemplateRefused(["could not save the draft: too many editors at once, try again"])


def _existing(session: Session, version_id: int, org_id: int) -> TemplateVersion:
    """The organisation's version with this id: another organisation's answers exactly as a missing one."""
    row = session.get(TemplateVersion, version_id)
    if row is None or row.org_id != org_id:
        raise TemplateRefused(["no such template version"])
    return row


def _check_passes(row: TemplateVersion, config: OtpConfig, brand: str) -> None:
    report = check_version(TemplateVersionCreate.model_validate(row), config, brand=brand)
    if not report.ok:
        raise TemplateRefused(report.issues)


def _move(session: Session, row: TemplateVersion, *, from_status: str, values: dict, verb: str) -> None:
    """One conditional UPDATE: of two staff acting at once, only the first moves the version."""
    result = session.execute(update(TemplateVersion).where(TemplateVersion.id == row.id,
                                                           TemplateVersion.status == from_status).values(**values))
    if result.rowcount != 1:
        session.rollback()
        raise TemplateRefused([f"only a {'draft' if from_status == 'draft' else from_status + ' version'} can be "
                               f"{verb}; this version is {row.status}"])


def _target(row: TemplateVersion) -> str:
    return f"template:{row.action}/{row.channel}/v{row.version}"


def _finish(session: Session, row: TemplateVersion, *, actor: StaffIdentity, step: str,
            reason: str | None = None) -> TemplateVersionPublic:
    """Audit the step in the same transaction, commit, and answer with the version as it now is."""
    audit.record(session, org_id=row.org_id, actor=actor.username, action=f"template.{step}", target=_target(row),
                 reason=reason)
    session.commit()
    session.refresh(row)
    return TemplateVersionPublic.model_validate(row)


def submit_for_review(session: Session, *, actor: StaffIdentity, org_id: int, version_id: int, config: OtpConfig,
                      brand: str = "") -> TemplateVersionPublic:
    """Draft → pending, only when every check passes."""
    require(session, actor, "templates.edit", org_id)
    row = _existing(session, version_id, org_id)
    _check_passes(row, config, brand)
    _move(session, row, from_status="draft", values={"status": "pending"}, verb="submitted")
    return _finish(session, row, actor=actor, step="submit")


def _activate(session: Session, row: TemplateVersion) -> None:
    session.execute(update(TemplateVersion).where(
        TemplateVersion.org_id == row.org_id, TemplateVersion.action == row.action,
        TemplateVersion.channel == row.channel, TemplateVersion.id != row.id,
        TemplateVersion.is_active.is_(True)).values(is_active=False))
    session.execute(update(TemplateVersion).where(TemplateVersion.id == row.id).values(is_active=True))


def approve(session: Session, *, actor: StaffIdentity, org_id: int, version_id: int, config: OtpConfig,
            brand: str = "") -> TemplateVersionPublic:
    """Pending → approved and active, by someone other than the author (four eyes)."""
    require(session, actor, "templates.approve", org_id)
    row = _existing(session, version_id, org_id)
    if row.author == actor.username:
        raise TemplateRefused(["the author of a version cannot approve it: a second person must"])
    _check_passes(row, config, brand)
    _move(session, row, from_status="pending", verb="approved",
          values={"status": "approved", "reviewer": actor.username, "reviewed_at": utcnow()})
    _activate(session, row)
    return _finish(session, row, actor=actor, step="approve")


def reject(session: Session, *, actor: StaffIdentity, org_id: int, version_id: int,
           reason: str) -> TemplateVersionPublic:
    require(session, actor, "templates.approve", org_id)
    reason = reason.strip()
    if not reason:
        raise TemplateRefused(["a rejection needs a reason"])
    row = _existing(session, version_id, org_id)
    _move(session, row, from_status="pending", verb="rejected",
          values={"status": "rejected", "reviewer": actor.username, "reviewed_at": utcnow(), "reason": reason[:1000]})
    return _finish(session, row, actor=actor, step="reject", reason=reason)


def reactivate(session: Session, *, actor: StaffIdentity, org_id: int, version_id: int,
               reason: str) -> TemplateVersionPublic:
    """Roll back: make an older approved version the active one again."""
    require(session, actor, "templates.approve", org_id)
    row = session.get(TemplateVersion, version_id)
    if row is None or row.org_id != org_id or row.status != "approved":
        raise TemplateRefused(["only an approved version can be re-activated"])
    if row.is_active:
        raise TemplateRefused(["this version is already active"])
    _activate(session, row)
    return _finish(session, row, actor=actor, step="reactivate", reason=reason.strip() or None)


def deactivate(session: Session, *, actor: StaffIdentity, org_id: int, action: Action, channel: Channel,
               reason: str) -> bool:
    """Stop using any approved version of the organisation's: the built-in template applies again."""
    require(session, actor, "templates.approve", org_id)
    changed = session.execute(update(TemplateVersion).where(
        TemplateVersion.org_id == org_id, TemplateVersion.action == action.value, TemplateVersion.channel == channel.value,
        TemplateVersion.is_active.is_(True)).values(is_active=False)).rowcount
    if changed:
        audit.record(session, org_id=org_id, actor=actor.username, action="template.deactivate",
                     target=f"template:{action.value}/{channel.value}", reason=reason.strip() or None)
    session.commit()
    return bool(changed)


def content_of(version: object) -> dict[str, object]:
    """The content fields of a version, a resolved template or anything with those attributes."""
    return {name: getattr(version, name, None) for name in CONTENT_FIELDS}


def diff_fields(older: dict[str, object], newer: dict[str, object], older_label: str, newer_label: str) -> str:
    """A unified diff of every content field of two templates."""
    def lines(content: dict[str, object]) -> list[str]:
        out = []
        for name in CONTENT_FIELDS:
            value = content.get(name)
            if value not in (None, "", False):
                out += [f"{name}: {line}" for line in str(value).splitlines() or [""]]
        return out
    return "\n".join(difflib.unified_diff(lines(older), lines(newer), older_label, newer_label, lineterm=""))


def diff_versions(older: TemplateVersionPublic, newer: TemplateVersionPublic) -> str:
    """A unified diff of every content field of two versions."""
    return diff_fields(content_of(older), content_of(newer), f"v{older.version}", f"v{newer.version}")
