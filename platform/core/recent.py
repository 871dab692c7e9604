"""A small per-process memory of rows a busy client asks for again and again (API keys, collections,
routing configuration), each entry trusted for a few seconds: the query it saves is paid again once
it expires. A save or delete in this process forgets at once (signals); other processes see the
change within the entry's lifetime."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.conf import settings

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


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
                self._entries.clear()  # a runaway key set must not grow forever
            self._entries[key] = (self.clock() + ttl, value)

    def remember(self, key: K, compute: Callable[[], V]) -> V:
        """The value kept for `key`, else `compute()`'s, kept (None included: "no such row" is worth keeping too)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self.clock():
            return entry[1]
        value = compute()
        self.put(key, value)
        return value

    def forget(self, **signal: Any) -> None:
        """Drop every entry (also a receiver for the save and delete signals of the rows kept)."""
        with self._lock:
            self._entries.clear()


# Routing configuration: policies, model specs, provider settings and spending sub-limits change
# rarely, and reading them on every request cost more than the rest of the routing together.
configuration: Recent[tuple[Any, ...], Any] = Recent(lambda: settings.MODELGATE_ROUTING_CACHE_SECONDS)
