"""Capillary's error codes and the envelope every refusal travels in."""
from __future__ import annotations

from dataclasses import dataclass, field

RATE_LIMITED = 429
INVALID_ACTION = 600
INVALID_ENTITY_TYPE = 601
INVALID_ENTITY_VALUE = 602
INVALID_CHANNEL = 603
NO_OTP = 604
OTP_INVALID = 605
STORAGE_FAILURE = 606
WHATSAPP_TEMPLATE_MISSING = 607
TEMPLATE_PROBLEM = 608
ZALO_TEMPLATE_MISSING = 621
ATTEMPTS_EXHAUSTED = 876
INVALID_MOBILE = 8056
NO_VALID_OTP = 9001
GATEWAY_ERROR = 7001
RESENT_SAME_CODE = 7002


@dataclass(frozen=True)
class Problem:
    """One error or warning; the same shape serves both, as in Capillary's responses.

    reason names which limit refused a 429 (daily, destination, ip, prefix, budget...): an extra key that
    Capillary clients ignore.
    """
    code: int
    message: str
    reason: str | None = None

    def as_dict(self) -> dict:
        shown = {"status": False, "code": self.code, "message": self.message}
        if self.reason:
            shown["reason"] = self.reason
        return shown


@dataclass
class OtpError(Exception):
    """A refused request: every problem found, the HTTP status that fits, and when to retry."""
    problems: list[Problem]
    http_status: int = 400
    retry_after: int | None = None
    warnings: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__("; ".join(f"{p.code}: {p.message}" for p in self.problems))

    @classmethod
    def single(cls, code: int, message: str, http_status: int = 400, retry_after: int | None = None,
               reason: str | None = None) -> "OtpError":
        return cls([Problem(code, message, reason)], http_status, retry_after)

    def envelope(self) -> dict:
        return {"errors": [p.as_dict() for p in self.problems],
                "warnings": [w.as_dict() for w in self.warnings]}

# Not in Capillary's table: a body that is not one JSON object of a sane size.
INVALID_BODY = 7000
# Not in Capillary's table: the destination's country is not allowed for the channel.
COUNTRY_NOT_ALLOWED = 7003
# Not in Capillary's table, a warning: a phone channel is in safe mode (its daily budget is spent) and the code
# went by email instead.
SAFE_MODE_EMAIL = 7004
# Not in Capillary's table: an unexpected server error (500), a bug of ours; 606 stays for storage being unavailable.
UNEXPECTED_ERROR = 7005
