"""Exceptions no handler expected: which answer they get, and a log entry that carries no request data."""
from __future__ import annotations

import logging
import traceback

from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core import errors as E
from core import metrics
from core.errors import OtpError

log = logging.getLogger("otp.faults")

# The database family: unreachable, refusing, out of connections. The client may retry later (503, 606);
# anything else is a bug of ours and retrying will not help (500, 7005).
STORAGE_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, DisconnectionError, PoolTimeout)


def is_storage_failure(exc: BaseException) -> bool:
    """True when exc says the database could not do its part, rather than that our code is wrong."""
    return isinstance(exc, STORAGE_ERRORS)


def storage_failure(exc: BaseException, message: str = "unable to process the request at the moment: "
                    "storage is unavailable") -> OtpError:
    """The 503/606 answer, logged as one line with the exception's type (its text may carry SQL)."""
    log.error("storage failure: %s", type(exc).__name__)
    metrics.database_error(exc)
    return OtpError.single(E.STORAGE_FAILURE, message, 503)


def redacted_traceback(exc: BaseException) -> str:
    """The traceback of exc and of the exceptions it was raised from, without any exception's message.

    The frames (file, line, function, source line) say where the bug is; the messages are withheld because
    they are data, not code: a KeyError's message is the missing key (a phone number, say), a UnicodeError's
    quotes the text, a driver's error quotes the row. Locals are never rendered (traceback's default).
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts: list[str] = []
    for index, link in enumerate(reversed(chain)):
        if index:
            parts.append("\nwhile handling it, another exception occurred (or was raised from it):\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_list(traceback.extract_tb(link.__traceback__)))
        kind = type(link)
        parts.append(f"{kind.__module__}.{kind.__qualname__} (message withheld: it may hold request data)\n")
    return "".join(parts)


def unexpected_failure(exc: BaseException, *, method: str, path: str) -> OtpError:
    """The answer for an exception that reached the top of a request: 503/606 for storage, else 500/7005.

    The 500 is logged here, once, with its redacted traceback; the caller must not log or re-raise it
    (a re-raise makes the server log it again, message included).
    """
    if is_storage_failure(exc):
        return storage_failure(exc)
    log.error("unexpected error on %s %s, answered 500 (%s):\n%s", method, path, E.UNEXPECTED_ERROR,
              redacted_traceback(exc).rstrip())
    metrics.unexpected_error()
    return OtpError.single(E.UNEXPECTED_ERROR, "unexpected server error; it has been logged", 500)
