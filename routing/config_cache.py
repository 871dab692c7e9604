"""Routing configuration held briefly in each process: policies, model specs and provider settings
change rarely, and reading them on every request cost more than the rest of the routing together.

A save or delete in this process clears the cache at once (signals); other processes see the
change within MODELGATE_ROUTING_CACHE_SECONDS.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings

T = TypeVar("T")

_lock = threading.Lock()
_entries: dict[tuple[Any, ...], tuple[float, Any]] = {}


def remember(key: tuple[Any, ...], compute: Callable[[], T]) -> T:
    ttl = settings.MODELGATE_ROUTING_CACHE_SECONDS
    if ttl <= 0:
        return compute()
    now = time.monotonic()
    entry = _entries.get(key)
    if entry is not None and entry[0] > now:
        return entry[1]
    value = compute()
    with _lock:
        if len(_entries) > 10_000:  # tenants × tasks stays far below this; a runaway key set must not grow forever
            _entries.clear()
        _entries[key] = (now + ttl, value)
    return value


def clear(**kwargs: Any) -> None:
    with _lock:
        _entries.clear()
