"""Dynamic batching: 32 concurrent single-text embedding callers, batching on vs off, side by side."""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from harness import Table, corpus

CALLERS, REQUESTS_PER_CALLER, ROUNDS = 32, 8, 3


def _throughput(pool, config, texts: list[str]) -> tuple[float, dict]:
    def caller(index: int) -> None:
        for j in range(REQUESTS_PER_CALLER):
            pool.infer(config, texts[(index * REQUESTS_PER_CALLER + j) % len(texts)])

    rates = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        with ThreadPoolExecutor(CALLERS) as executor:
            list(executor.map(caller, range(CALLERS)))
        rates.append(CALLERS * REQUESTS_PER_CALLER / (time.perf_counter() - started))
    return statistics.median(rates), pool.stats(config.slug)


def run() -> Table:
    from inference.pool import ModelPool
    from registry.models import ModelSpec
    from registry.services import register_starter_pack

    register_starter_pack()
    config = ModelSpec.objects.get(slug="minilm-l6").to_config()
    texts = corpus(CALLERS * REQUESTS_PER_CALLER)
    rows = []
    results = {}
    for label, batching in (("off (one text per forward pass)", False), ("on (max 32, wait ≤ 5 ms)", True)):
        pool = ModelPool(memory_budget_mb=4096, batching=batching)
        pool.infer(config, "warm up")
        rate, stats = _throughput(pool, config, texts)
        pool.shutdown()
        results[batching] = rate
        rows.append([label, rate, stats["mean_batch_size"], stats["compute_ms_p50"], stats["queue_ms_p50"]])
    rows.append(["speed-up", results[True] / results[False], "", "", ""])
    return Table(
        title="Dynamic batching — MiniLM embeddings, 32 concurrent single-text callers",
        columns=["batching", "texts/s (median of 3)", "mean batch", "p50 compute ms/batch", "p50 queue ms"],
        rows=rows,
        notes=[f"{CALLERS} threads × {REQUESTS_PER_CALLER} requests per round; texts are docstring sentences; target ≥ 3× with batching."],
        command="make bench BENCH=batching",
    )
