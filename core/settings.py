"""Service settings, read once from the environment (prefix OTP_) with safe embedded defaults.

Every field is typed and checked when the settings are read, so a bad value stops the API, the console and
the CLI at start-up with one line naming the variable (settings_or_exit), instead of failing per request or
meaning something else in silence. Lists keep the comma-separated syntax people write in environment files
("SMS=100000,PHONE=5000", "10.0.0.0/8,127.0.0.1", "IN,VN"): NoDecode hands the raw text to the field's parser.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import sys
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.enums import Channel

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PositiveMinutes = Annotated[int, Field(ge=1, le=24 * 60)]
Limit = Annotated[int, Field(ge=0)]  # 0 turns a limit off
_TEST_NUMBER = re.compile(r"\+[0-9]{1,15}\*?")
_GATEWAY_NAMES = ("outbox", "none")


def parse_channel_budgets(text: str, *, minimum: int = 1) -> tuple[dict[Channel, int], list[str]]:
    """Daily budgets by channel from "SMS=2000, PHONE=100", and every problem with the text.

    The one parser of budgets: OTP_CHANNEL_BUDGETS (where 0 refuses a channel outright) and an action's own
    budgets on the OTP configuration page (at least 1) both read with it, channel aliases included.
    """
    budgets: dict[Channel, int] = {}
    problems: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, amount = part.partition("=")
        channel, amount = Channel.parse(name), amount.strip()
        if not sep or channel is None:
            problems.append(f"channel budget {part!r}: write CHANNEL=daily sends, e.g. SMS=2000")
        elif not (amount.isascii() and amount.isdigit()) or int(amount) < minimum:
            problems.append(f"the {channel.value} budget must be a whole number of at least 1" if minimum else
                            f"the {channel.value} budget must be a whole number (0 refuses the channel), "
                            f"not {amount!r}")
        elif channel in budgets:
            problems.append(f"the {channel.value} budget is given twice")
        else:
            budgets[channel] = int(amount)
    return budgets, problems


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _countries(value: object) -> frozenset[str]:
    codes = _comma_list(value)
    if not isinstance(codes, (list, tuple, set, frozenset)):
        raise ValueError("write ISO country codes separated by commas, e.g. IN,VN")
    unknown = sorted(str(c) for c in codes if str(c).upper() not in phonenumbers.SUPPORTED_REGIONS)
    if unknown:
        raise ValueError(f"unknown ISO country code(s): {', '.join(unknown)}")
    return frozenset(str(c).upper() for c in codes)


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
    daily_limit: int = Field(500, ge=1)
    brand: str = Field("", max_length=100)
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Seconds a request body may take to arrive whole; a slower one is answered 408 and its connection closed,
    # so a client trickling bytes cannot hold a worker's connection slot and memory for long.
    body_read_seconds: float = Field(10.0, gt=0, le=600)
    # /metrics (Prometheus text): "on" or "off"; with a token, a scrape must send "Authorization: Bearer <token>".
    # Production requires the token while metrics are on.
    metrics: Literal["on", "off"] = "on"
    metrics_token: str = ""
    # Seconds a process trusts its cached configuration and templates before re-reading them;
    # changes made in the same process invalidate the cache at once.
    cache_seconds: float = Field(5.0, ge=0, le=3600)
    # Seconds a successfully verified API-client credential stays trusted in memory, so the slow
    # hash is paid once per client and not once per request.
    auth_cache_seconds: float = Field(60.0, ge=0, le=3600)
    gateway_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Seconds a write waits for SQLite's write lock while another connection (the console, another worker, a
    # receipt) holds it; past it the request answers 503/606 instead of waiting on. Unused on PostgreSQL.
    write_lock_timeout_seconds: float = Field(5.0, gt=0, le=3600)
    # Console: minutes of inactivity before a signed-in session ends, and the pause after a failed sign-in.
    console_session_minutes: float = Field(30.0, gt=0, le=7 * 24 * 60)
    login_failure_delay_seconds: float = Field(0.5, ge=0, le=10)
    # Per channel: which gateway sends it. "outbox" keeps messages for the console (development only).
    gateway_sms: Literal["outbox", "none"] = "outbox"
    gateway_email: Literal["outbox", "none"] = "outbox"
    gateway_phone: Literal["outbox", "none"] = "outbox"
    gateway_whatsapp: Literal["outbox", "none"] = "outbox"
    gateway_zalo: Literal["outbox", "none"] = "outbox"

    # Test numbers: comma-separated E.164 numbers, or prefixes ending in '*', that always get test_code,
    # go only to the outbox and are exempt from limits. Refused in production.
    test_numbers: Annotated[tuple[str, ...], NoDecode] = ()
    test_code: str = "123456"
    # The public base URL the providers call receipts on (Twilio signs the exact URL); empty: the request's own.
    public_url: str = ""
    # Seconds between two checks for deliveries whose receipt did not come in time (failover).
    failover_poll_seconds: float = Field(1.0, gt=0, le=3600)
    # Abuse limits beyond the daily one (0 turns a limit off). Windows are fixed and clock-aligned.
    destination_limit: Limit = 5  # sends to one phone number or address...
    destination_window_minutes: PositiveMinutes = 10  # ...per this many minutes
    client_limit: Limit = 0  # generates per API client per minute
    ip_limit: Limit = 60  # generates per client IP per ip_window_minutes
    ip_window_minutes: PositiveMinutes = 10
    # Comma-separated addresses or networks of proxies whose X-Forwarded-For is believed; empty: none.
    trusted_proxies: Annotated[tuple[IpNetwork, ...], NoDecode] = ()
    prefix_limit: Limit = 100  # generates per number prefix (the number without its last 4 digits)...
    prefix_window_minutes: PositiveMinutes = 10  # ...per this many minutes: SMS pumping walks through a range
    # Daily send budget per channel, e.g. "SMS=100000,PHONE=5000"; past it the channel is refused (safe mode);
    # 0 refuses the channel outright.
    channel_budgets: Annotated[dict[Channel, int], NoDecode] = {}
    # What a phone channel in safe mode does (its budget above, or the action's own, is spent): "refuse" it, or
    # "email_only": drop it and send the code by email when the request has an email destination (refused
    # when it has none). An action may override it on the OTP configuration page.
    safe_mode: Literal["refuse", "email_only"] = "refuse"
    # Countries (ISO codes, comma-separated) a channel may send to; empty allows all.
    countries_sms: Annotated[frozenset[str], NoDecode] = frozenset()
    countries_phone: Annotated[frozenset[str], NoDecode] = frozenset()
    countries_whatsapp: Annotated[frozenset[str], NoDecode] = frozenset()
    countries_zalo: Annotated[frozenset[str], NoDecode] = frozenset()

    def budget_for(self, channel: str) -> int | None:
        return self.channel_budgets.get(Channel(channel))

    def countries_for(self, channel: str) -> frozenset[str]:
        return getattr(self, f"countries_{channel.lower()}", frozenset())

    def is_test_number(self, value: str) -> bool:
        for pattern in self.test_numbers:
            if value == pattern or (pattern.endswith("*") and value.startswith(pattern[:-1])):
                return True
        return False

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError("not a database URL (e.g. sqlite:///data/otp.db or "
                             "postgresql+psycopg://user@host/db)") from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"{backend} is not supported: use sqlite or postgresql")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_32_bytes(cls, value: str) -> str:
        if value:
            try:
                key = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64 (e.g. from: openssl rand -base64 32)") from None
            if len(key) != 32:
                raise ValueError(f"must be base64 of exactly 32 bytes, not {len(key)}")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _header_safe_token(cls, value: str) -> str:
        # It travels in an Authorization header: printable ASCII with no spaces, and long enough not to guess.
        if value and not re.fullmatch(r"[\x21-\x7e]{16,200}", value):
            raise ValueError("must be 16 to 200 printable ASCII characters with no spaces")
        return value

    @field_validator("brand")
    @classmethod
    def _printable_brand(cls, value: str) -> str:
        # The brand lands in email subjects and SMS text: a line break there would split a header.
        if any(not ch.isprintable() for ch in value):
            raise ValueError("must be printable text on one line")
        return value

    @field_validator("secret_key_file")
    @classmethod
    def _key_file_not_a_folder(cls, value: Path) -> Path:
        if value.is_dir():
            raise ValueError(f"{value} is a folder; name the key file itself")
        return value

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown ISO region {value!r} (e.g. IN, US, VN)")
        return value.upper()

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http(s) base URL such as https://otp.example.com")
        return value

    @field_validator("test_numbers", mode="before")
    @classmethod
    def _test_numbers(cls, value: object) -> object:
        numbers = _comma_list(value)
        if isinstance(numbers, (list, tuple)):
            bad = [n for n in numbers if not (isinstance(n, str) and _TEST_NUMBER.fullmatch(n))]
            if bad:
                raise ValueError(f"write E.164 numbers or prefixes ending in *, e.g. +15550100,+1555*; "
                                 f"not {', '.join(map(str, bad))}")
        return numbers

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        parts = _comma_list(value)
        if not isinstance(parts, (list, tuple)):
            return parts
        networks = []
        for part in parts:
            try:
                networks.append(ipaddress.ip_network(part, strict=False) if isinstance(part, str) else part)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network (e.g. 10.0.0.0/8,127.0.0.1)") from None
        return tuple(networks)

    @field_validator("channel_budgets", mode="before")
    @classmethod
    def _budgets(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        budgets, problems = parse_channel_budgets(value, minimum=0)
        if problems:
            raise ValueError("; ".join(problems))
        return budgets

    @field_validator("countries_sms", "countries_phone", "countries_whatsapp", "countries_zalo", mode="before")
    @classmethod
    def _country_codes(cls, value: object) -> frozenset[str]:
        return _countries(value)

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

    @model_validator(mode="after")
    def _production_is_explicit(self) -> "Settings":
        # Production must not fall back to development conveniences.
        if self.env == "production":
            if not self.secret_key:
                raise ValueError("OTP_SECRET_KEY is required when OTP_ENV=production")
            if self.test_numbers:
                raise ValueError("OTP_TEST_NUMBERS is refused when OTP_ENV=production")
            outbox = [c for c in ("sms", "email", "phone", "whatsapp", "zalo")
                      if getattr(self, f"gateway_{c}") == "outbox"]
            if outbox:
                raise ValueError(f"the outbox gateway is refused in production (channels: {', '.join(outbox)})")
            if self.metrics == "on" and not self.metrics_token:
                raise ValueError("OTP_METRICS_TOKEN is required when OTP_ENV=production and OTP_METRICS=on")
        return self

    # An organisation's copy of the settings (core.issuing.org_settings) keeps the service's own time zone here:
    # the platform-wide channel budgets have one day for every organisation. Never read from the environment.
    _service_timezone: str | None = PrivateAttr(default=None)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def service_tz(self) -> ZoneInfo:
        """The service's time zone (OTP_TIMEZONE), also in an organisation's copy with a time zone of its own."""
        return ZoneInfo(self._service_timezone or self.timezone)

    @property
    def is_development(self) -> bool:
        return self.env != "production"


def get_settings() -> Settings:
    return Settings()


def settings_problems(error: ValidationError) -> list[str]:
    """One line per bad setting, naming its environment variable and what is wrong (never a secret's value)."""
    lines = []
    for problem in error.errors(include_url=False):
        field = str(problem["loc"][0]) if problem["loc"] else ""
        name = f"OTP_{field.upper()}" if field else "settings"
        message = problem["msg"].removeprefix("Value error, ")
        if field and "secret" not in field and problem.get("input") is not None and problem["type"] != "value_error":
            message += f" (got {str(problem['input'])[:60]!r})"
        lines.append(f"{name}: {message}")
    return lines


def checked_settings() -> tuple[Settings | None, list[str]]:
    """The settings, or None and one "bad setting: OTP_NAME: what is wrong" line per bad variable."""
    try:
        return get_settings(), []
    except ValidationError as error:
        return None, [f"bad setting: {line}" for line in settings_problems(error)]


def settings_or_exit() -> Settings:
    """The settings, or exit with status 3 and one line per bad variable on stderr (no traceback).

    The API (api.py, serve.py) and the CLI call it first; the console shows the same lines (console.py).
    """
    settings, problems = checked_settings()
    if settings is None:
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(3)
    return settings
