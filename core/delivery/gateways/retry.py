"""Retrying a send: exponential backoff with full jitter for transient failures only, Retry-After honoured."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Awaitable, Callable

from core.delivery.gateways import SendResult


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_seconds: float = 0.25
    max_seconds: float = 5.0
    # A Retry-After longer than this is not waited for: the send fails and failover may take over.
    max_retry_after: float = 30.0

    @classmethod
    def from_options(cls, options: dict) -> "RetryPolicy":
        return cls(attempts=max(1, int(options.get("attempts", 3))),
                   base_seconds=float(options.get("backoff_seconds", 0.25)),
                   max_seconds=float(options.get("backoff_max_seconds", 5.0)),
                   max_retry_after=float(options.get("max_retry_after_seconds", 30.0)))

    def delay(self, attempt: int) -> float:
        """Full jitter: a random wait up to the exponential bound, so clients that failed together spread out."""
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1)))


class Transient(Exception):
    """A failure that may pass: connect error, timeout, 5xx, 429, an SMTP 4yz reply.

    unsent says whether it provably did not send anything: the connection was never made (refused, DNS
    failure, connect timeout) or the provider answered with a status it documents as "not accepted". Only
    those are retried for a provider that has no idempotency key; a read timeout or a 5xx after the request
    went out may have sent the message, and a retry would send (and bill) it twice.
    """

    def __init__(self, message: str, http_status: int | None = None, retry_after: float | None = None,
                 unsent: bool = False) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry_after = retry_after
        self.unsent = unsent


class Permanent(Exception):
    """A failure a retry cannot fix: a 4xx, bad credentials, a malformed answer."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


async def with_retries(attempt_once: Callable[[], Awaitable[SendResult]], policy: RetryPolicy, *,
                       idempotent: bool) -> SendResult:
    """Run attempt_once until it succeeds, fails permanently, or attempts run out; count every attempt.

    A failure is retried when it provably sent nothing (Transient.unsent), or, for a provider that documents
    de-duplication on an idempotency key we send with every attempt (idempotent=True), after any transient
    failure. Everything else fails at once: failover and the quota refund take it from there. No default:
    each gateway states which it is.
    """
    started = time.perf_counter()
    last: Exception | None = None
    for attempt in range(1, policy.attempts + 1):
        try:
            result = await attempt_once()
        except Permanent as exc:
            return SendResult("failed", http_status=exc.http_status, error=str(exc), attempts=attempt,
                              latency_ms=(time.perf_counter() - started) * 1000)
        except Transient as exc:
            last = exc
            if attempt == policy.attempts or not (idempotent or exc.unsent):
                break
            wait = exc.retry_after if exc.retry_after is not None else policy.delay(attempt)
            if wait > policy.max_retry_after:
                break
            await asyncio.sleep(wait)
            continue
        return replace(result, attempts=attempt, latency_ms=(time.perf_counter() - started) * 1000)
    http_status = last.http_status if isinstance(last, Transient) else None
    return SendResult("failed", http_status=http_status, error=f"gave up after {attempt} attempts: {last}",
                      attempts=attempt, latency_ms=(time.perf_counter() - started) * 1000)
