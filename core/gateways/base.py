"""What every configured provider shares: its name, settings, credentials and retry policy."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.gateways.retry import RetryPolicy


@dataclass
class ProviderGateway:
    """A gateway built from a gateway_config row; subclasses implement send()."""
    name: str
    endpoint: str = ""
    sender: str = ""
    options: dict = field(default_factory=dict)
    credentials: dict = field(default_factory=dict, repr=False)

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout_seconds", 10.0))

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy.from_options(self.options)

    def secret(self, key: str) -> str:
        value = self.credentials.get(key, "")
        if not value:
            from core.gateways.retry import Permanent
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
