"""The gateway interface: a gateway only delivers; the engine decides what, when and to whom."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from sqlalchemy import Connection

from core.enums import Channel


@dataclass(frozen=True)
class OutgoingMessage:
    """One rendered message for one channel and destination.

    Every field that holds the code, the code itself or text rendered from a template (which may put the code
    anywhere, the subject included), is left out of the text form (repr, str, f-strings), so a message in a
    log line or an exception shows where it goes, never what it says.
    """
    delivery_id: int
    channel: Channel
    destination: str
    text: str | None = field(default=None, repr=False)  # SMS and voice
    subject: str | None = field(default=None, repr=False)
    body: str | None = field(default=None, repr=False)  # email
    is_html: bool = False
    whatsapp_template_name: str | None = None
    whatsapp_language: str | None = None
    zalo_template_id: str | None = None
    # WhatsApp and Zalo carry the code as a provider template parameter.
    code: str = field(default="", repr=False)
    org_id: int = 1  # the organisation it is sent for (the outbox keeps it with the message)


@dataclass(frozen=True)
class SendResult:
    status: str  # sent, delivered, failed
    provider_message_id: str | None = None
    http_status: int | None = None
    error: str | None = None
    attempts: int = 1
    latency_ms: float | None = None
    # Work the gateway asks to be done in the transaction that records the delivery (the outbox keeps
    # its message there), so a send costs no transaction of its own.
    record: Callable[[Connection], None] | None = field(default=None, repr=False, compare=False)


class Gateway(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Deliver one message; raise or return a failed result on error. Must never log message.code."""
        ...


def is_local(gateway: Gateway | None) -> bool:
    """A local gateway's send is a write to our own database: send_within(conn, message) keeps the message
    or raises (rolling the caller's transaction back). It may run inside a transaction, which no network
    gateway may: see core.services.generation.generate.
    """
    return callable(getattr(gateway, "send_within", None))
