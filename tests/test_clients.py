"""API-client credentials: the slow hash is paid once per credential, re-checks are cheap, revocation wins."""
from __future__ import annotations

import threading
import time

from argon2 import PasswordHasher

import core.admin.clients as clients
from core.admin.clients import ClientAuthenticator, create_client, revoke_client
from core.db.models import ApiClientCreate


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__()
        self.verifications = 0

    def verify(self, hash, password):  # type: ignore[override]
        self.verifications += 1
        return super().verify(hash, password)


def test_expired_trust_is_renewed_without_hashing_and_revocation_is_seen(rt, monkeypatch):
    counter = CountingHasher()
    monkeypatch.setattr(clients, "_hasher", counter)
    with rt.session() as db:
        made = create_client(db, client_create=ApiClientCreate(name="shop"), org_id=1)
    auth = ClientAuthenticator(rt.read_db, ttl=0.05)
    assert auth.verify(made.key, made.secret).name == "shop"
    assert counter.verifications == 1
    time.sleep(0.06)
    assert auth.verify(made.key, made.secret) is not None  # renewed by a read, not a hash
    assert counter.verifications == 1
    with rt.session() as db:
        assert revoke_client(db, client_id=made.client.id, org_id=1)
    time.sleep(0.06)
    assert auth.verify(made.key, made.secret) is None
    assert auth.verify(made.key, "wrong") is None


def test_a_burst_of_the_same_new_credential_hashes_once(rt, monkeypatch):
    counter = CountingHasher()
    monkeypatch.setattr(clients, "_hasher", counter)
    with rt.session() as db:
        made = create_client(db, client_create=ApiClientCreate(name="shop"), org_id=1)
    auth = ClientAuthenticator(rt.read_db, ttl=60)
    results = []
    threads = [threading.Thread(target=lambda: results.append(auth.verify(made.key, made.secret))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is not None for r in results)
    assert counter.verifications == 1
