"""Zalo Notification Service (ZNS): a template message with the code in template_data."""
from __future__ import annotations

from core.delivery.gateways import OutgoingMessage, SendResult
from core.delivery.gateways.base import ProviderGateway, idempotency_key
from core.delivery.gateways.http import json_of
from core.delivery.gateways.retry import Permanent

ZNS_API = "https://business.openapi.zalo.me/message/template"


class ZaloZns(ProviderGateway):
    async def send(self, message: OutgoingMessage) -> SendResult:
        token = self.secret("access_token")
        body = {"phone": message.destination.lstrip("+"), "template_id": message.zalo_template_id,
                "template_data": {str(self.options.get("code_parameter", "otp")): message.code},
                "tracking_id": idempotency_key(message.delivery_id)}

        async def once() -> SendResult:
            response = await self.post(self.endpoint or ZNS_API, headers={"access_token": token}, json_body=body)
            answer = json_of(response)
            if answer.get("error") != 0:
                raise Permanent(f"Zalo refused the message: error {answer.get('error')} {answer.get('message', '')}"[:300],
                                response.status_code)
            data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
            return SendResult("sent", str(data.get("msg_id")) if data.get("msg_id") else None, response.status_code)

        # ZNS documents no de-duplication on tracking_id (only our own reference): only a request that never
        # reached Zalo is retried.
        return await self.send_with_retries(once)
