"""The model pool: lazy single loads, dynamic batching, per-item failures, timeouts and LRU eviction."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from inference.base import Backend, ModelConfig
from inference.errors import InferenceError, InferenceTimeout, InvalidInput, ModelLoadError
from inference.pool import ModelPool


class Doubler(Backend):
    """A small real backend: doubles numbers, one batch per call, so the pool's mechanics are visible."""

    name = "doubler"
    task = "test"
    option_types: ClassVar[dict[str, Any]] = {}
    loads = 0
    load_lock = threading.Lock()

    def load(self) -> None:
        time.sleep(self.option("load_seconds", 0))
        with Doubler.load_lock:
            Doubler.loads += 1
        if self.option("fail_load", False):
            raise ModelLoadError("weights missing")
        self.batches: list[int] = []

    def validate(self, item: Any) -> Any:
        if item is None:
            raise InvalidInput("no input")
        return item

    def infer(self, batch: list[Any]) -> list[Any]:
        time.sleep(self.option("compute_seconds", 0.02))
        self.batches.append(len(batch))
        if "explode" in batch:
            raise RuntimeError("the whole batch failed")
        return [InvalidInput(f"cannot double {x!r}") if isinstance(x, str) else x * 2 for x in batch]

    def memory_estimate_mb(self) -> float:
        return float(self.option("memory_mb", 10))


def config(slug: str = "doubler", **options: Any) -> ModelConfig:
    return ModelConfig(slug=slug, task="test", backend="doubler", path=Path("."), options=options,
                       max_batch_size=options.pop("max_batch_size", 8), max_wait_ms=options.pop("max_wait_ms", 20))


@pytest.fixture
def pool():
    Doubler.loads = 0
    pool = ModelPool(memory_budget_mb=100, backend_factory=lambda c: Doubler(c))
    yield pool
    pool.shutdown()


def test_a_model_loads_lazily_on_first_use(pool):
    assert pool.loaded() == []
    assert pool.infer(config(), 21) == 42
    assert pool.loaded() == ["doubler"]
    assert pool.stats("doubler")["loads"] == 1


def test_concurrent_first_requests_load_the_model_once(pool):
    cfg = config(load_seconds=0.2)
    with ThreadPoolExecutor(8) as executor:
        results = list(executor.map(lambda n: pool.infer(cfg, n), range(8)))
    assert results == [n * 2 for n in range(8)]
    assert Doubler.loads == 1


def test_concurrent_callers_are_batched_and_each_gets_its_own_answer(pool):
    cfg = config(compute_seconds=0.05, max_batch_size=16, max_wait_ms=30)
    with ThreadPoolExecutor(16) as executor:
        results = list(executor.map(lambda n: pool.infer(cfg, n), range(32)))
    assert results == [n * 2 for n in range(32)]
    batches = pool.get(cfg).backend.batches
    assert sum(batches) == 32
    assert len(batches) < 32 and max(batches) > 1
    assert max(batches) <= 16


def test_without_batching_every_item_runs_alone(pool):
    unbatched = ModelPool(memory_budget_mb=100, batching=False, backend_factory=lambda c: Doubler(c))
    try:
        with ThreadPoolExecutor(8) as executor:
            list(executor.map(lambda n: unbatched.infer(config(), n), range(16)))
        assert set(unbatched.get(config()).backend.batches) == {1}
    finally:
        unbatched.shutdown()


def test_a_failing_item_fails_only_its_caller(pool):
    futures = pool.submit_many(config(max_wait_ms=50), [1, "two", 3])
    assert futures[0].result(5) == 2
    with pytest.raises(InvalidInput, match="cannot double 'two'"):
        futures[1].result(5)
    assert futures[2].result(5) == 6
    assert pool.stats("doubler")["errors"] == 1


def test_a_batch_that_raises_fails_its_callers_and_the_model_keeps_serving(pool):
    futures = pool.submit_many(config(max_wait_ms=50), [1, "explode"])
    for future in futures:
        with pytest.raises(InferenceError, match="whole batch failed"):
            future.result(5)
    assert pool.infer(config(), 5) == 10


def test_invalid_input_is_refused_before_it_is_queued(pool):
    with pytest.raises(InvalidInput, match="no input"):
        pool.infer_many(config(), [1, None])
    assert pool.stats("doubler")["items"] == 0


def test_a_slow_answer_times_out(pool):
    with pytest.raises(InferenceTimeout, match="did not answer within"):
        pool.infer(config(compute_seconds=1.0), 1, timeout=0.05)


def test_a_model_that_fails_to_load_is_not_kept(pool):
    with pytest.raises(ModelLoadError, match="weights missing"):
        pool.infer(config(fail_load=True), 1)
    assert pool.loaded() == []


def test_least_recently_used_idle_model_is_evicted_to_fit_the_budget(pool):
    pool.infer(config("a", memory_mb=40), 1)
    pool.infer(config("b", memory_mb=40), 1)
    pool.infer(config("a", memory_mb=40), 1)  # a is now more recent than b
    pool.infer(config("c", memory_mb=40), 1)
    assert sorted(pool.loaded()) == ["a", "c"]
    assert pool.used_memory_mb() <= 100


def test_a_busy_model_is_not_evicted(pool):
    slow = config("slow", memory_mb=60, compute_seconds=0.5, max_wait_ms=0)
    pool.infer(slow, 1)
    future = pool.submit_many(slow, [2])[0]
    time.sleep(0.1)  # let the batch start
    pool.infer(config("other", memory_mb=60), 1)
    assert "slow" in pool.loaded()
    assert future.result(5) == 4


def test_a_changed_spec_replaces_the_loaded_instance(pool):
    pool.infer(config(memory_mb=10), 1)
    pool.infer(config(memory_mb=11), 1)
    assert pool.stats("doubler")["loads"] == 2
    assert pool.loaded() == ["doubler"]


def test_preload_reports_each_models_outcome(pool):
    outcome = pool.preload([config("good"), config("bad", fail_load=True)])
    assert outcome[0] == ("good", None)
    assert outcome[1][0] == "bad" and "weights missing" in outcome[1][1]


def test_real_embeddings_batch_and_match_one_by_one(shared_pool, minilm_config):
    texts = [f"sentence number {n} about {topic}" for n, topic in enumerate(["cats", "dogs", "taxes", "music"] * 4)]
    alone = [shared_pool.infer(minilm_config, text).vector for text in texts[:4]]
    before = shared_pool.stats("minilm-l6")["batches"]
    with ThreadPoolExecutor(16) as executor:
        together = list(executor.map(lambda t: shared_pool.infer(minilm_config, t).vector, texts))
    batches = shared_pool.stats("minilm-l6")["batches"] - before
    assert batches < len(texts)
    for a, b in zip(alone, together[:4]):
        assert np.allclose(a, b, atol=1e-5)
