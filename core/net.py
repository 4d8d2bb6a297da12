"""The client's address: the peer, or X-Forwarded-For as told by a trusted proxy and no one else."""
from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=64)
def _networks(trusted: str) -> tuple:
    networks = []
    for part in trusted.split(","):
        if part.strip():
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
    return tuple(networks)


def _is_trusted(address: str, trusted: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(trusted))


def client_ip(peer: str, forwarded_for: str | None, trusted: str) -> str:
    """The address limits are keyed on.

    Only when the peer is a trusted proxy is X-Forwarded-For read, from the right, skipping further trusted
    proxies: the first untrusted address is the client. Anything a client writes to the left of that is
    ignored, so rotating a spoofed header changes nothing.
    """
    if not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain: fall back to what we saw ourselves
        if not _is_trusted(hop, trusted):
            return hop
    return peer
