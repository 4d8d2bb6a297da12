"""Console actions that need a permission check before they reach the engine or the configuration."""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlmodel import Session, select

from core import audit, engine
from core.clients import (NewClientCredentials, check_end_user_ip_header, create_client, revoke_client,
                          set_end_user_ip_header, set_token_ttl)
from core.entities import InvalidEntity, mask, normalise_email, normalise_phone
from core.enums import Action, Channel
from core.errors import OtpError
from core.gateway_configs import build_gateway, load_gateway_rows
from core.gateways import OutgoingMessage, SendResult, is_local
from core.models import ActionConfigUpdate, ApiClient, ApiClientCreate, OutboxMessage
from core.otpconfig import ConfigRefused, action_config_problems, update_action_config
from core.runtime import Runtime
from core.staff import StaffIdentity, require


def save_action_config(rt: Runtime, *, actor: StaffIdentity, action: Action, update: ActionConfigUpdate,
                       reason: str, form_problems: dict[str, list[str]] | None = None) -> None:
    """Save all of an action's configuration or nothing: raises ConfigRefused with every problem by field.

    A person's change needs a reason (it goes to the audit log); form_problems are the ones found while
    reading the form (e.g. a limit that is not a number), reported together with the rest.
    """
    with rt.session() as session:
        require(session, actor, "config.edit")
        problems = {name: list(found) for name, found in (form_problems or {}).items()}
        for name, found in action_config_problems(update, service_daily_limit=rt.settings.daily_limit,
                                                  gateways=load_gateway_rows(session.connection())).items():
            problems.setdefault(name, []).extend(found)
        if not reason.strip():
            problems["reason"] = ["say why you make this change: it is kept in the audit log"]
        if problems:
            raise ConfigRefused(problems)
        update_action_config(session, action=action, update=update, actor=actor.username,
                             service_daily_limit=rt.settings.daily_limit, reason=reason.strip())
    rt.configuration_changed()


def _test_target(payload: dict) -> str:
    """The test's user as the audit log keeps it: masked, like every recipient outside the outbox."""
    return f"user:{payload.get('entityType')}:{mask(str(payload.get('entityValue', '')).strip())}"


def _request_detail(payload: dict) -> dict:
    """What was asked, never a code: action, channels with masked destinations, which body templates came along."""
    return {"action": payload.get("action"),
            "channels": [f"{c.get('type')} {mask(str(c.get('value', '')))}" for c in payload.get("channels") or []
                         if isinstance(c, dict)],
            "body_templates": sorted(k for k in ("template", "emailTemplate", "whatsappTemplateName",
                                                 "zaloTemplateIdentifier") if payload.get(k))}


def _record_test(rt: Runtime, actor: StaffIdentity, action: str, payload: dict, detail: dict) -> None:
    with rt.session() as session:
        audit.record(session, actor=actor.username, action=action, target=_test_target(payload), detail=detail)
        session.commit()


