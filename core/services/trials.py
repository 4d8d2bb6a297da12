"""Test sends from the console: a generate, dry run or validate through exactly the calls the API makes, a
gateway's test message, and the development outbox; each needs the test.send (or outbox.view) permission and
every send is audited without its code."""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlmodel import select

from core.admin import audit
from core.admin.staff import StaffIdentity, require
from core.db.models import OutboxMessage
from core.delivery.gateway_settings import build_gateway
from core.delivery.gateways import OutgoingMessage, SendResult, is_local
from core.enums import Channel
from core.errors import OtpError
from core.issuing.entities import InvalidEntity, mask, normalise_email, normalise_phone
from core.runtime import Runtime, run
from core.services.dry_run import DryRun, dry_run
from core.services.generation import GenerateResult, generate
from core.services.validation import ValidateResult, validate


def _trial_target(payload: dict) -> str:
    """The test's user as the audit log keeps it: masked, like every recipient outside the outbox."""
    return f"user:{payload.get('entityType')}:{mask(str(payload.get('entityValue', '')).strip())}"


def _request_detail(payload: dict) -> dict:
    """What was asked, never a code: action, channels with masked destinations, which body templates came along."""
    return {"action": payload.get("action"),
            "channels": [f"{c.get('type')} {mask(str(c.get('value', '')))}" for c in payload.get("channels") or []
                         if isinstance(c, dict)],
            "body_templates": sorted(k for k in ("template", "emailTemplate", "whatsappTemplateName",
                                                 "zaloTemplateIdentifier") if payload.get(k))}


def _record_trial(rt: Runtime, actor: StaffIdentity, org_id: int, action: str, payload: dict, detail: dict) -> None:
    with rt.session() as session:
        audit.record(session, org_id=org_id, actor=actor.username, action=action, target=_trial_target(payload), detail=detail)
        session.commit()


def _audited(rt: Runtime, actor: StaffIdentity, org_id: int, step: str, payload: dict, detail: dict,  # type: ignore[no-untyped-def]
             operation, outcome) -> object:
    """Run operation() (a generate or validate coroutine) for a signed-in person with the test.send permission, and
    audit it after it ends (in its own transaction: none is held open across a gateway call), refused or not;
    outcome(result) is what the audit row adds about a result."""
    with rt.session() as session:
        require(session, actor, "test.send", org_id)
    try:
        result = run(operation())
    except OtpError as exc:
        _record_trial(rt, actor, org_id, step, payload, {**detail, "outcome": f"refused {exc.http_status}",
                                                 "problems": [p.code for p in exc.problems]})
        raise
    _record_trial(rt, actor, org_id, step, payload, {**detail, **outcome(result)})
    return result


def trial_generate(rt: Runtime, *, actor: StaffIdentity, org_id: int, payload: dict) -> GenerateResult:
    """A test send in organisation org_id through exactly the engine call the API makes; staff sends reach real
    people in production, so each one is audited."""
    return _audited(rt, actor, org_id, "test.send", payload, _request_detail(payload),  # type: ignore[return-value]
                    lambda: generate(rt, payload, org_id=org_id),
                    lambda result: {
                        "outcome": "re-sent" if result.resent else "new code", "created_id": result.created_id,
                        "deliveries": [f"{d.channel} {mask(d.destination)} via {d.gateway}: {d.status}"
                                       for d in result.deliveries],
                        "warnings": [w.code for w in result.warnings]})


def trial_dry_run(rt: Runtime, *, actor: StaffIdentity, org_id: int, payload: dict) -> DryRun:
    """Renders and checks without sending or counting: nothing reaches anyone, so nothing is audited."""
    with rt.session() as session:
        require(session, actor, "test.send", org_id)
    return dry_run(rt, payload, org_id=org_id)


def trial_validate(rt: Runtime, *, actor: StaffIdentity, org_id: int, payload: dict) -> ValidateResult:
    """A staff validation uses up or burns a customer's code like the API's, so it is audited; the code tried
    is never recorded."""
    return _audited(rt, actor, org_id, "test.validate", payload,  # type: ignore[return-value]
                    {"action": payload.get("action")}, lambda: validate(rt, payload, org_id=org_id),
                    lambda outcome: {"outcome": "valid" if outcome.valid else "invalid",
                                     "warnings": [w.code for w in outcome.warnings]})


