"""The in-process model pool: lazy loading, dynamic batching, LRU eviction under a memory budget.

Each loaded model has one batching thread. Callers put items on its queue and wait on a future;
the thread gathers up to `max_batch_size` items or waits `max_wait_ms` after the first, runs one
`infer(batch)`, and hands each caller its own result. A failing item fails only its caller.
"""
from __future__ import annotations

import logging
import os
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from inference.backends import create_backend
from inference.base import Backend, ModelConfig
from inference.errors import InferenceError, InferenceTimeout, ModelLoadError

logger = logging.getLogger("modelgate.inference")

_SAMPLES = 2048  # latency samples kept per model for percentiles


@dataclass(frozen=True)
class Timing:
    queue_ms: float
    compute_ms: float  # this item's share of its batch's compute time


@dataclass
class _Item:
    payload: Any
    future: Future
    enqueued: float


@dataclass
class ModelStats:
    loads: int = 0
    load_seconds: float = 0.0
    memory_mb: float = 0.0
    calls: int = 0
    items: int = 0
    errors: int = 0
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    compute_ms: deque = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    queue_ms: deque = field(default_factory=lambda: deque(maxlen=_SAMPLES))

    def summary(self) -> dict[str, Any]:
        def pct(values: deque, q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        return {
            "loads": self.loads,
            "load_seconds": round(self.load_seconds, 3),
            "memory_mb": round(self.memory_mb, 1),
            "batches": self.calls,
            "items": self.items,
            "errors": self.errors,
            "mean_batch_size": round(statistics.fmean(self.batch_sizes), 2) if self.batch_sizes else None,
            "max_batch_size": max(self.batch_sizes) if self.batch_sizes else None,
            "compute_ms_p50": pct(self.compute_ms, 0.5),
            "compute_ms_p95": pct(self.compute_ms, 0.95),
            "queue_ms_p50": pct(self.queue_ms, 0.5),
            "queue_ms_p95": pct(self.queue_ms, 0.95),
        }


class _LoadedModel:
    """A backend plus its queue and batching thread."""

    def __init__(self, backend: Backend, stats: ModelStats, batching: bool):
        self.backend = backend
        self.config = backend.config
        self.stats = stats
        self.batching = batching
        self.queue: queue.Queue[_Item | None] = queue.Queue()
        self.busy = False
        self.last_used = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"model:{self.config.slug}", daemon=True)
        self.thread.start()

    @property
    def idle(self) -> bool:
        return not self.busy and self.queue.empty()

    def submit(self, payload: Any) -> Future:
        future: Future = Future()
        self.last_used = time.monotonic()
        self.queue.put(_Item(payload, future, time.perf_counter()))
        return future

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        limit = self.config.max_batch_size if self.batching else 1
        deadline = time.perf_counter() + self.config.max_wait_ms / 1000
        while len(batch) < limit:
            remaining = deadline - time.perf_counter()
            try:
                item = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            self.busy = True
            try:
                batch, stop = self._gather(first)
                self._execute(batch)
            finally:
                self.busy = False
            if stop:
                return

    def _execute(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self.backend.infer([item.payload for item in live])
            if len(results) != len(live):
                raise InferenceError(f"{self.config.slug} returned {len(results)} results for {len(live)} inputs.")
        except Exception as exc:  # the whole batch failed: every caller gets the error
            logger.exception("batch failed", extra={"model": self.config.slug, "batch_size": len(live)})
            error = exc if isinstance(exc, InferenceError) else InferenceError(f"{self.config.slug}: {exc}")
            results = [error] * len(live)
        elapsed_ms = (time.perf_counter() - started) * 1000
        stats = self.stats
        stats.calls += 1
        stats.items += len(live)
        stats.batch_sizes.append(len(live))
        stats.compute_ms.append(elapsed_ms)
        share_ms = elapsed_ms / len(live)
        for item, result in zip(live, results):
            queue_ms = (started - item.enqueued) * 1000
            stats.queue_ms.append(queue_ms)
            # Callers bill and record their own share of the batch's compute time.
            item.future.timing = Timing(queue_ms=queue_ms, compute_ms=share_ms)
            if isinstance(result, BaseException):
                stats.errors += 1
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        self.last_used = time.monotonic()


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 2**20
    except Exception:  # psutil missing or the platform refuses: memory accounting falls back to estimates
        return 0.0


class ModelPool:
    """Thread-safe. `infer(config, item)` loads the model on first use and batches with other callers."""

    def __init__(
        self,
        *,
        memory_budget_mb: float,
        batching: bool = True,
        backend_factory: Callable[[ModelConfig], Backend] = create_backend,
    ):
        self.memory_budget_mb = memory_budget_mb
        self.batching = batching
        self._factory = backend_factory
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._models: dict[str, _LoadedModel] = {}
        self._stats: dict[str, ModelStats] = {}

    # --- inference -------------------------------------------------------------------------
    def infer(self, config: ModelConfig, item: Any, *, timeout: float | None = None) -> Any:
        return self.infer_many(config, [item], timeout=timeout)[0]

    def infer_many(self, config: ModelConfig, items: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """Results in order; raises the first item's error. Use `submit_many` to get errors per item."""
        futures = self.submit_many(config, items)
        return [self._result(future, config, timeout) for future in futures]

    def infer_timed(
        self, config: ModelConfig, items: Iterable[Any], *, timeout: float | None = None
    ) -> tuple[list[Any], Timing]:
        """Results, the longest queue wait among the items, and their summed share of compute time."""
        futures = self.submit_many(config, items)
        results = [self._result(future, config, timeout) for future in futures]
        timings = [future.timing for future in futures]
        return results, Timing(
            queue_ms=max(t.queue_ms for t in timings), compute_ms=sum(t.compute_ms for t in timings)
        )

    def submit_many(self, config: ModelConfig, items: Iterable[Any]) -> list[Future]:
        """Validate each item (InvalidInput raises here, before anything is queued) and enqueue them."""
        model = self.get(config)
        validated = [model.backend.validate(item) for item in items]
        return [model.submit(item) for item in validated]

    def stream(self, config: ModelConfig, item: Any) -> Any:
        """A GenerationStream of the model's pieces (validated first: InvalidInput raises here)."""
        backend = self.get(config).backend
        return backend.stream(backend.validate(item))

    def load(self, config: ModelConfig) -> dict[str, Any]:
        """Load the model now (if it is not loaded); returns its statistics."""
        self.get(config)
        return self.stats(config.slug)

    def probe_input(self, config: ModelConfig) -> Any:
        """The model's own warm-up input: what health checks and benchmarks send it."""
        return self.get(config).backend.warmup_input()

    def _result(self, future: Future, config: ModelConfig, timeout: float | None) -> Any:
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise InferenceTimeout(f"{config.slug} did not answer within {timeout:.1f}s.") from None

    # --- loading ---------------------------------------------------------------------------
    def get(self, config: ModelConfig) -> _LoadedModel:
        model = self._models.get(config.slug)
        if model is not None and model.config == config:
            return model
        with self._lock:
            load_lock = self._load_locks.setdefault(config.slug, threading.Lock())
        # One load at a time per model; other models load (and serve) meanwhile.
        with load_lock:
            model = self._models.get(config.slug)
            if model is not None and model.config == config:
                return model
            if model is not None:  # the spec changed: replace the old instance
                self.unload(config.slug)
            return self._load(config)

    def _load(self, config: ModelConfig) -> _LoadedModel:
        backend = self._factory(config)
        backend.pool = self
        estimate = backend.memory_estimate_mb()
        self._make_room(estimate, keep=config.slug)
        stats = self._stats.setdefault(config.slug, ModelStats())
        before, started = _rss_mb(), time.perf_counter()
        try:
            backend.load()
            backend.loaded = True
            backend.warmup()
        except InferenceError:
            backend.unload()
            raise
        except Exception as exc:
            backend.unload()
            raise ModelLoadError(f"{config.slug}: could not load from {config.path}: {exc}") from exc
        stats.loads += 1
        stats.load_seconds = time.perf_counter() - started
        measured = _rss_mb() - before
        # RSS deltas undercount shared or lazily mapped weights: never trust less than the estimate.
        stats.memory_mb = max(measured, estimate)
        model = _LoadedModel(backend, stats, self.batching)
        with self._lock:
            self._models[config.slug] = model
        logger.info(
            "model loaded",
            extra={"model": config.slug, "seconds": round(stats.load_seconds, 2), "memory_mb": round(stats.memory_mb)},
        )
        return model

    def _make_room(self, needed_mb: float, *, keep: str) -> None:
        """Evict idle models, least recently used first, until `needed_mb` fits the budget."""
        while True:
            with self._lock:
                used = sum(self._stats[slug].memory_mb for slug in self._models)
                if used + needed_mb <= self.memory_budget_mb:
                    return
                idle = [m for slug, m in self._models.items() if slug != keep and m.idle]
                if not idle:
                    if self._models:
                        logger.warning(
                            "memory budget exceeded: every loaded model is busy",
                            extra={"used_mb": round(used), "needed_mb": round(needed_mb), "budget_mb": self.memory_budget_mb},
                        )
                    return
                victim = min(idle, key=lambda m: m.last_used)
            logger.info("evicting model", extra={"model": victim.config.slug, "reason": "memory budget"})
            self.unload(victim.config.slug)

    def unload(self, slug: str) -> bool:
        with self._lock:
            model = self._models.pop(slug, None)
        if model is None:
            return False
        model.stop()
        model.backend.unload()
        return True

    def preload(self, configs: Iterable[ModelConfig]) -> list[tuple[str, str | None]]:
        """Load each model now; returns (slug, error or None) so that one bad model does not stop the rest."""
        outcome = []
        for config in configs:
            try:
                self.get(config)
                outcome.append((config.slug, None))
            except InferenceError as exc:
                logger.error("preload failed", extra={"model": config.slug, "error": str(exc)})
                outcome.append((config.slug, str(exc)))
        return outcome

    def shutdown(self) -> None:
        for slug in list(self._models):
            self.unload(slug)

    # --- introspection ---------------------------------------------------------------------
    def loaded(self) -> list[str]:
        return list(self._models)

    def is_loaded(self, slug: str) -> bool:
        return slug in self._models

    def idle(self) -> bool:
        """True when no loaded model is running or has work waiting."""
        return all(model.idle for model in list(self._models.values()))

    def used_memory_mb(self) -> float:
        with self._lock:
            return sum(self._stats[slug].memory_mb for slug in self._models)

    def stats(self, slug: str | None = None) -> dict[str, Any]:
        if slug is not None:
            stats = self._stats.get(slug)
            return {**stats.summary(), **self._now(slug)} if stats else {"loaded": False}
        return {name: {**s.summary(), **self._now(name)} for name, s in self._stats.items()}

    def _now(self, slug: str) -> dict[str, Any]:
        """Whether the model is loaded and the items waiting for its batching thread now."""
        model = self._models.get(slug)
        return {"loaded": model is not None, "queued": model.queue.qsize() if model is not None else 0}
