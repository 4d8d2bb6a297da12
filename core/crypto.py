"""The service key and every primitive that touches a code: generation, HMAC, AES-GCM, comparison."""
from __future__ import annotations

import base64
import hmac
import os
import secrets
import string
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.settings import Settings

DIGITS = string.digits
ALPHANUMERIC = string.digits + string.ascii_uppercase


def load_master_key(settings: Settings) -> bytes:
    """The 32-byte service key: from OTP_SECRET_KEY, else a 0600 key file under data/, created once."""
    if settings.secret_key:
        key = base64.b64decode(settings.secret_key, validate=True)
        if len(key) != 32:
            raise ValueError("OTP_SECRET_KEY must be base64 of exactly 32 bytes")
        return key
    path = Path(settings.secret_key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting together must not both write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    else:
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(key).decode() + "\n")
        return key
    if len(key) != 32:
        raise ValueError(f"{path} must hold base64 of exactly 32 bytes")
    return key


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def token_key(master: bytes) -> bytes:
    """The key that signs API clients' OAuth access tokens (core.admin.tokens), under a label of its own, so a
    token signature can never be made or checked with the code or stored-secret keys."""
    return _derive(master, b"otp-oauth-access-token-hs256")


@dataclass(frozen=True)
class CodeKeys:
    """Separate keys for the HMAC and the encrypted copy, both derived from the one service key."""
    mac_key: bytes
    enc_key: bytes

    @classmethod
    def from_master(cls, master: bytes) -> "CodeKeys":
        return cls(_derive(master, b"otp-code-hmac"), _derive(master, b"otp-code-aesgcm"))

    def code_mac(self, user_key: str, action: str, code: str) -> bytes:
        # Binding user and action into the MAC means a code row can never match another user's code.
        message = f"{user_key}\x1f{action}\x1f{code}".encode()
        return hmac.new(self.mac_key, message, sha256).digest()

    def encrypt_code(self, user_key: str, action: str, code: str) -> bytes:
        nonce = secrets.token_bytes(12)
        aad = f"{user_key}\x1f{action}".encode()
        return nonce + AESGCM(self.enc_key).encrypt(nonce, code.encode(), aad)

    def decrypt_code(self, user_key: str, action: str, blob: bytes) -> str:
        aad = f"{user_key}\x1f{action}".encode()
        return AESGCM(self.enc_key).decrypt(blob[:12], blob[12:], aad).decode()


def new_code(length: int, alphanumeric: bool) -> str:
    """A code drawn uniformly from all alphabet**length codes in one draw from the OS's CSPRNG.

    One draw, spelled out in the alphabet's base, is the same distribution as a draw per character, at
    one urandom call instead of one per character.
    """
    alphabet = ALPHANUMERIC if alphanumeric else DIGITS
    number = secrets.randbelow(len(alphabet) ** length)
    characters = []
    for _ in range(length):
        number, digit = divmod(number, len(alphabet))
        characters.append(alphabet[digit])
    return "".join(characters)


def equal(a: bytes, b: bytes) -> bool:
    """The one constant-time comparison every check calls."""
    return hmac.compare_digest(a, b)


class SecretBox:
    """AES-GCM for small secrets kept in the database (gateway credentials), under a key of their own."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_master(cls, master: bytes) -> "SecretBox":
        return cls(_derive(master, b"otp-stored-secrets"))

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, blob: bytes, context: str) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], context.encode())
