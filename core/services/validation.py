"""Validate: single use, attempts per code, the validate window and the consecutive-failure lock."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from core import errors as E
from core import metrics
from core.db.models import OtpValidation
from core.db.prepared import Prepared
from core.errors import Problem
from core.issuing.codes import CheckOutcome, check_code, read_for_validation, record_failure, reset_failures
from core.issuing.entities import mask
from core.issuing.limits import Refused, count, validate_counter
from core.issuing.requests import parse_validate
from core.runtime import Runtime
from core.services.refusals import record_refusal, seconds_until, security_event, storage_error

log = logging.getLogger(__name__)


_INSERT_VALIDATION = Prepared(lambda insert: insert(OtpValidation.__table__))


@dataclass
class ValidateResult:
    valid: bool
    warnings: list[Problem] = field(default_factory=list)

    def body(self) -> dict:
        return {"entity": self.valid, "warnings": [w.as_dict() for w in self.warnings]}


_WARNINGS = {
    "none": Problem(E.NO_VALID_OTP, "no valid OTP found for this user and action"),
    "expired": Problem(E.OTP_INVALID, "the OTP has expired"),
    "wrong": Problem(E.OTP_INVALID, "the OTP is invalid"),
    "used_elsewhere": Problem(E.OTP_INVALID, "the OTP was already used"),
    # A replay answers like any absent code; only the security event tells them apart.
    "replayed": Problem(E.NO_VALID_OTP, "no valid OTP found for this user and action"),
    "burned": Problem(E.ATTEMPTS_EXHAUSTED, "OTP validation failed: attempts exhausted, the code is burned"),
}


async def validate(rt: Runtime, payload: object, *, org_id: int, client_id: int | None = None) -> ValidateResult:
    """Check a code of a customer of organisation org_id: single use, attempts per code, the validate window and
    the consecutive-failure lock. A code issued in another organisation is never found (its customer's key differs)."""
    request = parse_validate(payload, rt.org(org_id).settings, org_id=org_id)
    config = rt.config_for(org_id, request.action)
    user_key = request.entity.user_key
    action = config.action.value
    submitted = request.code.upper() if config.alphanumeric else request.code
    now = rt.clock()
    exempt = rt.settings.is_test_number(request.entity.value)

    def check(conn: Connection) -> CheckOutcome:
        if not exempt:
            count(conn, [validate_counter(config, user_key=user_key, now=now)], now=now)
        read = read_for_validation(conn, user_key=user_key, action=action, now=now, read_lock=not exempt)
        if read.locked_until is not None:
            raise Refused("lock", "too many failed validations; this user is locked for this action",
                          seconds_until(read.locked_until, now))
        outcome = check_code(conn, rt.keys, user_key=user_key, config=config, submitted=submitted, now=now,
                             read=read)
        if outcome.outcome == "ok":
            reset_failures(conn, user_key=user_key, action=action, failures=read.failures)
        elif outcome.outcome in ("wrong", "burned"):
            failures = record_failure(conn, user_key=user_key, config=config, now=now)
            if failures >= config.max_consecutive_failures:  # this failure locked the user: every lock is an event
                security_event(conn, "lock", org_id=org_id, user_key=user_key, action=action, now=now,
                                detail=f"{failures} consecutive failures")
        if outcome.outcome in ("burned", "replayed"):
            security_event(conn, f"{outcome.outcome}_code", org_id=org_id, user_key=user_key, action=action,
                           now=now)
        _INSERT_VALIDATION.execute(conn, {"org_id": org_id, "created_at": now, "user_key": user_key,
                                          "action": action,
                                          "code_id": outcome.code_id, "outcome": outcome.outcome})
        return outcome

    try:
        outcome = await rt.writer.run(check)
    except Refused as refused:
        raise await record_refusal(rt, refused, org_id=org_id, user_key=user_key, action=action, client_id=client_id,
                                    now=now) from None
    except DBAPIError as exc:
        raise storage_error(exc) from None
    if log.isEnabledFor(logging.INFO):  # the masked value is built only when it is logged
        log.info("validation for %s action %s: %s", mask(request.entity.value), action, outcome.outcome)
    metrics.validated(action, outcome.outcome)
    if outcome.outcome == "ok":
        return ValidateResult(True)
    return ValidateResult(False, [_WARNINGS[outcome.outcome]])
