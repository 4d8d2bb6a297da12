"""Counting a request against its limits, and recording a refusal: shared by generate, validate and failover."""
from __future__ import annotations

import logging
import math
from datetime import datetime

from sqlalchemy import Connection, insert
from sqlalchemy.exc import DBAPIError

from core import errors as E
from core import metrics
from core.db.models import LimitEvent, SecurityEvent
from core.errors import OtpError
from core.faults import storage_failure
from core.issuing.entities import mask
from core.issuing.limits import Counter, Refused, count
from core.runtime import Runtime

log = logging.getLogger(__name__)


_INSERT_LIMIT_EVENT = insert(LimitEvent.__table__)


_INSERT_SECURITY_EVENT = insert(SecurityEvent.__table__)


def security_event(conn: Connection, kind: str, *, org_id: int, user_key: str, action: str, now: datetime,
                    detail: str | None = None) -> None:
    conn.execute(_INSERT_SECURITY_EVENT, {"org_id": org_id, "created_at": now, "kind": kind, "user_key": user_key, "action": action,
                                          "detail": detail})


def seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def storage_error(exc: Exception) -> OtpError:
    return storage_failure(exc, "unable to generate OTP at the moment: storage is unavailable")


async def record_refusal(rt: Runtime, refused: Refused, *, org_id: int, user_key: str, action: str,
                          client_id: int | None, now: datetime) -> OtpError:
    def record(conn: Connection) -> None:
        conn.execute(_INSERT_LIMIT_EVENT, {"org_id": org_id, "created_at": now, "user_key": user_key, "action": action,
                                           "limit_type": refused.limit_type, "client_id": client_id})
        if refused.event:
            security_event(conn, refused.event[0], org_id=org_id, user_key=user_key, action=action,
                            detail=refused.event[1], now=now)

    try:
        await rt.writer.run(record)
    except DBAPIError as exc:  # the refusal stands even if it cannot be recorded
        log.warning("could not record a %s refusal: %s", refused.limit_type, type(exc).__name__)
        metrics.database_error(exc)
    log.info("refused %s for %s (%s)", action, mask(user_key), refused.limit_type)
    metrics.refused(refused.limit_type)
    return OtpError.single(E.RATE_LIMITED, refused.message, 429, refused.retry_after, reason=refused.limit_type)


def count_request(conn: Connection, counters: list[Counter], *, org_id: int, action: str,
                  now: datetime) -> list[Counter]:
    """Count a request against counters (core.issuing.limits); the counters counted, for a give-back if its sends fail.

    The send that spends a channel budget records one budget_trip security event (rolled back with the request
    if a later limit refuses it); the sends refused after it are limit events.
    """
    counted = []
    for counter, got in count(conn, counters, now=now):
        if counter.trip is not None and got == counter.limit:
            security_event(conn, "budget_trip", org_id=org_id, user_key="", action=action, now=now,
                           detail=counter.trip)
        counted.append(counter)
    return counted
