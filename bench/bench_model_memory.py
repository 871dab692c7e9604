"""Model server memory under mixed traffic: glibc's defaults against the heap settings it runs with.

The soak found the model server's RSS climbing for minutes after its warm-up while nothing leaked: with
glibc's moving mmap threshold, the models' activation buffers come from malloc's heaps, and each new
input shape (a longer text, more documents to rerank) leaves freed memory there that RSS keeps
(inference/memory.py). This probe starts one `manage.py modelserver` per heap configuration, loads the
text models the soak calls most (MiniLM embeddings, zero-shot classification with request labels and
with fixed ones, a cross-encoder reranker, lid.176) in each, and sends every one the same seeded rounds
of calls of varying sizes from a few client threads, server after server. It prints RSS per round,
sampled during the round (what the soak sees) and after it, once the server has gone idle, and what
the settings cost in latency and CPU.

Sizes: MODELGATE_BENCH_MODELMEM_ROUNDS (5), _CALLS (calls per client thread per round, 20), _CLIENTS (4).
Standalone, without touching BENCHMARKS.md: `.venv/bin/python bench/bench_model_memory.py`.
"""
from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness import ROOT, Table, corpus

ENV_PREFIX = "MODELGATE_BENCH_MODELMEM_"


def _size(name: str, default: int) -> int:
    raw = os.environ.get(ENV_PREFIX + name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise RuntimeError(f"{ENV_PREFIX}{name} must be a whole number; got {raw!r}.") from None
    if value < 1:
        raise RuntimeError(f"{ENV_PREFIX}{name} must be at least 1; got {value}.")
    return value


ROUNDS = _size("ROUNDS", 5)
CALLS = _size("CALLS", 20)
CLIENTS = _size("CLIENTS", 4)
SEED = 20261204
SAMPLE_SECONDS = 0.5
SETTLE_SECONDS = 4.0  # after a round: long enough for an idle trim (a quarter of the trim interval, and a poll)
READY_SECONDS = 90
TIMEOUT_SECONDS = 120.0

# (label, the model server's heap settings): glibc's own first, the model server's defaults last.
GLIBC = {"MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB": "0", "MODELGATE_MODEL_MALLOC_ARENA_MAX": "0", "MODELGATE_MODEL_TRIM_SECONDS": "0"}
VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("glibc defaults (moving mmap threshold, 8 arenas per core, no trim)", GLIBC),
    ("2 arenas, trim every 10 s", {**GLIBC, "MODELGATE_MODEL_MALLOC_ARENA_MAX": "2", "MODELGATE_MODEL_TRIM_SECONDS": "10"}),
    ("mmap threshold 128 KiB, 2 arenas, trim every 10 s",
     {"MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB": "128", "MODELGATE_MODEL_MALLOC_ARENA_MAX": "2", "MODELGATE_MODEL_TRIM_SECONDS": "10"}),
    ("mmap threshold 1 MiB, 2 arenas, trim every 10 s (the defaults)",
     {"MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB": "1024", "MODELGATE_MODEL_MALLOC_ARENA_MAX": "2", "MODELGATE_MODEL_TRIM_SECONDS": "10"}),
]
# MODELGATE_BENCH_MODELMEM_WARMUP=1 compares the first and last configurations with and without a warm-up at
# the largest shapes the text models take (a full batch at the longest sequence) right after loading.
WARMUP = os.environ.get(ENV_PREFIX + "WARMUP", "") == "1"
LABELS = ("programming", "money", "food", "health", "weather")


@dataclass
class Round:
    during: list[float] = field(default_factory=list)  # RSS MB sampled while the calls ran
    after: float = 0.0  # RSS MB once idle
    latencies: list[float] = field(default_factory=list)  # ms per call
    cpu: float = 0.0  # the server's CPU seconds (user + system) for the round's calls


@dataclass
class Outcome:
    label: str
    loaded: float  # RSS MB with the models loaded, before any call
    rounds: list[Round]
    heap: dict[str, Any]
    errors: list[str]


