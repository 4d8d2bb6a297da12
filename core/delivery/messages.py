"""From a request to messages: which template wins for each channel (and why), and rendering it."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from core import errors as E
from core.delivery.active_templates import ActiveTemplates
from core.delivery.gateways import OutgoingMessage
from core.delivery.templates import builtin_for, render
from core.enums import Action, Channel
from core.errors import OtpError, Problem


class BodyTemplates(Protocol):
    """The templates a generate request may carry in its body (core.issuing.requests.GenerateRequest has them)."""
    sms_template: str | None
    email_subject: str | None
    email_body: str | None
    whatsapp_template_name: str | None
    whatsapp_language: str | None
    zalo_template_id: str | None


@dataclass(frozen=True)
class ResolvedTemplate:
    """The template one channel will use, where it came from, and why it won."""
    channel: Channel
    origin: str  # request, approved, builtin
    reason: str
    text: str | None = None
    subject: str | None = None
    body: str | None = None
    is_html: bool = False
    whatsapp_name: str | None = None
    whatsapp_language: str | None = None
    zalo_template_id: str | None = None
    version_id: int | None = None


def resolve_template(channel: Channel, action: Action, active: ActiveTemplates,
                     request: BodyTemplates | None = None) -> ResolvedTemplate:
    """The three-level order: the request body's template, else the approved default, else the built-in one.

    WhatsApp and Zalo have no built-in provider template, so a missing name is an error (607, 621).
    """
    approved = active.get((action, channel))
    version = approved["id"] if approved else None
    if channel is Channel.WHATSAPP:
        if request and request.whatsapp_template_name:
            return ResolvedTemplate(channel, "request", "whatsappTemplateName in the request",
                                    whatsapp_name=request.whatsapp_template_name,
                                    whatsapp_language=request.whatsapp_language
                                    or (approved or {}).get("whatsapp_language") or "en")
        if approved and approved.get("whatsapp_name"):
            return ResolvedTemplate(channel, "approved", f"approved version {version} is active for {action.value}",
                                    whatsapp_name=approved["whatsapp_name"],
                                    whatsapp_language=approved.get("whatsapp_language") or "en", version_id=version)
        raise OtpError.single(E.WHATSAPP_TEMPLATE_MISSING, "whatsappTemplateName is required for the WHATSAPP channel "
                              f"(no approved WhatsApp template for {action.value})")
    if channel is Channel.ZALO:
        if request and request.zalo_template_id:
            return ResolvedTemplate(channel, "request", "zaloTemplateIdentifier in the request",
                                    zalo_template_id=request.zalo_template_id)
        if approved and approved.get("zalo_template_id"):
            return ResolvedTemplate(channel, "approved", f"approved version {version} is active for {action.value}",
                                    zalo_template_id=approved["zalo_template_id"], version_id=version)
        raise OtpError.single(E.ZALO_TEMPLATE_MISSING, "zaloTemplateIdentifier cannot be empty for the ZALO channel "
                              f"(no approved Zalo template for {action.value})")
    if channel is Channel.SMS and request and request.sms_template is not None:
        return ResolvedTemplate(channel, "request", "template in the request", text=request.sms_template)
    if channel is Channel.EMAIL and request and request.email_body is not None:
        return ResolvedTemplate(channel, "request", "emailTemplate in the request",
                                subject=request.email_subject or str(builtin_for(channel)["subject"]),
                                body=request.email_body)
    if approved and (approved.get("body") if channel is Channel.EMAIL else approved.get("text")):
        return ResolvedTemplate(channel, "approved", f"approved version {version} is active for {action.value}",
                                text=approved.get("text"), subject=approved.get("subject"), body=approved.get("body"),
                                is_html=bool(approved.get("is_html")), version_id=version)
    builtin = builtin_for(channel)
    return ResolvedTemplate(channel, "builtin", f"no template in the request and no approved version for {action.value}",
                            text=builtin.get("text"), subject=builtin.get("subject"),  # type: ignore[arg-type]
                            body=builtin.get("body"))  # type: ignore[arg-type]


def in_force(channel: Channel, action: Action, active: ActiveTemplates) -> ResolvedTemplate | None:
    """What a request without its own template gets: the approved version, else the built-in one (None for
    WhatsApp and Zalo, which have no built-in template). The editor starts from it and diffs compare with it."""
    try:
        return resolve_template(channel, action, active)
    except OtpError:
        return None


def resolve_all(channels: Iterable[Channel], action: Action, active: ActiveTemplates,
                request: BodyTemplates | None) -> dict[Channel, ResolvedTemplate]:
    """One resolved template per channel, reporting every channel's problem together."""
    resolved: dict[Channel, ResolvedTemplate] = {}
    problems: list[Problem] = []
    for channel in dict.fromkeys(channels):
        try:
            resolved[channel] = resolve_template(channel, action, active, request)
        except OtpError as exc:
            problems.extend(exc.problems)
    if problems:
        raise OtpError(problems, 400)
    return resolved


def render_message(template: ResolvedTemplate, *, delivery_id: int, destination: str, code: str,
                   variables: dict[str, object], org_id: int) -> OutgoingMessage:
    """The message for one channel of an organisation; raises RenderError when a template cannot be rendered."""
    if template.channel is Channel.EMAIL:
        subject = render(template.subject or "", variables, kind="subject", require_placeholder=False)
        body = render(template.body or "", variables, html=template.is_html, kind="body")
        return OutgoingMessage(delivery_id, template.channel, destination, subject=subject, body=body,
                               is_html=template.is_html, code=code, org_id=org_id)
    if template.channel in (Channel.WHATSAPP, Channel.ZALO):
        return OutgoingMessage(delivery_id, template.channel, destination,
                               whatsapp_template_name=template.whatsapp_name,
                               whatsapp_language=template.whatsapp_language,
                               zalo_template_id=template.zalo_template_id, code=code, org_id=org_id)
    text = render(template.text or "", variables, kind="text")
    return OutgoingMessage(delivery_id, template.channel, destination, text=text, code=code, org_id=org_id)
