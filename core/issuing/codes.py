"""The life of a code in SQL: issue or re-send, use, count a failure, burn, expire.

Every decision that two requests could race on is a single conditional statement (an upsert or an
UPDATE ... WHERE ... RETURNING), so the database, not Python, decides who wins. Statements are built
once at import (or once per dialect) and executed with parameters: see core.db.prepared.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, case, literal_column, select, text, update

from core.crypto import CodeKeys, equal, new_code
from core.db.models import FailureCounter, OtpCode
from core.db.prepared import Prepared
from core.issuing.action_config import OtpConfig

_code = OtpCode.__table__
_failures = FailureCounter.__table__
_when = _code.c.expires_at.type  # aware UTC in, UTC stored: bind parameters need the column's type
# A code's state compared with a literal in the SQL, not a bound parameter: SQLite re-prepares a statement at every
# execution when a bound value could decide whether a partial index applies (uq_otp_code_active is WHERE
# state = 'active'), which made a validate's code lookup cost 19 us instead of 7 and its UPDATE 17 instead of 10.
_active = _code.c.state == literal_column("'active'")

_live = (_code.c.user_key == bindparam("p_user")) & (_code.c.action == bindparam("p_action")) & _active
_RESEND = (update(_code)
           .where(_live, _code.c.expires_at > bindparam("p_now", type_=_when),
                  _code.c.send_count < bindparam("p_max_sends"))
           .values(send_count=_code.c.send_count + 1)
           .returning(_code.c.id, _code.c.code_enc, _code.c.expires_at))
_EXPIRE_STALE = (update(_code).where(_live, _code.c.expires_at <= bindparam("p_now", type_=_when))
                 .values(state="expired", code_enc=None))
_LIVE_EXPIRY = select(_code.c.expires_at).where(_live)
# A validate's statements run on the driver's cursor (core.db.prepared.Prepared), as a generate's do.
# The live code, and whether it is still fresh, as SQL compares it (as _USE does): no timestamp parsed in Python.
_FIND_LIVE = Prepared(lambda _insert: select(
    _code.c.id, _code.c.code_hmac, (_code.c.expires_at > bindparam("p_now", type_=_when)).label("fresh")).where(_live))
_EXPIRE_ONE = Prepared(lambda _insert: update(_code).where(_code.c.id == bindparam("p_id"), _active)
                       .values(state="expired", code_enc=None))
_USE = Prepared(lambda _insert: update(_code).where(
    _code.c.id == bindparam("p_id"), _active, _code.c.expires_at > bindparam("p_now", type_=_when))
    .values(state="used", code_enc=None, used_at=bindparam("p_used_at", type_=_when)).returning(_code.c.id))
_burns = _code.c.failed_attempts + 1 >= bindparam("p_attempts")
_FAIL = Prepared(lambda _insert: update(_code).where(_code.c.id == bindparam("p_id"), _active).values(
    failed_attempts=_code.c.failed_attempts + 1,
    state=case((_burns, "burned"), else_=_code.c.state),
    code_enc=case((_burns, None), else_=_code.c.code_enc),
).returning(_code.c.failed_attempts, _code.c.state))
_LAST_USED_MAC = Prepared(lambda _insert: select(_code.c.code_hmac).where(
    _code.c.user_key == bindparam("p_user"), _code.c.action == bindparam("p_action"),
    _code.c.state == literal_column("'used'"))
    .order_by(_code.c.id.desc()).limit(1))
_LOCKED_UNTIL = Prepared(lambda _insert: select(_failures.c.locked_until, _failures.c.consecutive).where(
    _failures.c.user_key == bindparam("p_user"), _failures.c.action == bindparam("p_action")))
_RESET_FAILURES = Prepared(lambda _insert: update(_failures).where(
    _failures.c.user_key == bindparam("p_user"), _failures.c.action == bindparam("p_action"),
    _failures.c.consecutive > 0).values(consecutive=0, locked_until=None))

def _insert_code_statement(insert):  # type: ignore[no-untyped-def]
    """Insert a new live code unless one exists (the partial unique index decides), returning its id."""
    return insert(_code).values(
        org_id=bindparam("p_org"), user_key=bindparam("p_user"), entity_type=bindparam("p_entity"), action=bindparam("p_action"),
        code_hmac=bindparam("p_hmac"), code_enc=bindparam("p_enc"),
        created_at=bindparam("p_now", type_=_when), expires_at=bindparam("p_expires", type_=_when),
        state="active", failed_attempts=0, send_count=1,
    ).on_conflict_do_nothing(index_elements=[_code.c.org_id, _code.c.user_key, _code.c.action],
                             index_where=text("state = 'active'")).returning(_code.c.id)


_INSERT_CODE = Prepared(_insert_code_statement)


def _record_failure_statement(insert):  # type: ignore[no-untyped-def]
    reached = _failures.c.consecutive + 1 >= bindparam("p_ceiling")
    lock_at = bindparam("p_lock_at", type_=_failures.c.locked_until.type)
    return insert(_failures).values(
        user_key=bindparam("p_user"), action=bindparam("p_action"), consecutive=1,
        locked_until=bindparam("p_first_lock", type_=_failures.c.locked_until.type),
    ).on_conflict_do_update(
        index_elements=[_failures.c.user_key, _failures.c.action],
        set_={"consecutive": _failures.c.consecutive + 1,
              "locked_until": case((reached, lock_at), else_=_failures.c.locked_until)},
    ).returning(_failures.c.consecutive)


_RECORD_FAILURE = Prepared(_record_failure_statement)


class LiveCodeRace(Exception):
    """Another request made a live code for this user and action while this one was issuing."""


@dataclass(frozen=True)
class IssuedCode:
    code_id: int
    code: str
    expires_at: datetime
    resent: bool


class CodeSendsExhausted(Exception):
    """The live code has been sent as often as allowed; a new one is not issued until it expires."""

    def __init__(self, expires_at: datetime) -> None:
        super().__init__("sends of this code exhausted")
        self.expires_at = expires_at


def issue_or_resend(conn: Connection, keys: CodeKeys, *, user_key: str, entity_type: str, config: OtpConfig,
                    now: datetime, fixed_code: str | None = None) -> IssuedCode:
    """Issue a new code, or re-send the live one for this user and action.

    The insert comes first: for a user with no live code (the common case) it is the only statement.
    A re-send keeps the expiry and the failed-attempt count; a used or burned code is never live again.
    """
    action = config.action.value
    who = {"p_user": user_key, "p_action": action}
    code = fixed_code or new_code(config.code_length, config.alphanumeric)
    expires_at = now + timedelta(minutes=config.validity_minutes)
    new = {**who, "p_org": config.org_id, "p_entity": entity_type, "p_hmac": keys.code_mac(user_key, action, code),
           "p_enc": keys.encrypt_code(user_key, action, code), "p_now": now, "p_expires": expires_at}
    code_id = _INSERT_CODE.scalar(conn, new)
    if code_id is not None:
        return IssuedCode(code_id, code, expires_at, False)

    row = conn.execute(_RESEND, {**who, "p_now": now, "p_max_sends": config.max_sends_per_code}).first()
    if row is not None:
        return IssuedCode(row.id, keys.decrypt_code(user_key, action, row.code_enc), row.expires_at, True)
    conn.execute(_EXPIRE_STALE, {**who, "p_now": now})
    capped = conn.execute(_LIVE_EXPIRY, who).first()
    if capped is not None:
        raise CodeSendsExhausted(capped.expires_at)
    code_id = _INSERT_CODE.scalar(conn, new)
    if code_id is None:  # another transaction's code went live meanwhile (PostgreSQL): try again
        raise LiveCodeRace()
    return IssuedCode(code_id, code, expires_at, False)


@dataclass(frozen=True)
class CheckOutcome:
    outcome: str  # ok, wrong, burned, expired, none, used_elsewhere, replayed
    code_id: int | None = None


@dataclass(frozen=True)
class ValidationRead:
    """What a validate reads before deciding: the user's lock for the action, and the live code (if any)."""
    locked_until: datetime | None  # a lock in force now, else None
    failures: int | None  # consecutive failures so far (None: not read)
    live: tuple | None  # (id, code_hmac, fresh): fresh is whether it expires after now


