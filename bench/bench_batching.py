"""Dynamic batching: concurrent single-text embedding callers, batching on vs off, side by side."""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from harness import Table, corpus

CALLERS, REQUESTS_PER_CALLER, ROUNDS = 32, 8, 3
TARGET_SPEED_UP = 3.0


def _throughput(pool, config, texts: list[str]) -> tuple[float, dict]:
    """Median texts/s over ROUNDS, and what the pool did meanwhile: its batches as its own statistics
    recorded them, the warm-up's left out."""
    stats = pool.get(config).stats  # the pool's record of this model: a sample per batch and per item
    calls, items = stats.calls, stats.items
    marks = len(stats.batch_sizes), len(stats.compute_ms), len(stats.queue_ms)

    def caller(index: int) -> None:
        for j in range(REQUESTS_PER_CALLER):
            pool.infer(config, texts[(index * REQUESTS_PER_CALLER + j) % len(texts)])

    rates = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        with ThreadPoolExecutor(CALLERS) as executor:
            list(executor.map(caller, range(CALLERS)))
        rates.append(CALLERS * REQUESTS_PER_CALLER / (time.perf_counter() - started))

    samples = stats.batch_sizes, stats.compute_ms, stats.queue_ms
    if any(len(values) == values.maxlen for values in samples):
        raise RuntimeError("The pool's statistics dropped samples: fewer requests per round, or a larger sample window.")
    sizes, compute_ms, queue_ms = (list(values)[mark:] for values, mark in zip(samples, marks))
    if stats.items - items != CALLERS * REQUESTS_PER_CALLER * ROUNDS or sum(sizes) != stats.items - items:
        raise RuntimeError(f"The pool ran {stats.items - items} texts in {len(sizes)} batches for "
                           f"{CALLERS * REQUESTS_PER_CALLER * ROUNDS} requests.")
    return statistics.median(rates), {
        "batches": stats.calls - calls,
        "mean_batch": (stats.items - items) / (stats.calls - calls),
        "median_batch": statistics.median(sizes),
        "max_batch": max(sizes),
        "compute_ms_p50": statistics.median(compute_ms),
        "queue_ms_p50": statistics.median(queue_ms),
    }


def run() -> Table:
    from inference.pool import ModelPool
    from registry.models import ModelSpec
    from registry.services import register_starter_pack

    load_before = os.getloadavg()[0]
    register_starter_pack()
    config = ModelSpec.objects.get(slug="minilm-l6").to_config()
    texts = corpus(CALLERS * REQUESTS_PER_CALLER)
    rows = []
    results = {}
    for label, batching in (
        ("off (one text per forward pass)", False),
        (f"on (up to {config.max_batch_size} texts, wait ≤ {config.max_wait_ms:g} ms)", True),
    ):
        pool = ModelPool(memory_budget_mb=4096, batching=batching)
        pool.infer(config, "warm up")
        rate, seen = _throughput(pool, config, texts)
        pool.shutdown()
        results[batching] = rate
        rows.append([label, rate, seen["batches"], seen["mean_batch"], f"{seen['median_batch']:g} / {seen['max_batch']}",
                     seen["compute_ms_p50"], seen["queue_ms_p50"]])
    speed_up = results[True] / results[False]
    verdict = "met" if speed_up >= TARGET_SPEED_UP else "missed"
    rows.append([f"speed-up (target ≥ {TARGET_SPEED_UP:g}×: {verdict})", speed_up, "", "", "", "", ""])
    return Table(
        title=f"Dynamic batching — MiniLM embeddings, {CALLERS} concurrent single-text callers",
        columns=["batching", f"texts/s (median of {ROUNDS})", "batches", "mean batch", "median / largest batch",
                 "p50 compute ms/batch", "p50 queue ms"],
        rows=rows,
        notes=[
            f"{CALLERS} threads × {REQUESTS_PER_CALLER} requests per round, {ROUNDS} rounds; texts are docstring "
            "sentences.",
            "Batches, their sizes and the compute and queue times are the pool's own statistics over the timed rounds "
            f"(the warm-up left out): {CALLERS * REQUESTS_PER_CALLER * ROUNDS} texts each way. With {CALLERS} callers "
            f"waiting on one text each, no batch can hold more than {CALLERS} texts, whatever the model's limit.",
            f"The machine's 1-minute load average was {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} "
            f"after, on {os.cpu_count()} cores: other work slows both rows, not necessarily alike.",
        ],
    )
