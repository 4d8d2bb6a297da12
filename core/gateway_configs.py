"""Configured gateways: stored per channel with encrypted credentials, built into senders, chosen per action."""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlmodel import Session
from sqlmodel import select as model_select

from core import audit
from core.clock import utcnow
from core.crypto import SecretBox
from core.enums import Channel
from core.gateways import Gateway
from core.gateways.email import SECURITY_MODES, SmtpEmail
from core.gateways.outbox import OutboxGateway
from core.gateways.sms import TwilioSms, WebhookSms
from core.gateways.voice import TwilioVoice, WebhookVoice
from core.gateways.whatsapp import MetaWhatsApp
from core.gateways.zalo import ZaloZns
from core.models import GatewayConfig, GatewayConfigBase, GatewayConfigPublic
from core.staff import StaffIdentity, require

PROVIDERS: dict[str, tuple[type, Channel]] = {
    "smtp": (SmtpEmail, Channel.EMAIL),
    "twilio_sms": (TwilioSms, Channel.SMS),
    "webhook_sms": (WebhookSms, Channel.SMS),
    "twilio_voice": (TwilioVoice, Channel.PHONE),
    "webhook_voice": (WebhookVoice, Channel.PHONE),
    "meta_whatsapp": (MetaWhatsApp, Channel.WHATSAPP),
    "zalo_zns": (ZaloZns, Channel.ZALO),
}
# The outbox serves any channel (development only).
OUTBOX = "outbox"


class GatewayConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GatewayRow:
    """A gateway_config row as the hot path needs it, credentials still sealed."""
    id: int
    name: str
    channel: Channel
    provider: str
    endpoint: str
    sender: str
    options: dict
    credentials_enc: bytes | None
    is_default: bool
    updated_at: object = None


def load_gateway_rows(conn: Connection) -> dict[str, GatewayRow]:
    rows = conn.execute(select(GatewayConfig.__table__).where(GatewayConfig.enabled.is_(True))).mappings()
    found = {}
    for r in rows:
        channel = Channel.parse(r["channel"])
        if channel is not None:
            found[r["name"]] = GatewayRow(r["id"], r["name"], channel, r["provider"], r["endpoint"], r["sender"],
                                          json.loads(r["options"] or "{}"), r["credentials_enc"], r["is_default"],
                                          r["updated_at"])
    return found


def build_gateway(row: GatewayRow, box: SecretBox, *, production: bool) -> Gateway | None:
    """The sender for a row; None (the channel then fails with 7001) for an outbox in production."""
    if row.provider == OUTBOX:
        if production:
            return None
        gateway = OutboxGateway()
        gateway.name = row.name
        return gateway
    cls, _channel = PROVIDERS[row.provider]
    credentials = json.loads(box.open(row.credentials_enc, f"gateway:{row.name}")) if row.credentials_enc else {}
    return cls(name=row.name, endpoint=row.endpoint, sender=row.sender, options=row.options, credentials=credentials)


def parse_assignments(text: str) -> dict[Channel, str]:
    """'SMS=twilio-main,EMAIL=smtp' → {SMS: 'twilio-main', EMAIL: 'smtp'}."""
    chosen = {}
    for part in text.split(","):
        channel_name, _, gateway = part.partition("=")
        channel = Channel.parse(channel_name)
        if channel is not None and gateway.strip():
            chosen[channel] = gateway.strip()
    return chosen


def _hint(credentials: dict) -> str:
    shown = []
    for key, value in sorted(credentials.items()):
        value = str(value)
        shown.append(f"{key}: {value[:2]}…{value[-2:]}" if len(value) > 8 else f"{key}: …")
    return ", ".join(shown)


