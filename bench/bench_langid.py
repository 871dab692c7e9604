"""Language ID throughput: our backend (and the pool) vs calling fastText directly, on 1,000 texts."""
from __future__ import annotations

from harness import Table, corpus, median_rate

TEXTS, ROUNDS = 1000, 7


def run() -> Table:
    from inference.langid import FastTextLanguageId
    from inference.pool import ModelPool
    from registry.models import ModelSpec
    from registry.services import register_starter_pack

    register_starter_pack()
    config = ModelSpec.objects.get(slug="lid-176").to_config()
    texts = corpus(TEXTS)
    backend = FastTextLanguageId(config)
    backend.load()
    backend.loaded = True
    raw = backend.model
    pool = ModelPool(memory_budget_mb=1024)
    pool.infer(config, "warm up")

    def direct() -> None:
        raw.predict([t.replace("\n", " ") for t in texts], k=1)

    def through_backend() -> None:
        backend.infer([backend.validate(t) for t in texts])

    def through_pool() -> None:
        pool.infer_many(config, texts)

    direct_rate, _ = median_rate(direct, count=1, rounds=ROUNDS)
    backend_rate, _ = median_rate(through_backend, count=1, rounds=ROUNDS)
    pool_rate, _ = median_rate(through_pool, count=1, rounds=ROUNDS)
    pool.shutdown()
    rows = [
        ["fastText predict(list) directly", direct_rate * TEXTS, 1.0],
        ["FastTextLanguageId.infer (validate + predict + results)", backend_rate * TEXTS, backend_rate / direct_rate],
        ["ModelPool.infer_many (queue, batches of up to 512)", pool_rate * TEXTS, pool_rate / direct_rate],
    ]
    return Table(
        title="Language ID — lid.176, a batch of 1,000 texts",
        columns=["path", "texts/s (median of 7)", "vs direct"],
        rows=rows,
        notes=["Target: the backend within 20% of fastText called directly (ratio ≥ 0.8)."],
    )
