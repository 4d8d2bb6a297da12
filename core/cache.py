"""A small time-bounded cache for configuration that changes rarely and is read on every request."""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class TtlValue(Generic[T]):
    """One loaded value, re-read after ttl seconds or at once after invalidate().

    Changes made in this process call invalidate(); other processes see them within ttl seconds.
    """

    def __init__(self, loader: Callable[[], T], ttl: float) -> None:
        self._loader = loader
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: T | None = None
        self._loaded_at = float("-inf")

    def get(self) -> T:
        value, loaded_at = self._value, self._loaded_at
        if value is not None and time.monotonic() - loaded_at < self._ttl:
            return value
        with self._lock:
            if self._value is None or time.monotonic() - self._loaded_at >= self._ttl:
                self._value = self._loader()
                self._loaded_at = time.monotonic()
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
            self._loaded_at = float("-inf")
