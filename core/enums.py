"""The enumerations of the wire contract, parsed case-insensitively as Capillary clients expect."""
from __future__ import annotations

from enum import Enum

_ASCII_SPACE = " \t\r\n\f\v"


def ascii_upper(value: object) -> str | None:
    """value upper-cased when it is an ASCII string (outer ASCII spaces dropped), else None.

    The one way a wire enum is folded. str.upper() alone folds look-alikes into ASCII names: dotless i
    ('poınts') becomes POINTS and long s ('ſms') becomes SMS, so one name would have many spellings that
    no log search, allow-list or dashboard filter expects. Only ASCII letters change case here.
    """
    if not isinstance(value, str):
        return None
    value = value.strip(_ASCII_SPACE)
    return value.upper() if value.isascii() else None


class CaseInsensitiveEnum(str, Enum):
    @classmethod
    def parse(cls, value: object) -> "CaseInsensitiveEnum | None":
        """The member named by value in any ASCII letter case, or None for anything else (wrong type included)."""
        name = ascii_upper(value)
        return cls.__members__.get(name) if name is not None else None


class EntityType(CaseInsensitiveEnum):
    MOBILE = "MOBILE"
    EMAIL = "EMAIL"


class Action(CaseInsensitiveEnum):
    COUPON = "COUPON"
    POINTS = "POINTS"
    REGISTRATION = "REGISTRATION"
    USERGROUP = "USERGROUP"
    SUBSCRIPTION = "SUBSCRIPTION"
    GENERIC = "GENERIC"
    POINTSTRANSFER = "POINTSTRANSFER"
    CUSTOMER_STATUS_UPDATE = "CUSTOMER_STATUS_UPDATE"
    CUSTOMER_IDENTIFIER_CHANGE = "CUSTOMER_IDENTIFIER_CHANGE"
    CUSTOMER_ISSUE_LINK_CARD = "CUSTOMER_ISSUE_LINK_CARD"


class Channel(CaseInsensitiveEnum):
    SMS = "SMS"
    EMAIL = "EMAIL"
    PHONE = "PHONE"  # a voice call; MOBILE on the wire means the same
    WHATSAPP = "WHATSAPP"
    ZALO = "ZALO"

    @classmethod
    def parse(cls, value: object) -> "Channel | None":
        if ascii_upper(value) == "MOBILE":
            return cls.PHONE
        return super().parse(value)  # type: ignore[return-value]

    @property
    def needs_phone(self) -> bool:
        return self is not Channel.EMAIL


ALL_CHANNELS: tuple[Channel, ...] = tuple(Channel)