def read_for_validation(conn: Connection, *, user_key: str, action: str, now: datetime,
                        read_lock: bool = True) -> ValidationRead:
    """The lock and the live code, both statements sent before either result is awaited.

    On PostgreSQL (pipeline mode, core.db.groupcommit) that is one round trip for the two; on SQLite, two statements.
    """
    who = {"p_user": user_key, "p_action": action}
    lock_cursor = _LOCKED_UNTIL.execute(conn, who) if read_lock else None
    live_cursor = _FIND_LIVE.execute(conn, {**who, "p_now": now})
    lock = _LOCKED_UNTIL.fetch(conn, lock_cursor) if lock_cursor is not None else []
    live = _FIND_LIVE.fetch(conn, live_cursor)
    until = lock[0][0] if lock else None
    return ValidationRead(until if until is not None and until > now else None,
                          (lock[0][1] if lock else 0) if read_lock else None, live[0] if live else None)


def check_code(conn: Connection, keys: CodeKeys, *, user_key: str, config: OtpConfig, submitted: str,
               now: datetime, read: ValidationRead | None = None) -> CheckOutcome:
    """Compare a submitted code with the live one and move the code along its life accordingly.

    read: what read_for_validation found in this transaction (read here when not given).
    """
    action = config.action.value
    if read is None:
        read = read_for_validation(conn, user_key=user_key, action=action, now=now, read_lock=False)
    row = read.live
    if row is None:
        # No live code: a match with the last used one is a replay, worth a security event.
        last = _LAST_USED_MAC.scalar(conn, {"p_user": user_key, "p_action": action})
        if last is not None and equal(keys.code_mac(user_key, action, submitted), last):
            return CheckOutcome("replayed")
        return CheckOutcome("none")
    code_id, code_hmac, fresh = row
    if not fresh:
        _EXPIRE_ONE.execute(conn, {"p_id": code_id})
        return CheckOutcome("expired", code_id)
    if equal(keys.code_mac(user_key, action, submitted), code_hmac):
        used = _USE.first(conn, {"p_id": code_id, "p_now": now, "p_used_at": now})
        # Another request may have used it between our read and this update; only one wins.
        return CheckOutcome("ok" if used else "used_elsewhere", code_id)
    after = _FAIL.first(conn, {"p_id": code_id, "p_attempts": config.attempts_per_code})
    if after is None:
        return CheckOutcome("used_elsewhere", code_id)
    if after[1] == "burned":
        return CheckOutcome("burned", code_id)
    return CheckOutcome("wrong", code_id)