def test_generate(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.GenerateResult:
    """A test send through exactly the engine call the API makes; staff sends reach real people in production,
    so each one is audited (after the send, in its own transaction: none is held open across a gateway call)."""
    with rt.session() as session:
        require(session, actor, "test.send")
    detail = _request_detail(payload)
    try:
        result = engine.run(engine.generate(rt, payload))
    except OtpError as exc:
        _record_test(rt, actor, "test.send", payload, {**detail, "outcome": f"refused {exc.http_status}",
                                                        "problems": [p.code for p in exc.problems]})
        raise
    _record_test(rt, actor, "test.send", payload, {
        **detail, "outcome": "re-sent" if result.resent else "new code", "created_id": result.created_id,
        "deliveries": [f"{d.channel} {mask(d.destination)} via {d.gateway}: {d.status}" for d in result.deliveries],
        "warnings": [w.code for w in result.warnings]})
    return result


def test_dry_run(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.DryRun:
    """Renders and checks without sending or counting: nothing reaches anyone, so nothing is audited."""
    with rt.session() as session:
        require(session, actor, "test.send")
    return engine.dry_run(rt, payload)


def test_validate(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.ValidateResult:
    """A staff validation uses up or burns a customer's code like the API's, so it is audited; the code tried
    is never recorded."""
    with rt.session() as session:
        require(session, actor, "test.send")
    detail = {"action": payload.get("action")}
    try:
        outcome = engine.run(engine.validate(rt, payload))
    except OtpError as exc:
        _record_test(rt, actor, "test.validate", payload, {**detail, "outcome": f"refused {exc.http_status}",
                                                            "problems": [p.code for p in exc.problems]})
        raise
    _record_test(rt, actor, "test.validate", payload, {**detail, "outcome": "valid" if outcome.valid else "invalid",
                                                        "warnings": [w.code for w in outcome.warnings]})
    return outcome


def outbox_messages(rt: Runtime, *, actor: StaffIdentity, recipient: str = "", delivery_ids: list[int] | None = None,
                    limit: int = 200) -> list[OutboxMessage]:
    """The development outbox, newest first; refused outside development, since it holds readable codes."""
    if not rt.settings.is_development:
        raise PermissionError("the outbox exists only in development mode")
    with rt.session() as session:
        require(session, actor, "outbox.view")
        query = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)  # type: ignore[union-attr]
        if recipient.strip():
            query = query.where(OutboxMessage.recipient.contains(recipient.strip().lower()))  # type: ignore[attr-defined]
        if delivery_ids is not None:
            query = query.where(OutboxMessage.delivery_id.in_(delivery_ids))  # type: ignore[union-attr]
        return list(session.exec(query))


def new_api_client(rt: Runtime, *, actor: StaffIdentity, name: str, permissions: str,
                   end_user_ip_header: str | None = None) -> NewClientCredentials:
    name = name.strip()
    if not name or len(name) > 120:
        raise ValueError("the client name must be 1 to 120 characters")
    header = check_end_user_ip_header(end_user_ip_header)
    with rt.session() as session:
        require(session, actor, "clients.manage")
        audit.record(session, actor=actor.username, action="client.create", target=f"client:{name}",
                     detail={"permissions": permissions, "end_user_ip_header": header})
        return create_client(session, client_create=ApiClientCreate(name=name, permissions=permissions,
                                                                    end_user_ip_header=header))


def _client_target(session: Session, client_id: int) -> str:
    """An API client as the audit log names it: by name, as its creation was recorded, so one filter or search
    finds every entry of a client (the id goes in the detail)."""
    row = session.get(ApiClient, client_id)
    return f"client:{row.name if row else client_id}"


def set_api_client_end_user_ip_header(rt: Runtime, *, actor: StaffIdentity, client_id: int,
                                      header: str | None) -> str | None:
    """Where a client's end users' addresses come from (core.net.end_user_address); ValueError for a bad name."""
    value = check_end_user_ip_header(header)
    with rt.session() as session:
        require(session, actor, "clients.manage")
        audit.record(session, actor=actor.username, action="client.end_user_ip_header",
                     target=_client_target(session, client_id), detail={"id": client_id, "end_user_ip_header": value})
        stored = set_end_user_ip_header(session, client_id=client_id, header=value)
    rt.auth.forget_all()
    return stored


def revoke_api_client(rt: Runtime, *, actor: StaffIdentity, client_id: int) -> bool:
    with rt.session() as session:
        require(session, actor, "clients.manage")
        row = session.get(ApiClient, client_id)
        audit.record(session, actor=actor.username, action="client.revoke", target=_client_target(session, client_id),
                     detail={"id": client_id, "key": row.key if row else None})
        revoked = revoke_client(session, client_id=client_id)
    rt.auth.forget_all()
    return revoked


def set_api_client_token_ttl(rt: Runtime, *, actor: StaffIdentity, client_id: int, seconds: int) -> bool:
    """Set a client's OAuth token life; this process issues tokens with it at once, others within
    OTP_AUTH_CACHE_SECONDS (they keep the client's verified identity that long)."""
    with rt.session() as session:
        require(session, actor, "clients.manage")
        # Recorded first: set_token_ttl's commit makes both durable; a refusal commits neither.
        audit.record(session, actor=actor.username, action="client.token_ttl", target=_client_target(session, client_id),
                     detail={"id": client_id, "token_ttl_seconds": seconds})
        changed = set_token_ttl(session, client_id=client_id, seconds=seconds)
    rt.auth.forget_all()
    return changed


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


def send_gateway_test(rt: Runtime, *, actor: StaffIdentity, gateway_name: str, destination: str,
                      template: str = "") -> GatewayTestResult:
    """Send a real test message through one stored gateway (enabled or not) and report the provider's answer.

    It carries no OTP code: a fixed text for SMS, voice and email; WhatsApp and Zalo can only send an
    approved provider template (template: its name or id), with "TEST" as the parameter. Audited; raises
    ValueError for an unknown gateway or a bad destination.
    """
    with rt.session() as session:
        require(session, actor, "config.edit")
    row = rt.all_gateway_rows().get(gateway_name)
    if row is None:
        raise ValueError(f"there is no gateway named {gateway_name!r}")
    try:
        to = normalise_email(destination) if row.channel is Channel.EMAIL else \
            normalise_phone(destination, region=rt.settings.default_region, strict=False)
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
                              zalo_template_id=template.strip() or None, code="TEST")
    if is_local(gateway):
        with rt.db.begin() as conn:
            gateway.send_within(conn, message)  # type: ignore[union-attr]
        result = SendResult("delivered")
    else:
        result = engine.run(gateway.send(message))
    with rt.session() as session:
        audit.record(session, actor=actor.username, action="gateway.test", target=f"gateway:{gateway_name}",
                     detail={"to": mask(to), "status": result.status, "http_status": result.http_status,
                             "provider_message_id": result.provider_message_id, "error": result.error})
        session.commit()
    return GatewayTestResult(gateway_name, mask(to), result.status, result.http_status, result.provider_message_id,
                             result.error, result.attempts, result.latency_ms)