def outbox_messages(rt: Runtime, *, actor: StaffIdentity, org_id: int, recipient: str = "",
                    delivery_ids: list[int] | None = None, limit: int = 200) -> list[OutboxMessage]:
    """The organisation's development outbox, newest first; refused outside development, since it holds readable
    codes."""
    if not rt.settings.is_development:
        raise PermissionError("the outbox exists only in development mode")
    with rt.session() as session:
        require(session, actor, "outbox.view", org_id)
        query = select(OutboxMessage).where(OutboxMessage.org_id == org_id) \
            .order_by(OutboxMessage.id.desc()).limit(limit)  # type: ignore[union-attr]
        if recipient.strip():
            query = query.where(OutboxMessage.recipient.contains(recipient.strip().lower()))  # type: ignore[attr-defined]
        if delivery_ids is not None:
            query = query.where(OutboxMessage.delivery_id.in_(delivery_ids))  # type: ignore[union-attr]
        return list(session.exec(query))


TEST_TEXT = "Test message from the OTP console (gateway {name})."


@dataclass(frozen=True)
class GatewayTestResult:
    """The provider's answer to a console test message."""
    gateway: str
    destination: str
    status: str  # sent, delivered, failed
    http_status: int | None
    provider_message_id: str | None
    error: str | None
    attempts: int
    latency_ms: float | None


def send_gateway_test(rt: Runtime, *, actor: StaffIdentity, org_id: int, gateway_name: str, destination: str,
                      template: str = "") -> GatewayTestResult:
    """Send a real test message through one stored gateway (enabled or not) and report the provider's answer.

    It carries no OTP code: a fixed text for SMS, voice and email; WhatsApp and Zalo can only send an
    approved provider template (template: its name or id), with "TEST" as the parameter. Audited; raises
    ValueError for an unknown gateway or a bad destination.
    """
    with rt.session() as session:
        require(session, actor, "config.edit", org_id)
    row = rt.all_gateway_rows(org_id).get(gateway_name)
    if row is None:
        raise ValueError(f"there is no gateway named {gateway_name!r}")
    try:
        to = normalise_email(destination) if row.channel is Channel.EMAIL else \
            normalise_phone(destination, region=rt.org(org_id).region, strict=False)
    except InvalidEntity as exc:
        raise ValueError(f"destination: {exc}") from None
    if row.channel in (Channel.WHATSAPP, Channel.ZALO) and not template.strip():
        raise ValueError(f"a {row.channel.value} test needs the name of an approved provider template")
    gateway = build_gateway(row, rt.box, production=not rt.settings.is_development)
    if gateway is None:
        raise ValueError(f"{gateway_name} is an outbox gateway, refused in production")
    text = TEST_TEXT.format(name=gateway_name)
    # No delivery row: a negative id, different for every test, keeps idempotency keys apart from deliveries'.
    message = OutgoingMessage(-time.time_ns() // 1000, row.channel, to, text=text, subject=text, body=text,
                              whatsapp_template_name=template.strip() or None,
                              zalo_template_id=template.strip() or None, code="TEST", org_id=org_id)
    if is_local(gateway):
        with rt.db.begin() as conn:
            gateway.send_within(conn, message)  # type: ignore[union-attr]
        result = SendResult("delivered")
    else:
        result = run(gateway.send(message))
    with rt.session() as session:
        audit.record(session, org_id=org_id, actor=actor.username, action="gateway.test", target=f"gateway:{gateway_name}",
                     detail={"to": mask(to), "status": result.status, "http_status": result.http_status,
                             "provider_message_id": result.provider_message_id, "error": result.error})
        session.commit()
    return GatewayTestResult(gateway_name, mask(to), result.status, result.http_status, result.provider_message_id,
                             result.error, result.attempts, result.latency_ms)
