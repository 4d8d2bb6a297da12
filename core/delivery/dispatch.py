"""Sending one request's messages over all its channels at the same time."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import replace

from core import metrics
from core.delivery.gateways import Gateway, OutgoingMessage, SendResult

log = logging.getLogger(__name__)


def scrub(text: str, code: str) -> str:
    """Remove the code from text a gateway produced (an error message may echo the request).

    Both forms a provider can have been sent: the code itself, and the voice form that spells it out
    ("1, 2, 3", core.delivery.gateways.voice.speakable). A code alphanumeric is matched in either case.
    """
    if not code:
        return text
    for form in (", ".join(code), code):
        text = re.sub(re.escape(form), "*" * len(code), text, flags=re.IGNORECASE)
    return text


async def _send_one(gateway: Gateway | None, message: OutgoingMessage, timeout: float) -> SendResult:
    if gateway is None:
        return SendResult(status="failed", error=f"no gateway is configured for {message.channel.value}", attempts=0)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):  # unlike wait_for, no extra task per send
            result = await gateway.send(message)
    except TimeoutError:
        result = SendResult(status="failed", error=f"{gateway.name} timed out after {timeout:g} s")
    except Exception as exc:  # a gateway failure must become a delivery record, not a lost request
        result = SendResult(status="failed", error=scrub(f"{gateway.name} failed: {type(exc).__name__}: {exc}",
                                                         message.code)[:1000])
    latency = result.latency_ms if result.latency_ms is not None else (time.perf_counter() - started) * 1000
    error = scrub(result.error, message.code)[:1000] if result.error else None
    log.debug("delivery %s over %s via %s: %s", message.delivery_id, message.channel.value, gateway.name,
              result.status)
    metrics.gateway_send(gateway.name, message.channel.value, latency / 1000, failed=result.status == "failed")
    return replace(result, error=error, latency_ms=latency)


async def dispatch(sends: Sequence[tuple[Gateway | None, OutgoingMessage]], timeout: float) -> list[SendResult]:
    """Send every message through its gateway concurrently; results come back in the order given."""
    if len(sends) == 1:  # the common case skips gather's task set-up
        return [await _send_one(sends[0][0], sends[0][1], timeout)]
    return list(await asyncio.gather(*(_send_one(gateway, message, timeout) for gateway, message in sends)))
