"""API clients: created with a secret shown once, stored as an Argon2 hash, verified with a short memory."""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, select
from sqlmodel import Session
from sqlmodel import select as model_select

from core.admin.tokens import DEFAULT_TTL_SECONDS, check_token_ttl
from core.clock import utcnow
from core.db.models import ApiClient, ApiClientCreate, ApiClientPublic

PERMISSION_OTP_WRITE = "otp:write"
_hasher = PasswordHasher()
# Verified against when a key is unknown, so that an unknown key costs as long as a wrong secret.
_DUMMY_HASH = _hasher.hash("not-a-real-secret")


# An HTTP header name (RFC 9110 token), short enough for the column.
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


@dataclass(frozen=True)
class ClientIdentity:
    id: int
    name: str
    permissions: frozenset[str]
    token_ttl_seconds: int = DEFAULT_TTL_SECONDS
    end_user_ip_header: str | None = None  # core.net.end_user_address
    org_id: int = 1  # the organisation every call of this client acts in (api_client.org_id)


def check_end_user_ip_header(value: str | None) -> str | None:
    """The header a client names for its end users' addresses, tidied; None (blank) marks a backend.

    ValueError says what is wrong, in words for the CLI and the console. RFC 7239 `Forwarded` is refused
    rather than silently never matching: its value is a list of pairs, not one address.
    """
    name = (value or "").strip()
    if not name or name.lower() == "none":
        return None
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an HTTP header name such as X-End-User-IP (at most 64 characters)")
    if name.lower() == "forwarded":
        raise ValueError("the Forwarded header is not read; name X-Forwarded-For (resolved through "
                         "OTP_TRUSTED_PROXIES) or a header holding one address, such as X-End-User-IP")
    return name


@dataclass(frozen=True)
class NewClientCredentials:
    client: ApiClientPublic
    key: str
    secret: str

    @property
    def bearer_token(self) -> str:
        return f"{self.key}.{self.secret}"


def create_client(session: Session, *, client_create: ApiClientCreate, org_id: int) -> NewClientCredentials:
    """A new API client of organisation org_id: every call it makes acts in that organisation."""
    check_token_ttl(client_create.token_ttl_seconds)
    key = "ck_" + secrets.token_hex(12)
    secret = secrets.token_urlsafe(32)
    header = check_end_user_ip_header(client_create.end_user_ip_header)
    row = ApiClient.model_validate(client_create, update={"key": key, "secret_hash": _hasher.hash(secret),
                                                          "end_user_ip_header": header, "org_id": org_id})
    session.add(row)
    session.commit()
    session.refresh(row)
    return NewClientCredentials(ApiClientPublic.model_validate(row), key, secret)


def _client(session: Session, client_id: int, org_id: int | None) -> ApiClient | None:
    """The client with this id in organisation org_id (None: in any, for the host's operator at the CLI)."""
    row = session.get(ApiClient, client_id)
    return row if row is not None and (org_id is None or row.org_id == org_id) else None


