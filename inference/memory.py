"""The model server's native heap: buffers handed back to the system when freed, few malloc arenas, and
the free pages left in them returned after inference work.

PyTorch, tokenizers and ONNX allocate their working buffers with malloc. glibc serves a request above
its mmap threshold with a mapping of its own, returned whole on free, and anything smaller from an
arena's heap, which keeps what is freed for reuse. But glibc raises that threshold to the size of every
mapped buffer freed (up to 32 MiB), so after the first batches a model's activations come from the
heaps too; each new input shape (a longer text, more documents to rerank) then leaves a hole of a new
size, in one of up to 8 arenas per core, and RSS climbs for as long as new shapes come. A fixed
threshold keeps large buffers mapped, two arenas bound the heaps, and `malloc_trim(0)` gives back the
pages freed in them. All three are glibc's: elsewhere (musl, macOS) these are no-ops and say so.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import Any

logger = logging.getLogger("modelgate.inference")

# mallopt's parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


@cache
def _glibc() -> Any | None:
    """glibc's handle, or None when this process runs on another C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _operators(variable: str, tunable: str) -> int | None | bool:
    """The value an operator gave glibc at start (MALLOC_<X>_ or GLIBC_TUNABLES), False when none."""
    raw = os.environ.get(variable, "").strip()
    for setting in os.environ.get("GLIBC_TUNABLES", "").replace(":", " ").split():
        name, _, value = setting.partition("=")
        if name == f"glibc.malloc.{tunable}":
            raw = value.strip()
    if not raw:
        return False
    return int(raw) if raw.isdigit() else None


def _set(parameter: int, value: int, variable: str, tunable: str) -> int | None:
    operator = _operators(variable, tunable)
    if operator is not False:
        return operator  # glibc read it at start; ours would override the operator's
    libc = _glibc()
    if libc is None or value <= 0:
        return None
    return value if libc.mallopt(parameter, value) == 1 else None


def limit_arenas(count: int) -> int | None:
    """Cap glibc's malloc arenas at `count` for this process (0: glibc's default, 8 per core). Call it
    at start, before threads allocate: arenas already made stay. An operator's MALLOC_ARENA_MAX (or
    GLIBC_TUNABLES glibc.malloc.arena_max) wins. Returns the cap in force, None when there is none we know."""
    return _set(M_ARENA_MAX, count, "MALLOC_ARENA_MAX", "arena_max")


def fix_mmap_threshold(kib: int) -> int | None:
    """Serve every malloc of `kib` KiB or more with a mapping of its own, returned to the system on free,
    and stop glibc from raising that threshold as buffers are freed (0: glibc's moving threshold). An
    operator's MALLOC_MMAP_THRESHOLD_ (or glibc.malloc.mmap_threshold) wins. Returns the threshold in
    force in KiB, None when it moves."""
    operator = _operators("MALLOC_MMAP_THRESHOLD_", "mmap_threshold")
    if operator is not False:
        return None if operator is None else operator // 1024
    libc = _glibc()
    if libc is None or kib <= 0:
        return None
    return kib if libc.mallopt(M_MMAP_THRESHOLD, kib * 1024) == 1 else None  # glibc refuses more than 32 MiB


def trim_heap() -> bool:
    """Return the free pages of every malloc arena to the system (glibc's malloc_trim(0)); False off glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class HeapTrimmer:
    """Trims the heap after inference work: once `idle()` says nothing runs and a quarter of `interval`
    has passed since the last trim, or under steady load (never idle) every `interval` seconds. A trim
    walks every arena under its lock, which allocations in that arena wait for: well under a millisecond
    on a model server's heap when large buffers are mapped, some milliseconds when they are not.

    `note_work()` is what the server calls after each operation; the trimmer's own thread trims."""

    POLL_SECONDS = 0.25

    def __init__(self, interval: float, *, idle: Callable[[], bool] = lambda: True,
                 trim: Callable[[], bool] = trim_heap, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        # Off glibc the default trim can do nothing: no thread, no polling.
        self.enabled = interval > 0 and (trim is not trim_heap or _glibc() is not None)
        self._idle, self._trim, self._clock = idle, trim, clock
        self._worked = False  # work ran since the last trim
        self._last = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trims = 0
        self.trim_ms_total = 0.0
        self.trim_ms_max = 0.0

    def note_work(self) -> None:
        if self.enabled:
            self._worked = True

    def due(self) -> bool:
        """Whether a trim should run now."""
        if not self.enabled or not self._worked:
            return False
        waited = self._clock() - self._last
        return waited >= self.interval or (self._idle() and waited >= self.interval / 4)

    def maybe_trim(self) -> bool:
        """Trim when due; True when it trimmed. Thread-safe: one trim at a time."""
        if not self.due() or not self._lock.acquire(blocking=False):
            return False
        try:
            self._worked = False
            started = time.perf_counter()
            self._trim()
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._last = self._clock()
            self.trims += 1
            self.trim_ms_total += elapsed_ms
            self.trim_ms_max = max(self.trim_ms_max, elapsed_ms)
            return True
        finally:
            self._lock.release()

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="heap-trimmer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            try:
                self.maybe_trim()
            except Exception:  # never let housekeeping take the server down
                logger.exception("heap trim failed")

    def stats(self) -> dict[str, Any]:
        return {"trim_seconds": self.interval if self.enabled else 0, "trims": self.trims,
                "trim_ms_mean": round(self.trim_ms_total / self.trims, 3) if self.trims else None,
                "trim_ms_max": round(self.trim_ms_max, 3)}
