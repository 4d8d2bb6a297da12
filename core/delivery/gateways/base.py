"""What every configured provider shares: its name, settings, credentials and retry policy."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, ClassVar

import httpx

from core.delivery.gateways import SendResult
from core.delivery.gateways.http import post
from core.delivery.gateways.retry import RetryPolicy, with_retries


@dataclass
class ProviderGateway:
    """A gateway built from a gateway_config row; subclasses implement send().

    What is retried is each provider's own documented answer, stated once here in two class attributes and
    applied by send_with_retries (README, "What a retry may send"): a provider that documents no idempotency
    key is retried only when it provably received nothing, so a retry never sends a message twice.
    """
    name: str
    endpoint: str = ""
    sender: str = ""
    options: dict = field(default_factory=dict)
    credentials: dict = field(default_factory=dict, repr=False)

    # HTTP statuses the provider documents as "request not processed" (safe to retry, e.g. Twilio's 429).
    not_accepted: ClassVar[frozenset[int]] = frozenset()

    @property
    def idempotent(self) -> bool:
        """True only where the provider documents de-duplication on a key we send with every attempt."""
        return False

    async def send_with_retries(self, attempt_once: Callable[[], Awaitable[SendResult]]) -> SendResult:
        return await with_retries(attempt_once, self.policy, idempotent=self.idempotent)

    async def post(self, url: str, **kwargs: object) -> httpx.Response:
        """One POST with this gateway's timeout and its documented not-accepted statuses."""
        return await post(url, timeout=self.timeout, not_accepted=self.not_accepted, **kwargs)  # type: ignore[arg-type]

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout_seconds", 10.0))

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy.from_options(self.options)

    def secret(self, key: str) -> str:
        value = self.credentials.get(key, "")
        if not value:
            from core.delivery.gateways.retry import Permanent
            raise Permanent(f"gateway {self.name} has no {key} configured")
        return str(value)


def idempotency_key(delivery_id: int) -> str:
    """Stable across retries of one delivery, different for every delivery."""
    return f"otp-delivery-{delivery_id}"


def fill(template: object, values: dict[str, str]) -> object:
    """Replace {name} placeholders in every string of a JSON-like template (webhook bodies and headers)."""
    if isinstance(template, str):
        for key, value in values.items():
            template = template.replace("{" + key + "}", value)
        return template
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    return template
