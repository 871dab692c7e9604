"""A small per-process memory of rows a busy client asks for again and again (API keys, collections),
each entry trusted for a few seconds: the query it saves is paid again once it expires."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    LIMIT = 10_000  # entries; far above what one process sees in a few seconds

    def __init__(self, seconds: Callable[[], float], *, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds  # read at each put, so that a settings change applies at once
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def put(self, key: K, value: V) -> None:
        ttl = self.seconds()
        if ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.LIMIT:
                self._entries.clear()
            self._entries[key] = (self.clock() + ttl, value)

    def forget(self, **signal: Any) -> None:
        """Drop every entry (also a receiver for the save and delete signals of the rows kept)."""
        with self._lock:
            self._entries.clear()
