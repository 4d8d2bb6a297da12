"""Service settings, read once from the environment (prefix OTP_) with safe embedded defaults."""
from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTP_", env_file=".env", extra="ignore")

    database_url: str = f"sqlite:///{DATA_DIR / 'otp.db'}"
    env: Literal["development", "test", "production"] = "development"
    # base64 of 32 random bytes; empty means "use (or create) data/secret.key".
    secret_key: str = ""
    secret_key_file: Path = DATA_DIR / "secret.key"
    default_region: str = "IN"
    timezone: str = "UTC"
    # "strict" uses is_valid_number, "possible" only is_possible_number.
    phone_validation: Literal["strict", "possible"] = "strict"
    daily_limit: int = 500
    brand: str = ""
    max_body_bytes: int = 64 * 1024
    # Seconds a request body may take to arrive whole; a slower one is answered 408 and its connection closed,
    # so a client trickling bytes cannot hold a worker's connection slot and memory for long.
    body_read_seconds: float = 10.0
    # /metrics (Prometheus text): "on" or "off"; with a token, a scrape must send "Authorization: Bearer <token>".
    # Production requires the token while metrics are on.
    metrics: Literal["on", "off"] = "on"
    metrics_token: str = ""
    # Seconds a process trusts its cached configuration and templates before re-reading them;
    # changes made in the same process invalidate the cache at once.
    cache_seconds: float = 5.0
    # Seconds a successfully verified API-client credential stays trusted in memory, so the slow
    # hash is paid once per client and not once per request.
    auth_cache_seconds: float = 60.0
    gateway_timeout_seconds: float = 10.0
    # Console: minutes of inactivity before a signed-in session ends, and the pause after a failed sign-in.
    console_session_minutes: float = 30.0
    login_failure_delay_seconds: float = 0.5
    # Per channel: which gateway sends it. "outbox" keeps messages for the console (development only).
    gateway_sms: str = "outbox"
    gateway_email: str = "outbox"
    gateway_phone: str = "outbox"
    gateway_whatsapp: str = "outbox"
    gateway_zalo: str = "outbox"

    # Test numbers: comma-separated E.164 numbers, or prefixes ending in '*', that always get test_code,
    # go only to the outbox and are exempt from limits. Refused in production.
    test_numbers: str = ""
    test_code: str = "123456"
    # The public base URL the providers call receipts on (Twilio signs the exact URL); empty: the request's own.
    public_url: str = ""
    # Seconds between two checks for deliveries whose receipt did not come in time (failover).
    failover_poll_seconds: float = 1.0
    # Abuse limits beyond the daily one (0 turns a limit off). Windows are fixed and clock-aligned.
    destination_limit: int = 5  # sends to one phone number or address...
    destination_window_minutes: int = 10  # ...per this many minutes
    client_limit: int = 0  # generates per API client per minute
    ip_limit: int = 60  # generates per client IP per ip_window_minutes
    ip_window_minutes: int = 10
    # Comma-separated addresses or networks of proxies whose X-Forwarded-For is believed; empty: none.
    trusted_proxies: str = ""
    prefix_limit: int = 100  # generates per number prefix (the number without its last 4 digits)...
    prefix_window_minutes: int = 10  # ...per this many minutes: SMS pumping walks through a range
    # Daily send budget per channel, e.g. "SMS=100000,PHONE=5000"; past it the channel is refused (safe mode).
    channel_budgets: str = ""
    # What a phone channel in safe mode does (its budget above, or the action's own, is spent): "refuse" it, or
    # "email_only": drop it and send the code by email when the request has an email destination (refused
    # when it has none). An action may override it on the OTP configuration page.
    safe_mode: Literal["refuse", "email_only"] = "refuse"
    # Countries (ISO codes, comma-separated) a channel may send to; empty allows all.
    countries_sms: str = ""
    countries_phone: str = ""
    countries_whatsapp: str = ""
    countries_zalo: str = ""

    def budget_for(self, channel: str) -> int | None:
        for part in self.channel_budgets.split(","):
            name, _, amount = part.partition("=")
            if name.strip().upper() == channel and amount.strip().isdigit():
                return int(amount)
        return None

    def countries_for(self, channel: str) -> frozenset[str]:
        text = getattr(self, f"countries_{channel.lower()}", "")
        return frozenset(c.strip().upper() for c in text.split(",") if c.strip())

    def is_test_number(self, value: str) -> bool:
        for pattern in (p.strip() for p in self.test_numbers.split(",") if p.strip()):
            if value == pattern or (pattern.endswith("*") and value.startswith(pattern[:-1])):
                return True
        return False

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("test_code")
    @classmethod
    def _ascii_test_code(cls, value: str) -> str:
        if not (4 <= len(value) <= 50 and value.isascii() and value.isalnum()):
            raise ValueError("test_code must be 4 to 50 ASCII letters or digits")
        return value.upper()

    @field_validator("body_read_seconds")
    @classmethod
    def _positive_read_time(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("body_read_seconds must be more than 0")
        return value

    @field_validator("daily_limit")
    @classmethod
    def _positive_limit(cls, value: int) -> int:
        if value < 1:
            raise ValueError("daily_limit must be at least 1")
        return value

    @model_validator(mode="after")
    def _production_is_explicit(self) -> "Settings":
        # Production must not fall back to development conveniences.
        if self.env == "production":
            if not self.secret_key:
                raise ValueError("OTP_SECRET_KEY is required when OTP_ENV=production")
            if self.test_numbers.strip():
                raise ValueError("OTP_TEST_NUMBERS is refused when OTP_ENV=production")
            outbox = [c for c in ("sms", "email", "phone", "whatsapp", "zalo")
                      if getattr(self, f"gateway_{c}") == "outbox"]
            if outbox:
                raise ValueError(f"the outbox gateway is refused in production (channels: {', '.join(outbox)})")
            if self.metrics == "on" and not self.metrics_token:
                raise ValueError("OTP_METRICS_TOKEN is required when OTP_ENV=production and OTP_METRICS=on")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def is_development(self) -> bool:
        return self.env != "production"


def get_settings() -> Settings:
    return Settings()
