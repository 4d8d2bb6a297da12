"""Addresses: who connected (the peer, or X-Forwarded-For from a trusted proxy), and which end user a request
is for, the address the per-address limit counts."""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from core.settings import IpNetwork

FORWARDED_FOR = "X-Forwarded-For"


def trusted_proxies(settings: Any) -> Sequence[IpNetwork]:
    """OTP_TRUSTED_PROXIES (parsed and checked at start-up by core.settings): the only authority on forwarded
    addresses.

    uvicorn has its own proxy-header handling (on by default, trusting 127.0.0.1), which would rewrite the
    peer address from a made-up X-Forwarded-For before this code sees it; serve.py turns it off, and the
    README says to run plain uvicorn with --no-proxy-headers.
    """
    return settings.trusted_proxies


def _is_trusted(address: str, trusted: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[IpNetwork]) -> str:
    """The address that connected to us, seen through our own proxies.

    trusted is OTP_TRUSTED_PROXIES, already parsed into networks (core.settings). Only when the peer is a
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


def _one_address(value: str | None) -> str | None:
    """A single IP address in its canonical spelling (IPv4-mapped IPv6 as IPv4), or None for anything else."""
    try:
        ip = ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def end_user_address(peer: str, headers: Mapping[str, str], settings: Any, *,
                     end_user_ip_header: str | None) -> str | None:
    """The end user's address for the per-address limit, or None: no per-address count for this request.

    A Capillary client is usually a backend acting for many customers, so the address that connects is not a
    customer's (SPEC section 9): counting it would refuse the backend's 61st customer in ten minutes. Only the
    API client knows where its end users' addresses are, so its end_user_ip_header decides:
    - None: a backend; nothing is counted (OTP_CLIENT_LIMIT remains the guard on the client itself);
    - X-Forwarded-For: the client's requests come from its end users, directly or through our proxies; the
      connecting address after OTP_TRUSTED_PROXIES resolution is the end user's;
    - any other header: the client (authenticated, so believed) writes its customer's address there; a value
      that is not one IP address counts nothing rather than lumping every such request into one bucket.
    headers is case-insensitive (Starlette's Headers).
    """
    if not end_user_ip_header:
        return None
    if end_user_ip_header.lower() == FORWARDED_FOR.lower():
        return _one_address(client_ip(peer, headers.get(FORWARDED_FOR), trusted_proxies(settings)))
    return _one_address(headers.get(end_user_ip_header))