def locked_until(conn: Connection, *, user_key: str, action: str, now: datetime) -> datetime | None:
    row = _LOCKED_UNTIL.first(conn, {"p_user": user_key, "p_action": action})
    until = row[0] if row is not None else None
    return until if until is not None and until > now else None


def record_failure(conn: Connection, *, user_key: str, config: OtpConfig, now: datetime) -> int:
    """Count one more consecutive failure across codes; lock the user and action at the ceiling."""
    lock_at = now + timedelta(minutes=config.lock_minutes)
    return _RECORD_FAILURE.scalar(conn, {  # type: ignore[return-value]
        "p_user": user_key, "p_action": config.action.value, "p_ceiling": config.max_consecutive_failures,
        "p_lock_at": lock_at, "p_first_lock": lock_at if config.max_consecutive_failures <= 1 else None,
    })


def reset_failures(conn: Connection, *, user_key: str, action: str, failures: int | None = None) -> None:
    """End a run of consecutive failures (and its lock). failures: the count this transaction read, if it did;
    with none to reset the statement is skipped (a failure recorded meanwhile by another request then counts as
    coming after this success, an order the two could have had)."""
    if failures == 0:
        return
    _RESET_FAILURES.execute(conn, {"p_user": user_key, "p_action": action})


_GIVE_BACK_SEND = update(_code).where(_code.c.id == bindparam("p_id"), _code.c.send_count > 0) \
    .values(send_count=_code.c.send_count - 1)


def give_back_send(conn: Connection, code_id: int) -> None:
    """Take back one send of a code (never below 0): its send reached no one, so it must not use up the cap."""
    conn.execute(_GIVE_BACK_SEND, {"p_id": code_id})