def _calls(rng: random.Random, texts: list[str], configs: dict[str, Any]) -> list[tuple[Any, list[Any]]]:
    """One client's calls for one round: the soak's text endpoints with their sizes varied further."""
    from inference.payloads import ClassificationInput, LanguageIdInput, RerankInput

    def text() -> str:
        if rng.random() < 0.15:  # now and then a long one: up to the embedding window and past it
            return " ".join(rng.choice(texts) for _ in range(rng.randint(3, 8)))
        return rng.choice(texts)

    calls = []
    for _ in range(CALLS):
        kind = rng.choices(["embeddings", "rerank", "labels", "topics", "lid"], [10, 5, 7, 5, 10])[0]
        if kind == "embeddings":
            calls.append((configs["embeddings"], [text() for _ in range(rng.randint(1, 16))]))
        elif kind == "rerank":
            item = RerankInput(query=text(), documents=tuple(text() for _ in range(rng.randint(2, 12))))
            calls.append((configs["rerank"], [item]))
        elif kind == "labels":
            calls.append((configs["labels"], [ClassificationInput(text=text(), labels=LABELS) for _ in range(rng.randint(1, 3))]))
        elif kind == "topics":
            calls.append((configs["topics"], [ClassificationInput(text=text())]))
        else:
            calls.append((configs["lid"], [LanguageIdInput(text=text(), top_k=2) for _ in range(rng.randint(1, 3))]))
    return calls


@dataclass
class Server:
    label: str
    env: dict[str, str]
    warm: bool
    process: subprocess.Popen[bytes]
    pool: Any  # RemotePool
    loaded: float = 0.0
    rounds: list[Round] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _start(label: str, settings: dict[str, str], warm: bool, workdir: Path, index: int) -> Server:
    from inference.client import RemotePool

    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}  # the variant decides
    env.update({**settings, "MODELGATE_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"})
    address = f"unix://{workdir / f'variant-{index}.sock'}"
    with (workdir / f"variant-{index}.log").open("wb") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "modelserver", "--address", address],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(label=label, env=settings, warm=warm, process=process, pool=RemotePool(address))


def _ready(server: Server, configs: dict[str, Any], texts: list[str]) -> None:
    from inference.errors import ModelServerUnavailable

    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            server.pool.ping()
            break
        except ModelServerUnavailable:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"The model server of {server.label!r} did not start ({server.process.poll()}).") from None
            time.sleep(0.2)
    for config in configs.values():
        server.pool.load(config)
    if server.warm:
        from inference.payloads import RerankInput

        longest = [" ".join(texts[i:i + 12]) for i in range(0, 12 * 32, 12)]  # each past 256 and 512 tokens
        embeddings, rerank = configs["embeddings"], configs["rerank"]
        server.pool.infer_many(embeddings, longest[:embeddings.max_batch_size], timeout=TIMEOUT_SECONDS)
        server.pool.infer_many(rerank, [RerankInput(query=longest[0], documents=tuple(longest[:8]))], timeout=TIMEOUT_SECONDS)


