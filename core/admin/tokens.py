"""Capillary-style OAuth access tokens: short-lived JWTs an API client gets for its key and secret."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from core import errors as E
from core.errors import OtpError, Problem
from core.issuing.entities import DEFAULT_ORG

# One algorithm, fixed on both sides: a token naming any other ("none", HS512, RS256 with our key read as a
# public key...) is refused before its signature is looked at, whatever its header says.
ALGORITHM = "HS256"
# Marks what the token is for (Capillary's tokens carry the same claim), so that a JWT signed for some later
# purpose under this key can never pass as an access token.
TOKEN_USE = "token_access"
ISSUER = "otp-service"
# A token's life in seconds, per API client: Capillary's default, and the bounds the console and CLI accept.
DEFAULT_TTL_SECONDS = 300
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 86_400
# A real token is ~260 characters; anything far longer is refused before it is parsed.
MAX_TOKEN_CHARS = 4096
# Tokens verified once and remembered (with their expiry) per process; the memory starts over when full.
MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    ttl_seconds: int


def check_token_ttl(seconds: object) -> int:
    """The TTL as a whole number of seconds within bounds, or ValueError saying what is allowed."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not (
            MIN_TTL_SECONDS <= seconds <= MAX_TTL_SECONDS):
        raise ValueError(f"the token TTL must be a whole number of seconds from {MIN_TTL_SECONDS} "
                         f"to {MAX_TTL_SECONDS}")
    return seconds


def read_token_request(body: object) -> tuple[str, str]:
    """The key and secret of a token request body {"key": ..., "secret": ...}; every problem at once (400)."""
    if not isinstance(body, dict):
        raise OtpError.single(E.INVALID_BODY, "the request body must be a JSON object with key and secret")
    problems = [Problem(E.INVALID_BODY, f"{name} is required: a non-empty string")
                for name in ("key", "secret") if not isinstance(body.get(name), str) or not body[name]]
    if problems:
        raise OtpError(problems)
    return body["key"], body["secret"]


class TokenSigner:
    """Signs and verifies access tokens with a key derived from the service key (core.crypto.token_key).

    Every process of the service derives the same key, so a token from one worker is good at every other,
    and rotating the service key ends every token at once. Verification says only which client the token
    was issued to; whether that client is still active and allowed is the caller's question, asked on
    every use (core.admin.clients.ClientAuthenticator.by_id), so a revoke is not outlived by its tokens.
    """

    def __init__(self, key: bytes) -> None:
        self._key = OctKey.import_key(key)
        # token -> (client id, org id, exp). Parsing and checking a JWT costs ~0.1-0.2 ms, a large share of a
        # generate; a client sends the same token for its whole life, so each is verified once. Only the exact
        # string verified is found here, and its expiry is still checked on every use.
        self._verified: dict[str, tuple[int, int, int]] = {}

    def issue(self, *, client_id: int, org_id: int, ttl_seconds: int, now: datetime) -> IssuedToken:
        """A token for a client of organisation org_id (Capillary's tokens carry the org id too): whoever uses it
        checks that the client still belongs to that organisation (api.token_client)."""
        issued_at = int(now.timestamp())
        claims = {"iss": ISSUER, "sub": str(client_id), "client_id": client_id, "org_id": org_id,
                  "token_use": TOKEN_USE, "jti": secrets.token_urlsafe(16), "iat": issued_at,
                  "exp": issued_at + ttl_seconds}
        return IssuedToken(jwt.encode({"alg": ALGORITHM}, claims, self._key, algorithms=[ALGORITHM]), ttl_seconds)

    def client_id(self, token: str, *, now: datetime) -> int | None:
        """The client id a valid, unexpired token of ours was issued to; None for anything else."""
        found = self.verify(token, now=now)
        return found[0] if found is not None else None

    def verify(self, token: str, *, now: datetime) -> tuple[int, int] | None:
        """(client id, org id) of a valid, unexpired token of ours; None for anything else. A token from before
        organisations (no org_id claim) was issued in the default organisation."""
        remembered = self._verified.get(token)
        if remembered is not None:
            return remembered[:2] if int(now.timestamp()) < remembered[2] else None
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return None
        registry = jwt.JWTClaimsRegistry(
            now=int(now.timestamp()), iss={"essential": True, "value": ISSUER},
            token_use={"essential": True, "value": TOKEN_USE}, exp={"essential": True},
            iat={"essential": True}, jti={"essential": True})
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM]).claims
            if not isinstance(claims, dict):
                return None
            registry.validate(claims)
        except (JoseError, ValueError, TypeError):  # malformed, tampered, another algorithm, expired...
            return None
        if not int(now.timestamp()) < claims["exp"]:  # RFC 7519: valid only before exp (the registry allows exp)
            return None
        client_id = claims.get("client_id")
        if isinstance(client_id, bool) or not isinstance(client_id, int) or claims.get("sub") != str(client_id):
            return None
        org_id = claims.get("org_id", DEFAULT_ORG)
        if isinstance(org_id, bool) or not isinstance(org_id, int):
            return None
        if len(self._verified) >= MAX_REMEMBERED:
            self._verified.clear()
        self._verified[token] = (client_id, org_id, claims["exp"])
        return client_id, org_id
