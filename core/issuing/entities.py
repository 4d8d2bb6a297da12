"""Normalising phone numbers and emails, so that every spelling of one customer is one user."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from core.enums import EntityType

_PHONE_PUNCTUATION = set(" -().+/")
# The organisation migration 0014 put everything that existed into: its customers keep their keys.
DEFAULT_ORG = 1


class InvalidEntity(ValueError):
    pass


def user_key(org_id: int, entity_type: EntityType | str, value: str) -> str:
    """The one key of a customer of an organisation: everything per customer (codes, their MAC binding and AES-GCM
    associated data, daily and per-action counts, validate windows, failures, locks, limit events) is keyed by it.

    "MOBILE:+9199..." in the default organisation (the key from before organisations, so live codes, counters
    and locks survive the upgrade) and "o<org_id>|MOBILE:+9199..." in every other: the same number in two
    organisations is two customers, and a code issued in one can never match in the other.
    """
    kind = entity_type.value if isinstance(entity_type, EntityType) else entity_type
    return f"{kind}:{value}" if org_id == DEFAULT_ORG else f"o{org_id}|{kind}:{value}"


def split_user_key(key: str) -> tuple[int, str, str]:
    """(org_id, entity type, value) of a user_key."""
    org_id = DEFAULT_ORG
    if key.startswith("o") and "|" in key:
        prefix, _, key = key.partition("|")
        org_id = int(prefix[1:])
    kind, _, value = key.partition(":")
    return org_id, kind, value


@dataclass(frozen=True)
class NormalisedEntity:
    entity_type: EntityType
    value: str  # E.164 for phones, lower-cased address for emails
    org_id: int = DEFAULT_ORG  # the organisation whose customer this is (core.issuing.requests sets it)

    @property
    def user_key(self) -> str:
        return user_key(self.org_id, self.entity_type, self.value)


@lru_cache(maxsize=8192)
def normalise_phone(raw: str, *, region: str, strict: bool = True) -> str:
    """E.164 form of raw; only ASCII digits and common punctuation are accepted.

    libphonenumber would quietly fold full-width or Arabic-Indic digits into ASCII; refusing them keeps
    one canonical spelling per number and a clear error for the client.
    """
    value = raw.strip()
    if not value:
        raise InvalidEntity("the phone number is empty")
    if not all(ch.isascii() and (ch.isdigit() or ch in _PHONE_PUNCTUATION) for ch in value):
        raise InvalidEntity("a phone number may hold only ASCII digits, spaces, '+', '-', '(', ')'")
    if len(value) > 32:
        raise InvalidEntity("the phone number is too long")
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidEntity(f"not a phone number ({exc._msg})") from exc
    ok = phonenumbers.is_valid_number(number) if strict else phonenumbers.is_possible_number(number)
    if not ok:
        raise InvalidEntity("not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(raw: str) -> str:
    value = raw.strip()
    if len(value) > 320:
        raise InvalidEntity("the email address is too long")
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEntity(f"not a valid email address ({exc})") from exc
    return result.normalized.lower()


def mask(value: str) -> str:
    """A recipient shown without most of its characters, for tables and logs."""
    if "@" in value:
        local, _, domain = value.partition("@")
        return (local[:1] + "***@" + domain) if local else "***@" + domain
    if len(value) <= 4:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


def region_of(e164: str) -> str | None:
    """The ISO country of an E.164 number (None when libphonenumber cannot tell)."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None