def _round(server: Server, number: int, texts: list[str], configs: dict[str, Any]) -> None:
    """One round of calls against one server, RSS sampled while they run and once it is idle again."""
    process = psutil.Process(server.process.pid)
    current, done = Round(), threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            current.during.append(process.memory_info().rss / 2**20)

    def client(index: int) -> None:
        rng = random.Random(SEED + 1000 * number + index)  # the same calls for every variant
        for config, items in _calls(rng, texts, configs):
            started = time.perf_counter()
            try:
                server.pool.infer_many(config, items, timeout=TIMEOUT_SECONDS)
            except Exception as exc:  # counted and shown: a probe that errs measures less work
                server.errors.append(f"{config.slug}: {type(exc).__name__}: {exc}")
            current.latencies.append((time.perf_counter() - started) * 1000)

    sampler = threading.Thread(target=sample, daemon=True)
    cpu = process.cpu_times()
    sampler.start()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    end = process.cpu_times()
    current.cpu = end.user + end.system - cpu.user - cpu.system
    time.sleep(SETTLE_SECONDS)
    current.after = process.memory_info().rss / 2**20
    server.rounds.append(current)
    print(f"  round {number + 1}, {server.label}: RSS during {statistics.fmean(current.during or [0]):,.0f} MB "
          f"(max {max(current.during or [0]):,.0f}), after {current.after:,.0f} MB; "
          f"p50 {statistics.median(current.latencies):.0f} ms; CPU {current.cpu:.1f} s", flush=True)


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _probe(workdir: Path, texts: list[str], configs: dict[str, Any]) -> list[Outcome]:
    """Every variant's server up at once, idle but for its own turn: each round runs against one server
    after the other, in an order that rotates, so that other work on the machine falls on all alike."""
    variants = [(label, settings, False) for label, settings in VARIANTS]
    if WARMUP:
        variants = [(label + suffix, settings, warm) for label, settings in (VARIANTS[0], VARIANTS[-1])
                    for suffix, warm in (("", False), (", warm-up at the largest shapes", True))]
    servers: list[Server] = []
    try:
        for index, (label, settings, warm) in enumerate(variants):
            servers.append(_start(label, settings, warm, workdir, index))
            _ready(servers[-1], configs, texts)  # one load at a time: loads are CPU-bound
        time.sleep(SETTLE_SECONDS)
        for server in servers:
            server.loaded = psutil.Process(server.process.pid).memory_info().rss / 2**20
        for number in range(ROUNDS):
            shift = number % len(servers)
            for server in servers[shift:] + servers[:shift]:
                _round(server, number, texts, configs)
        return [Outcome(label=s.label, loaded=s.loaded, rounds=s.rounds, heap=s.pool.ping().get("heap", {}), errors=s.errors)
                for s in servers]
    finally:
        for server in servers:
            _stop(server)


def run() -> Table:
    from django.conf import settings

    from bench_soak import EMBEDDING_SLUG, LID_SLUG, RERANK_SLUG, TOPICS_SLUG, ZERO_SHOT_SLUG, _register_models
    from registry.models import ModelSpec
    from registry.services import ensure_prepared, register_starter_pack

    started = time.perf_counter()
    register_starter_pack()
    texts = corpus(400, max_chars=300)
    roots = os.environ.get("MODELGATE_MODEL_ROOTS"), settings.MODELGATE_MODEL_ROOTS
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-modelmem-") as tmp:
        workdir = Path(tmp)
        try:
            _register_models(workdir)
            slugs = {"embeddings": EMBEDDING_SLUG, "rerank": RERANK_SLUG, "labels": ZERO_SHOT_SLUG, "topics": TOPICS_SLUG,
                     "lid": LID_SLUG}
            configs = {}
            for role, slug in slugs.items():
                spec = ModelSpec.objects.get(slug=slug)
                ensure_prepared(spec)
                configs[role] = spec.to_config()
            outcomes = _probe(workdir, texts, configs)
        finally:
            # Gone with their directory; the soak (after this one in `make bench`) registers them afresh.
            ModelSpec.objects.filter(slug__in=[TOPICS_SLUG, RERANK_SLUG]).delete()
            settings.MODELGATE_MODEL_ROOTS = roots[1]
            if roots[0] is None:
                os.environ.pop("MODELGATE_MODEL_ROOTS", None)
            else:
                os.environ["MODELGATE_MODEL_ROOTS"] = roots[0]
    return _table(outcomes, runtime=time.perf_counter() - started)


def _versus(mb: float, base_mb: float) -> str:
    """A growth in MB and its ratio to the first configuration's (when that grew at all)."""
    return f"{mb:+,.0f} MB (×{mb / base_mb:.2f})" if base_mb > 0 else f"{mb:+,.0f} MB"


