"""One shared async HTTP client per event loop, and the translation of HTTP outcomes into retry decisions."""
from __future__ import annotations

import asyncio
import json
import weakref

import httpx

from core.delivery.gateways.retry import Permanent, Transient, parse_retry_after

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = weakref.WeakKeyDictionary()
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def shared_client() -> httpx.AsyncClient:
    """The client of the running loop: connections are reused across requests and gateways."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(limits=LIMITS, follow_redirects=False)
        _clients[loop] = client
    return client


async def close_shared_client() -> None:
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


async def post(url: str, *, timeout: float, headers: dict[str, str] | None = None, data: dict | None = None,
               json_body: dict | None = None, auth: tuple[str, str] | None = None,
                not_accepted: frozenset[int] = frozenset()) -> httpx.Response:
    """POST once; connect errors, timeouts, 5xx and 429 are Transient, other 4xx Permanent.

    Only what provably sent nothing is marked unsent: no connection was made (refused, DNS failure, connect
    or pool timeout), or the answer's status is one the provider documents as not accepted (not_accepted).
    A read or write timeout, a dropped connection or a 5xx may come after the provider took the message.
    """
    try:
        response = await shared_client().post(url, headers=headers, data=data, json=json_body, auth=auth,
                                              timeout=timeout)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise Transient(f"cannot connect: {type(exc).__name__}", unsent=True) from None
    except httpx.TimeoutException as exc:
        raise Transient(f"timed out: {type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise Transient(f"transport error: {type(exc).__name__}") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise Transient(f"provider answered {response.status_code}", response.status_code,
                        parse_retry_after(response.headers.get("retry-after")),
                        unsent=response.status_code in not_accepted)
    if response.status_code >= 400:
        raise Permanent(f"provider refused the message ({response.status_code}): {_short(response)}",
                        response.status_code)
    return response


def _short(response: httpx.Response) -> str:
    return response.text[:300].replace("\n", " ")


def json_of(response: httpx.Response) -> dict:
    """The provider's JSON answer; malformed JSON after a 2xx is permanent (the send may have happened)."""
    try:
        data = response.json()
    except (json.JSONDecodeError, ValueError):
        raise Permanent(f"provider answered {response.status_code} with malformed JSON", response.status_code) from None
    if not isinstance(data, dict):
        raise Permanent("provider answered with JSON that is not an object", response.status_code)
    return data
