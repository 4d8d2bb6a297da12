"""WhatsApp through Meta's Cloud API: an authentication-template message carrying the code."""
from __future__ import annotations

from core.delivery.gateways import OutgoingMessage, SendResult
from core.delivery.gateways.base import ProviderGateway
from core.delivery.gateways.http import json_of
from core.delivery.gateways.retry import Permanent

META_API = "https://graph.facebook.com/v21.0"


class MetaWhatsApp(ProviderGateway):
    """sender is the WhatsApp phone-number id; the code is the body parameter and the copy-code button's."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        token = self.secret("access_token")
        url = f"{(self.endpoint or META_API).rstrip('/')}/{self.sender}/messages"
        body = {
            "messaging_product": "whatsapp", "recipient_type": "individual",
            "to": message.destination.lstrip("+"), "type": "template",
            "template": {
                "name": message.whatsapp_template_name,
                "language": {"code": message.whatsapp_language or "en"},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": message.code}]},
                    {"type": "button", "sub_type": "url", "index": "0",
                     "parameters": [{"type": "text", "text": message.code}]},
                ],
            },
        }

        async def once() -> SendResult:
            response = await self.post(url, headers={"Authorization": f"Bearer {token}"}, json_body=body)
            messages = json_of(response).get("messages")
            if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict) \
                    or not messages[0].get("id"):
                raise Permanent("provider answer has no message id", response.status_code)
            return SendResult("sent", str(messages[0]["id"]), response.status_code)

        # The Cloud API documents no idempotency key, and its throughput errors come as error codes in a
        # 4xx body: only a request that never reached Meta is retried.
        return await self.send_with_retries(once)
