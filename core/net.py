"""The client's address: the peer, or X-Forwarded-For as told by a trusted proxy and no one else."""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from core.config import IpNetwork


def _is_trusted(address: str, trusted: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[IpNetwork]) -> str:
    """The address limits are keyed on.

    trusted is OTP_TRUSTED_PROXIES, already parsed into networks (core.config). Only when the peer is a
    trusted proxy is X-Forwarded-For read, from the right, skipping further trusted proxies: the first
    untrusted address is the client. Anything a client writes to the left of that is ignored, so rotating a
    spoofed header changes nothing.
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