def _table(outcomes: list[Outcome], *, runtime: float) -> Table:
    base = outcomes[0]

    def during(outcome: Outcome, index: int) -> float:
        return statistics.fmean(outcome.rounds[index].during or [outcome.rounds[index].after])

    def growth(outcome: Outcome) -> float:  # after the first round (the warm-up), sampled under load
        return during(outcome, -1) - during(outcome, 0)

    def p50(outcome: Outcome) -> float:
        return statistics.median([ms for r in outcome.rounds[1:] or outcome.rounds for ms in r.latencies])

    def cpu(outcome: Outcome) -> float:
        return sum(r.cpu for r in outcome.rounds[1:] or outcome.rounds)

    rows = []
    for outcome in outcomes:
        trims = outcome.heap.get("trims", 0)
        rows.append([
            outcome.label,
            f"{outcome.loaded:,.0f}",
            ", ".join(f"{during(outcome, i):,.0f}" for i in range(len(outcome.rounds))),
            ", ".join(f"{r.after:,.0f}" for r in outcome.rounds),
            _versus(growth(outcome), growth(base)),
            _versus(during(outcome, -1) - outcome.loaded, during(base, -1) - base.loaded),
            f"{p50(outcome):,.0f} (×{p50(outcome) / p50(base):.2f})",
            f"{cpu(outcome):,.1f} (×{cpu(outcome) / cpu(base):.2f})",
            f"{trims}: mean {outcome.heap.get('trim_ms_mean')} ms, max {outcome.heap.get('trim_ms_max')} ms" if trims else "—",
            len(outcome.errors),
        ])
    calls = CLIENTS * CALLS
    notes = [
        "Each configuration: a `manage.py modelserver` of its own on a unix socket, its MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB, "
        "MODELGATE_MODEL_MALLOC_ARENA_MAX and MODELGATE_MODEL_TRIM_SECONDS set (0: glibc's own; no MALLOC_* variable), the "
        f"five models loaded. Then {ROUNDS} rounds of {CLIENTS} client threads × {CALLS} calls ({calls} calls a round) "
        "through RemotePool, as web workers call it; each round runs against every server in turn, in an order that "
        "rotates by round, the others idle meanwhile. The calls are seeded by round and thread: every configuration "
        "gets the same ones. Mix "
        "(weights): embeddings of 1–16 texts (10), rerank of a query and 2–12 documents (5), zero-shot with 5 request "
        "labels, 1–3 texts (7), fixed labels, 1 text (5), language of 1–3 texts (10); a text is a docstring sentence "
        "of the harness corpus (≤ 300 characters), 15% of them 3–8 sentences joined (past MiniLM's 256-token window).",
        f"RSS of the model server process (psutil): loaded = {SETTLE_SECONDS:g} s after the loads; during = mean of samples "
        f"every {SAMPLE_SECONDS:g} s while a round's calls run (what the soak samples); after = {SETTLE_SECONDS:g} s "
        "after the round, the server idle. Growth = during, last round minus first (the first is the warm-up: each "
        "model's first shapes). p50 ms: the client's time per call; CPU s: the server's user + system time for its "
        "calls (page faults of mapped buffers show there); both over the rounds after the first.",
        "The machine is shared with other work: compare the ratios to the first row, not the absolute numbers. "
        f"Runtime {runtime / 60:.1f} min.",
    ]
    failures = [e for o in outcomes for e in o.errors]
    if failures:
        notes.append("First errors: " + " | ".join(failures[:5]))
    notes.append(f"Sizes: {ENV_PREFIX}ROUNDS ({ROUNDS}), _CALLS ({CALLS}), _CLIENTS ({CLIENTS}).")
    return Table(
        title="Model server memory — heap settings under mixed text traffic",
        columns=["heap", "loaded MB", "RSS during each round MB", "RSS after each round MB",
                 "growth after round 1", "last round − loaded", "p50 ms", "CPU s", "trims", "errors"],
        rows=rows,
        notes=notes,
    )


if __name__ == "__main__":  # a probe run: prints the table, leaves BENCHMARKS.md alone
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import bench_database, setup_django

    setup_django()
    with bench_database("bench_modelgate_model_memory"):
        print(run().markdown())
