"""The development outbox: 'sends' by keeping the rendered message for the console to show."""
from __future__ import annotations

from sqlalchemy import Engine, insert

from core.clock import utcnow
from core.gateways import OutgoingMessage, SendResult
from core.models import OutboxMessage

_INSERT = insert(OutboxMessage.__table__)


class OutboxGateway:
    """Refused in production by the settings; the only place a readable code is stored."""

    name = "outbox"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine  # kept for callers that read the outbox through the gateway's database

    async def send(self, message: OutgoingMessage) -> SendResult:
        if message.channel.value == "WHATSAPP":
            body = (f"[WhatsApp template {message.whatsapp_template_name} ({message.whatsapp_language or 'en'})] "
                    f"code parameter: {message.code}")
        elif message.channel.value == "ZALO":
            body = f"[Zalo ZNS template {message.zalo_template_id}] template_data.otp: {message.code}"
        else:
            body = message.body if message.channel.value == "EMAIL" else message.text
        row = {"created_at": utcnow(), "delivery_id": message.delivery_id, "channel": message.channel.value,
               "recipient": message.destination, "subject": message.subject, "body": body or "",
               "is_html": message.is_html}
        # Kept in the transaction that records the delivery: the message and its status commit together.
        return SendResult(status="delivered", provider_message_id=f"outbox-{message.delivery_id}",
                          record=lambda conn: conn.execute(_INSERT, row))