def revoke_client(session: Session, *, client_id: int, org_id: int | None) -> bool:
    row = _client(session, client_id, org_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.add(row)
    session.commit()
    return True


def set_token_ttl(session: Session, *, client_id: int, seconds: int, org_id: int | None) -> bool:
    """Set how long the client's new OAuth access tokens live; tokens already issued keep their expiry.

    False when there is no active client with that id (in org_id); ValueError when seconds is out of bounds.
    """
    check_token_ttl(seconds)
    row = _client(session, client_id, org_id)
    if row is None or row.revoked_at is not None:
        return False
    row.token_ttl_seconds = seconds
    session.add(row)
    session.commit()
    return True
def set_end_user_ip_header(session: Session, *, client_id: int, header: str | None,
                           org_id: int | None) -> str | None:
    """Change where a client's end users' addresses come from; returns the stored value.

    Other processes see the change when their credential memory expires (OTP_AUTH_CACHE_SECONDS).
    LookupError: no active client with that id (in org_id).
    """
    value = check_end_user_ip_header(header)
    row = _client(session, client_id, org_id)
    if row is None or row.revoked_at is not None:
        raise LookupError(f"no active client with id {client_id}")
    row.end_user_ip_header = value
    session.add(row)
    session.commit()
    return value


def list_clients(session: Session, *, org_id: int | None) -> list[ApiClientPublic]:
    """The organisation's API clients (None: every organisation's, for the host's operator at the CLI)."""
    query = model_select(ApiClient).order_by(ApiClient.id)
    if org_id is not None:
        query = query.where(ApiClient.org_id == org_id)
    return [ApiClientPublic.model_validate(r) for r in session.exec(query)]


class ClientAuthenticator:
    """Verifies key and secret against the slow hash once, then trusts the pair for ttl seconds.

    Without the memory every request would pay ~50-130 ms of Argon2. When the trust expires, a cheap read
    confirms the client is still active with the same hash instead of hashing again. At most one
    verification per credential runs at a time and at most max_parallel overall, so a burst after a
    restart (or of wrong secrets) cannot start dozens of 64 MiB hashes at once. A revoked client is refused
    by this process at once and by other processes within ttl seconds.

    OAuth access tokens name their client by id (core.admin.tokens); by_id answers whether that client is still
    active, from the same kind of memory for the same ttl, so a revoke ends its tokens as soon as it ends
    its key and secret.
    """

    def __init__(self, engine: Engine, ttl: float, max_parallel: int = 2) -> None:
        self._engine = engine
        self._ttl = ttl
        self._lock = threading.Lock()
        self._slow = threading.BoundedSemaphore(max_parallel)
        self._in_flight: dict[bytes, threading.Lock] = {}
        self._trusted: dict[bytes, tuple[ClientIdentity, float, str]] = {}
        # Only ids from tokens we signed reach it: at most one entry per client.
        self._active: dict[int, tuple[ClientIdentity | None, float]] = {}

    @staticmethod
    def _fingerprint(key: str, secret: str) -> bytes:
        return hashlib.sha256(f"{key}\x00{secret}".encode()).digest()

    def cached(self, key: str, secret: str) -> ClientIdentity | None:
        entry = self._trusted.get(self._fingerprint(key, secret))
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    @staticmethod
    def _active_rows(*columns):  # type: ignore[no-untyped-def]
        """The one query both paths read an active client with: a revoked client is never found."""
        return select(ApiClient.id, ApiClient.name, ApiClient.permissions, ApiClient.token_ttl_seconds,
                      ApiClient.end_user_ip_header, ApiClient.org_id, *columns).where(ApiClient.revoked_at.is_(None))

    def _row(self, key: str):  # type: ignore[no-untyped-def]
        if not (key.isascii() and key.isprintable() and len(key) <= 64):  # cannot be a stored key
            return None
        with self._engine.connect() as conn:
            return conn.execute(self._active_rows(ApiClient.secret_hash).where(ApiClient.key == key)).first()

    def cached_by_id(self, client_id: int) -> tuple[bool, ClientIdentity | None]:
        """(known, client): whether this process has a fresh answer for the id, and the answer."""
        entry = self._active.get(client_id)
        if entry and entry[1] > time.monotonic():
            return True, entry[0]
        return False, None

    def by_id(self, client_id: int) -> ClientIdentity | None:
        """The active client with this id (an OAuth token's), or None once it is revoked; a read at most
        once per ttl seconds per client."""
        known, found = self.cached_by_id(client_id)
        if known:
            return found
        with self._engine.connect() as conn:
            row = conn.execute(self._active_rows().where(ApiClient.id == client_id)).first()
        identity = self._identity(row) if row is not None else None
        with self._lock:
            self._active[client_id] = (identity, time.monotonic() + self._ttl)
        return identity

    def verify(self, key: str, secret: str) -> ClientIdentity | None:
        """The client for these credentials, or None; slow on a first sight by design."""
        found = self.cached(key, secret)
        if found:
            return found
        fingerprint = self._fingerprint(key, secret)
        with self._lock:
            gate = self._in_flight.setdefault(fingerprint, threading.Lock())
        with gate:  # a second request with the same credentials waits for the first's answer
            found = self.cached(key, secret)
            if found:
                return found
            row = self._row(key)
            expired = self._trusted.get(fingerprint)
            if row is not None and expired is not None and expired[2] == row.secret_hash:
                identity = self._identity(row)  # known good and unchanged: no need to hash again
            else:
                with self._slow:
                    try:
                        _hasher.verify(row.secret_hash if row else _DUMMY_HASH, secret)
                    except (VerificationError, InvalidHashError):
                        row = None
                if row is None:
                    with self._lock:
                        self._trusted.pop(fingerprint, None)
                        self._in_flight.pop(fingerprint, None)
                    return None
                identity = self._identity(row)
            with self._lock:
                self._trusted[fingerprint] = (identity, time.monotonic() + self._ttl, row.secret_hash)
                self._in_flight.pop(fingerprint, None)
            return identity

    @staticmethod
    def _identity(row) -> ClientIdentity:  # type: ignore[no-untyped-def]
        return ClientIdentity(row.id, row.name, frozenset(p.strip() for p in row.permissions.split(",") if p.strip()),
                              row.token_ttl_seconds, row.end_user_ip_header, row.org_id)

    def forget_all(self) -> None:
        with self._lock:
            self._trusted.clear()
            self._active.clear()
