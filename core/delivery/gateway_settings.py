"""Configured gateways as the hot path reads them: rows with sealed credentials, built into senders.

Saving a gateway (checks, audit, credential hints) is core.admin.gateways; choosing one per action is
core.runtime.Runtime.choose_gateway."""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, select

from core.crypto import SecretBox
from core.db.models import GatewayConfig
from core.delivery.gateways import Gateway
from core.delivery.gateways.email import SmtpEmail
from core.delivery.gateways.outbox import OutboxGateway
from core.delivery.gateways.sms import TwilioSms, WebhookSms
from core.delivery.gateways.voice import TwilioVoice, WebhookVoice
from core.delivery.gateways.whatsapp import MetaWhatsApp
from core.delivery.gateways.zalo import ZaloZns
from core.enums import Channel

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
    enabled: bool = True


def load_gateway_rows(conn: Connection) -> dict[str, GatewayRow]:
    """Every configured gateway by name, disabled ones too (flagged): choosing and checking must see them."""
    rows = conn.execute(select(GatewayConfig.__table__)).mappings()
    found = {}
    for r in rows:
        channel = Channel.parse(r["channel"])
        if channel is not None:
            found[r["name"]] = GatewayRow(r["id"], r["name"], channel, r["provider"], r["endpoint"], r["sender"],
                                          json.loads(r["options"] or "{}"), r["credentials_enc"], r["is_default"],
                                          r["updated_at"], bool(r["enabled"]))
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