def check_gateway(config: GatewayConfigBase) -> list[str]:
    problems = []
    if not config.name.strip() or len(config.name) > 60:
        problems.append("the name must be 1 to 60 characters")
    channel = Channel.parse(config.channel)
    if channel is None:
        problems.append(f"unknown channel {config.channel!r}")
    if config.provider != OUTBOX:
        if config.provider not in PROVIDERS:
            problems.append(f"unknown provider {config.provider!r} (known: {', '.join(sorted([*PROVIDERS, OUTBOX]))})")
        elif channel is not None and PROVIDERS[config.provider][1] is not channel:
            problems.append(f"{config.provider} sends {PROVIDERS[config.provider][1].value}, not {channel.value}")
    try:
        options = json.loads(config.options or "{}")
        if not isinstance(options, dict):
            problems.append("options must be a JSON object")
        elif config.provider == "smtp" and options.get("security", "starttls") not in SECURITY_MODES:
            problems.append(f"SMTP security must be one of {', '.join(SECURITY_MODES)}")
    except json.JSONDecodeError as exc:
        problems.append(f"options are not valid JSON: {exc.msg} at line {exc.lineno}")
    if config.provider in ("smtp",) and not config.endpoint:
        problems.append("an SMTP gateway needs host:port as its endpoint")
    return problems


def _audited(row: GatewayConfig | None, box: SecretBox) -> dict | None:
    """A gateway as its audit entry shows it: every setting, credentials (and webhook header values, which
    may carry a key) only as hints."""
    if row is None:
        return None
    options = json.loads(row.options or "{}")
    if isinstance(options, dict) and isinstance(options.get("headers"), dict):
        options = {**options, "headers": _hint(options["headers"])}
    credentials = json.loads(box.open(row.credentials_enc, f"gateway:{row.name}")) if row.credentials_enc else {}
    return {"channel": row.channel, "provider": row.provider, "endpoint": row.endpoint, "sender": row.sender,
            "options": options, "default": row.is_default, "enabled": row.enabled,
            "credentials": _hint(credentials) or None}


def save_gateway(session: Session, box: SecretBox, *, actor: StaffIdentity, config: GatewayConfigBase,
                 credentials: dict | None, reason: str | None = None) -> GatewayConfigPublic:
    """Create or update a gateway by name; credentials None keeps the stored ones (they are never shown back).
    The audit entry holds the settings before and after, credentials as hints, and the reason given."""
    require(session, actor, "config.edit")
    problems = check_gateway(config)
    if problems:
        raise GatewayConfigError("; ".join(problems))
    row = session.exec(model_select(GatewayConfig).where(GatewayConfig.name == config.name.strip())).first()
    before = _audited(row, box)
    if row is None:
        row = GatewayConfig(**config.model_dump())
    else:
        for key, value in config.model_dump().items():
            setattr(row, key, value)
    if credentials is not None:
        row.credentials_enc = box.seal(json.dumps(credentials).encode(), f"gateway:{row.name}") if credentials else None
    if row.is_default:  # one default per channel
        for other in session.exec(model_select(GatewayConfig).where(GatewayConfig.channel == row.channel,
                                                                    GatewayConfig.is_default.is_(True))):
            if other.name != row.name:
                other.is_default = False
                session.add(other)
    row.updated_at = utcnow()
    session.add(row)
    after = _audited(row, box)
    audit.record(session, actor=actor.username, action="gateway.save", target=f"gateway:{row.name}",
                 detail={"before": before, "after": after, "credentials_changed": credentials is not None},
                 reason=(reason or "").strip() or None)
    session.commit()
    session.refresh(row)
    return public(row, box)


def public(row: GatewayConfig, box: SecretBox) -> GatewayConfigPublic:
    hint = ""
    if row.credentials_enc:
        hint = _hint(json.loads(box.open(row.credentials_enc, f"gateway:{row.name}")))
    return GatewayConfigPublic.model_validate(row, update={"credentials_hint": hint})


def list_gateways(session: Session, box: SecretBox) -> list[GatewayConfigPublic]:
    return [public(r, box) for r in session.exec(model_select(GatewayConfig).order_by(GatewayConfig.channel,
                                                                                      GatewayConfig.name))]
