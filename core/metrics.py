"""The service's Prometheus metrics: what is counted, under which labels, and the text a scrape reads.

Every label comes from a closed set (an action, a channel, an outcome, a limit's reason, an exception class)
or is a gateway's configured name: never a code, a phone number, an address or anything else a client sent.

Several worker processes (serve.py --workers N) share one set of figures through prometheus_client's
multiprocess mode: serve.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start,
each worker writes its figures to its own files there, and a scrape of any worker sums them all.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Read when the values are set up (at import), as prometheus_client itself does: a process's mode never changes.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

REGISTRY = CollectorRegistry()

GENERATES = Counter(
    "otp_generates", "Channels of accepted generate requests, by action, channel and outcome: sent (a new code), "
    "resent (the live code again) or failed", ["action", "channel", "outcome"], registry=REGISTRY)
VALIDATES = Counter(
    "otp_validates", "Validations that reached a code check, by action and outcome (ok, wrong, expired, none, "
    "replayed, burned, used_elsewhere)", ["action", "outcome"], registry=REGISTRY)
REFUSALS = Counter(
    "otp_refusals", "Requests refused by a limit (429), by the limit's reason (daily, destination, ip, ...)",
    ["reason"], registry=REGISTRY)
GATEWAY_SECONDS = Histogram(
    "otp_gateway_send_seconds", "Time one send took through a gateway, retries included, by gateway and channel",
    ["gateway", "channel"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
GATEWAY_FAILURES = Counter(
    "otp_gateway_failures", "Sends a gateway did not accept (after its retries), by gateway and channel",
    ["gateway", "channel"], registry=REGISTRY)
DATABASE_ERRORS = Counter(
    "otp_database_errors", "Database errors met while serving requests, by exception class",
    ["error"], registry=REGISTRY)
UNEXPECTED_ERRORS = Counter(
    "otp_unexpected_errors", "Requests answered 500 (7005) because of a bug", registry=REGISTRY)
# livesum: the sum over the live workers only. serve.py removes a dead worker's gauge file
# (mark_process_dead), so a worker that died and was replaced is not counted twice.
WORKERS = Gauge("otp_workers", "API worker processes serving requests", multiprocess_mode="livesum",
                registry=REGISTRY)


# The labelled children of the per-request counters, looked up once per label set: labels() takes a lock and
# checks its arguments each time (4 us, a quarter of what the rest of a validate's bookkeeping costs). The label
# sets are closed (actions x channels x outcomes), so these stay small.
_GENERATED: dict[tuple[str, str, str], object] = {}
_VALIDATED: dict[tuple[str, str], object] = {}


def generated(action: str, channel: str, outcome: str) -> None:
    key = (action, channel, outcome)
    child = _GENERATED.get(key)
    if child is None:
        child = _GENERATED[key] = GENERATES.labels(*key)
    child.inc()  # type: ignore[attr-defined]


def validated(action: str, outcome: str) -> None:
    key = (action, outcome)
    child = _VALIDATED.get(key)
    if child is None:
        child = _VALIDATED[key] = VALIDATES.labels(*key)
    child.inc()  # type: ignore[attr-defined]


def refused(reason: str) -> None:
    REFUSALS.labels(reason).inc()


def gateway_send(gateway: str, channel: str, seconds: float, failed: bool) -> None:
    GATEWAY_SECONDS.labels(gateway, channel).observe(seconds)
    if failed:
        GATEWAY_FAILURES.labels(gateway, channel).inc()


def database_error(exc: BaseException) -> None:
    DATABASE_ERRORS.labels(type(exc).__name__).inc()


def unexpected_error() -> None:
    UNEXPECTED_ERRORS.inc()


def worker_started() -> None:
    WORKERS.set(1)


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every figure (summed over all workers in multiprocess mode), and its media type."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    return generate_latest(registry), CONTENT_TYPE_LATEST
