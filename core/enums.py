"""The enumerations of the wire contract, parsed case-insensitively as Capillary clients expect."""
from __future__ import annotations

from enum import Enum


class CaseInsensitiveEnum(str, Enum):
    @classmethod
    def parse(cls, value: object) -> "CaseInsensitiveEnum | None":
        """The member named by value in any letter case, or None for anything else (wrong type included)."""
        if not isinstance(value, str):
            return None
        return cls.__members__.get(value.strip().upper())


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
        if isinstance(value, str) and value.strip().upper() == "MOBILE":
            return cls.PHONE
        return super().parse(value)  # type: ignore[return-value]

    @property
    def needs_phone(self) -> bool:
        return self is not Channel.EMAIL


ALL_CHANNELS: tuple[Channel, ...] = tuple(Channel)
