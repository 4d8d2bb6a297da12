"""The life of a code in SQL: issue or re-send, use, count a failure, burn, expire.

Every decision that two requests could race on is a single conditional statement (an upsert or an
UPDATE ... WHERE ... RETURNING), so the database, not Python, decides who wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, case, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.crypto import CodeKeys, equal, new_code
from core.models import FailureCounter, OtpCode
from core.otpconfig import OtpConfig

_code = OtpCode.__table__
_failures = FailureCounter.__table__


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
    """Re-send the live code for this user and action, or issue a new one.

    A re-send keeps the expiry and the failed-attempt count; a used or burned code is never live again.
    """
    action = config.action.value
    live = (_code.c.user_key == user_key) & (_code.c.action == action) & (_code.c.state == "active")
    row = conn.execute(
        update(_code).where(live, _code.c.expires_at > now, _code.c.send_count < config.max_sends_per_code)
        .values(send_count=_code.c.send_count + 1)
        .returning(_code.c.id, _code.c.code_enc, _code.c.expires_at)).first()
    if row is not None:
        return IssuedCode(row.id, keys.decrypt_code(user_key, action, row.code_enc), row.expires_at, True)

    conn.execute(update(_code).where(live, _code.c.expires_at <= now).values(state="expired", code_enc=None))
    capped = conn.execute(select(_code.c.expires_at).where(live)).first()
    if capped is not None:
        raise CodeSendsExhausted(capped.expires_at)

    code = fixed_code or new_code(config.code_length, config.alphanumeric)
    expires_at = now + timedelta(minutes=config.validity_minutes)
    code_id = conn.execute(insert(_code).values(
        user_key=user_key, entity_type=entity_type, action=action,
        code_hmac=keys.code_mac(user_key, action, code), code_enc=keys.encrypt_code(user_key, action, code),
        created_at=now, expires_at=expires_at, state="active", failed_attempts=0, send_count=1,
    ).returning(_code.c.id)).scalar_one()
    return IssuedCode(code_id, code, expires_at, False)


@dataclass(frozen=True)
class CheckOutcome:
    outcome: str  # ok, wrong, burned, expired, none, used_elsewhere
    code_id: int | None = None
    attempts_left: int | None = None


def check_code(conn: Connection, keys: CodeKeys, *, user_key: str, config: OtpConfig, submitted: str,
               now: datetime) -> CheckOutcome:
    """Compare a submitted code with the live one and move the code along its life accordingly."""
    action = config.action.value
    row = conn.execute(select(_code.c.id, _code.c.code_hmac, _code.c.expires_at).where(
        _code.c.user_key == user_key, _code.c.action == action, _code.c.state == "active")).first()
    if row is None:
        return CheckOutcome("none")
    if row.expires_at <= now:
        conn.execute(update(_code).where(_code.c.id == row.id, _code.c.state == "active")
                     .values(state="expired", code_enc=None))
        return CheckOutcome("expired", row.id)
    if equal(keys.code_mac(user_key, action, submitted), row.code_hmac):
        used = conn.execute(update(_code).where(_code.c.id == row.id, _code.c.state == "active",
                                                _code.c.expires_at > now)
                            .values(state="used", code_enc=None, used_at=now).returning(_code.c.id)).first()
        # Another request may have used it between our read and this update; only one wins.
        return CheckOutcome("ok" if used else "used_elsewhere", row.id)
    burn = _code.c.failed_attempts + 1 >= config.attempts_per_code
    after = conn.execute(update(_code).where(_code.c.id == row.id, _code.c.state == "active").values(
        failed_attempts=_code.c.failed_attempts + 1,
        state=case((burn, "burned"), else_=_code.c.state),
        code_enc=case((burn, None), else_=_code.c.code_enc),
    ).returning(_code.c.failed_attempts, _code.c.state)).first()
    if after is None:
        return CheckOutcome("used_elsewhere", row.id)
    if after.state == "burned":
        return CheckOutcome("burned", row.id, 0)
    return CheckOutcome("wrong", row.id, config.attempts_per_code - after.failed_attempts)


def _insert(conn: Connection):  # type: ignore[no-untyped-def]
    return sqlite_insert if conn.dialect.name == "sqlite" else pg_insert


def locked_until(conn: Connection, *, user_key: str, action: str, now: datetime) -> datetime | None:
    until = conn.execute(select(_failures.c.locked_until).where(
        _failures.c.user_key == user_key, _failures.c.action == action)).scalar()
    return until if until is not None and until > now else None


def record_failure(conn: Connection, *, user_key: str, config: OtpConfig, now: datetime) -> int:
    """Count one more consecutive failure across codes; lock the user and action at the ceiling."""
    action = config.action.value
    lock_at = now + timedelta(minutes=config.lock_minutes)
    reached = _failures.c.consecutive + 1 >= config.max_consecutive_failures
    stmt = _insert(conn)(_failures).values(
        user_key=user_key, action=action, consecutive=1,
        locked_until=lock_at if config.max_consecutive_failures <= 1 else None)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_failures.c.user_key, _failures.c.action],
        set_={"consecutive": _failures.c.consecutive + 1,
              "locked_until": case((reached, literal(lock_at, _failures.c.locked_until.type)),
                                   else_=_failures.c.locked_until)},
    ).returning(_failures.c.consecutive)
    return conn.execute(stmt).scalar_one()


def reset_failures(conn: Connection, *, user_key: str, action: str) -> None:
    conn.execute(update(_failures).where(_failures.c.user_key == user_key, _failures.c.action == action,
                                         _failures.c.consecutive > 0)
                 .values(consecutive=0, locked_until=None))
