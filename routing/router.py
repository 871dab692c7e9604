"""The router: every request takes this one path — candidates, execution, quality check, escalation or
fallback — and every attempt leaves an InferenceRecord, written pending before the work starts."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.utils import timezone
from rest_framework import status

from config.db import insert_row, update_rows
from config.errors import ApiError
from inference.errors import InferenceError, InvalidInput
from inference.payloads import GenerationInput
from billing import services as billing
from billing.models import Budget
from billing.ratelimits import take_tokens
from billing.services import BudgetExceeded, Hold, Refusal, budget_of
from registry.models import ModelSpec
from registry.services import ensure_prepared, get_pool
from routing import config_cache, quality
from routing.models import InferenceRecord, RoutingPolicy
from tenants.models import ApiKey

logger = logging.getLogger("modelgate.routing")

PREVIEW_CHARS = 200


class UnknownModel(ApiError):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "unknown_model"


class ModelNotAllowed(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "model_not_allowed"


class NoModelAvailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "no_model_available"


class UpstreamFailed(ApiError):
    status_code = status.HTTP_502_BAD_GATEWAY
    default_code = "upstream_failed"


class InputRejected(ApiError):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_input"


@dataclass
class Summary:
    """What the record keeps of the input: digest and preview (full text only on opt-in), and units."""

    text: str
    unit: str
    units_in: float
    max_output_tokens: int | None = None  # what the request allows the model to write: its cost ceiling


@dataclass
class Routed:
    values: list[Any]
    record: InferenceRecord
    spec: ModelSpec | None
    attempts: list[InferenceRecord] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.record.cached


@dataclass
class Outcome:
    values: list[Any]
    queue_ms: float | None
    compute_ms: float
    units_out: float
    tokens_in: float | None = None  # premium usage, as the provider reported it
    tokens_out: float | None = None


def route(
    *,
    key: ApiKey,
    task: str,
    items: list[Any],
    summary: Summary,
    request_id: str,
    model: str = "auto",
    units_out: Callable[[list[Any]], float] = lambda values: 0.0,
    tokens_in: Callable[[list[Any]], float] | None = None,
    accept: Callable[[ModelSpec], bool] | None = None,
) -> Routed:
    """Answer `items` (one per input of the request) for `key`'s tenant; raise an ApiError when nobody can.

    `accept` narrows the candidates to models able to take this request (e.g. zero-shot ones when the
    request brings its own labels).
    """
    policy, candidates, reason, complexity = plan(key=key, task=task, items=items, model=model, accept=accept)
    cache_key = _cache_key(key, task, candidates[0], items) if policy.cache_enabled else None
    if cache_key is not None:
        hit = cache.get(cache_key)
        if hit is not None:
            record = admit(key=key, task=task, spec=candidates[0], summary=summary, request_id=request_id,
                           reason="result cache hit", complexity=complexity, previous=None)
            complete(record, status=InferenceRecord.Status.OK, values=hit, outcome=None, cost=Decimal("0"), cached=True)
            return Routed(values=hit, record=record, spec=candidates[0], attempts=[record])

    attempts: list[InferenceRecord] = []
    charge = take_tokens(key, token_estimate(task, summary))
    try:
        return _attempt(key=key, task=task, items=items, summary=summary, request_id=request_id, model=model,
                        units_out=units_out, tokens_in=tokens_in, policy=policy, candidates=candidates, reason=reason,
                        complexity=complexity, cache_key=cache_key, attempts=attempts)
    finally:
        if charge is not None:
            charge.true_up(sum(tokens_used(record) for record in attempts))


def _attempt(*, key: ApiKey, task: str, items: list[Any], summary: Summary, request_id: str, model: str,
             units_out: Callable[[list[Any]], float], tokens_in: Callable[[list[Any]], float] | None,
             policy: RoutingPolicy, candidates: list[ModelSpec], reason: str, complexity: Any, cache_key: str | None,
             attempts: list[InferenceRecord]) -> Routed:
    previous: InferenceRecord | None = None
    last_error: str = ""
    budget = budget_of(key.tenant)
    for position, spec in enumerate(candidates):
        has_next = position + 1 < len(candidates)
        held, record = hold_and_admit(budget=budget, key=key, task=task, spec=spec, summary=summary,
                                      request_id=request_id, reason=reason, complexity=complexity, previous=previous)
        if isinstance(held, Refusal):
            # Reserve before the call: without room in the budget, the model is never called.
            reason, previous = refuse(held, record, budget=budget, spec=spec, rest=candidates[position + 1:],
                                      attempts=attempts)
            continue
        attempts.append(record)
        try:
            outcome = execute(spec=spec, task=task, items=items, tenant=key.tenant)
        except InvalidInput as exc:
            release(held, record=record, status=InferenceRecord.Status.REJECTED, code=exc.code, message=str(exc))
            if not (has_next and model == "auto"):
                raise InputRejected(str(exc)) from None
            # One model's limits (a prompt too long for a small local model) need not be the request's.
            reason, previous = f"fallback after {spec.slug} refused the input: {exc}", record
            continue
        except (InferenceError, ValidationError, OSError) as exc:
            message = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            code = getattr(exc, "code", "error") if isinstance(exc, InferenceError) else "model_unavailable"
            release(held, record=record, status=InferenceRecord.Status.ERROR, code=code, message=message)
            last_error = f"{spec.slug}: {message}"
            reason = f"fallback after {spec.slug} failed ({code})"
            previous = record
            logger.warning("candidate failed", extra={"model": spec.slug, "code": code})
            continue
        except BaseException as exc:
            # The hold must never outlive the request, whatever happened.
            release(held, record=record, status=InferenceRecord.Status.ERROR, code="internal_error", message=repr(exc))
            raise

        try:
            verdict = quality.judge(task, items, outcome.values)
            if task == "translation" and verdict.problem is None and spec.is_local and has_next:
                verdict = _check_output_language(items, outcome.values, verdict)
            outcome.units_out = units_out(outcome.values)
            if tokens_in is not None and outcome.tokens_in is None:
                # Local models that count their input (embeddings) report tokens like an API would.
                outcome.tokens_in = tokens_in(outcome.values)
            cost = actual_cost(spec, summary, outcome)
        except BaseException as exc:
            # As for the call itself: the hold never outlives the request.
            release(held, record=record, status=InferenceRecord.Status.ERROR, code="internal_error", message=repr(exc))
            raise
        below_floor = verdict.confidence is not None and verdict.confidence < policy.confidence_floor
        if (verdict.problem or below_floor) and has_next and model == "auto":
            why = verdict.problem or f"confidence {verdict.confidence:.2f} < floor {policy.confidence_floor:.2f}"
            settle(held, record, status=InferenceRecord.Status.ESCALATED, values=outcome.values, outcome=outcome,
                   cost=cost, confidence=verdict.confidence, reason_suffix=f"; escalated: {why}")
            reason = f"escalated from {spec.slug}: {why}"
            previous = record
            continue
        settle(held, record, status=InferenceRecord.Status.OK, values=outcome.values, outcome=outcome, cost=cost,
               confidence=verdict.confidence)
        if cache_key is not None:
            cache.set(cache_key, outcome.values, timeout=policy.cache_ttl_seconds)
        return Routed(values=outcome.values, record=record, spec=spec, attempts=attempts)
    raise UpstreamFailed(f"Every candidate model failed; last: {last_error}")


# --- policies and candidates -------------------------------------------------------------------
def plan(
    *, key: ApiKey, task: str, items: list[Any], model: str, accept: Callable[[ModelSpec], bool] | None = None
) -> tuple[RoutingPolicy, list[ModelSpec], str, quality.Complexity | None]:
    """The policy, the candidates in the order they will be tried, and why."""
    policy = policy_for(tenant=key.tenant, task=task)
    candidates, reason = _candidates(key=key, task=task, model=model, policy=policy, accept=accept)
    complexity = None
    if task == "generation" and model == "auto" and isinstance(items[0], GenerationInput):
        complexity = quality.complexity(items[0])
        premium = [spec for spec in candidates if not spec.is_local]
        if complexity.score > policy.complexity_threshold and premium:
            candidates = premium
            reason = (
                f"complexity {complexity.score:.2f} > threshold {policy.complexity_threshold:.2f} "
                f"({', '.join(complexity.reasons)}): local models skipped"
            )
        else:
            reason += f"; complexity {complexity.score:.2f} vs threshold {policy.complexity_threshold:.2f}"
    return policy, candidates, reason, complexity


def policy_for(*, tenant: Any, task: str) -> RoutingPolicy:
    """The tenant's policy for the task, else the global one, else the default (unsaved)."""

    def load() -> RoutingPolicy:
        policies = {p.tenant_id: p for p in RoutingPolicy.objects.filter(Q(tenant=tenant) | Q(tenant__isnull=True), task=task)}
        return policies.get(tenant.pk) or policies.get(None) or RoutingPolicy(task=task)

    return config_cache.remember(("policy", tenant.pk, task), load)


def _candidates(
    *, key: ApiKey, task: str, model: str, policy: RoutingPolicy, accept: Callable[[ModelSpec], bool] | None
) -> tuple[list[ModelSpec], str]:
    if model and model != "auto":
        spec = config_cache.remember(("spec", model), lambda: ModelSpec.objects.filter(slug=model, enabled=True).first())
        if spec is None or spec.task != task:
            raise UnknownModel(f"No enabled {task} model named {model!r}; GET /v1/models lists them.")
        if not key.may_use(spec.slug, is_local=spec.is_local):
            raise ModelNotAllowed(f"This key may not use {model!r}.")
        if accept is not None and not accept(spec):
            raise UnknownModel(f"{model!r} cannot take this request (e.g. candidate labels need a zero-shot model).")
        return [spec], f"pinned by the request to {model}"
    if policy.candidates:
        def load() -> list[ModelSpec]:
            found = {s.slug: s for s in ModelSpec.objects.filter(slug__in=policy.candidates, enabled=True, task=task)}
            return [found[slug] for slug in policy.candidates if slug in found]

        ordered = config_cache.remember(("candidates", task, tuple(policy.candidates)), load)
        origin = "tenant policy" if policy.tenant_id else "global policy"
    else:
        # No policy yet: every enabled model of the task, local first.
        ordered = config_cache.remember(
            ("candidates", task, None),
            lambda: sorted(ModelSpec.objects.filter(enabled=True, task=task), key=lambda s: (not s.is_local, s.slug)),
        )
        origin = "default order (local first)"
    allowed = [
        spec for spec in ordered if key.may_use(spec.slug, is_local=spec.is_local) and (accept is None or accept(spec))
    ]
    if not allowed:
        raise NoModelAvailable(f"No {task} model is available to this key.")
    return allowed, f"{origin}: {' → '.join(s.slug for s in allowed)}"


# --- execution ----------------------------------------------------------------------------------
def execute(*, spec: ModelSpec, task: str, items: list[Any], tenant: Any = None) -> Outcome:
    if spec.is_local:
        config = config_cache.remember(("model-config", spec.pk, spec.updated_at), lambda: _prepared_config(spec))
        values, timing = get_pool().infer_timed(config, items, timeout=settings.MODELGATE_REQUEST_TIMEOUT)
        return Outcome(values=values, queue_ms=timing.queue_ms, compute_ms=timing.compute_ms, units_out=0.0)
    from routing.premium import run_premium

    return run_premium(spec=spec, task=task, items=items, tenant=tenant)


def _prepared_config(spec: ModelSpec) -> Any:
    ensure_prepared(spec)
    return spec.to_config()


def _check_output_language(items: list[Any], values: list[Any], verdict: quality.Verdict) -> quality.Verdict:
    """A translation in the wrong language is wrong however confident the model was."""
    lid = ModelSpec.objects.filter(task="language_id", enabled=True, source_kind__in=["package", "path", "hub"]).first()
    if lid is None:
        return verdict
    from inference.payloads import LanguageIdInput

    texts = [LanguageIdInput(text=value.text) for value in values if len(value.text) >= 20]
    if not texts:
        return verdict
    try:
        guesses = get_pool().infer_many(lid.to_config(), texts, timeout=10)
    except (InferenceError, ValidationError, OSError) as exc:
        # The check is a safeguard; when it cannot run, the translation is judged without it.
        logger.warning("output language check skipped", extra={"model": lid.slug, "error": str(exc)})
        return verdict
    wanted = [value.target.split("-")[0] for value in values if len(value.text) >= 20]
    for guess, target in zip(guesses, wanted):
        if guess and guess[0].probability > 0.5 and guess[0].language != target:
            return quality.Verdict(confidence=verdict.confidence, problem=f"output is in {guess[0].language}, not {target}")
    return verdict


# --- records ------------------------------------------------------------------------------------
def new_record(*, key: ApiKey, task: str, spec: ModelSpec, summary: Summary, request_id: str, reason: str,
               complexity: Any, previous: InferenceRecord | None, reserved: Decimal = Decimal("0")) -> InferenceRecord:
    """The attempt's pending record, not saved yet."""
    text = summary.text
    return InferenceRecord(
        request_id=request_id,
        tenant_id=key.tenant_id,
        api_key=key,
        task=task,
        model=spec,
        model_slug=spec.slug,
        tier=spec.tier,
        input_digest=hashlib.sha256(text.encode()).hexdigest(),
        input_preview=text[:PREVIEW_CHARS],
        input_text=text if key.tenant.store_full_text else "",
        unit=summary.unit,
        units_in=summary.units_in,
        reserved_cost=reserved,
        complexity=complexity.score if complexity else None,
        routing_reason=reason,
        escalated_from=previous,
    )


def admit(**fields: Any) -> InferenceRecord:
    record = new_record(**fields)
    insert_row(record)
    return record


def completion(record: InferenceRecord, *, status: str, values: list[Any], outcome: Outcome | None, cost: Decimal,
               confidence: float | None = None, cached: bool = False, reason_suffix: str = "") -> dict[str, Any]:
    """Complete `record` in memory; returns the columns to write (the row was written whole at admission)."""
    now = timezone.now()
    record.status = status
    record.completed_at = now
    record.output_preview = _preview(values)
    record.items = len(values)
    record.cost = cost
    record.cached = cached
    record.confidence = confidence
    record.latency_ms = (now - record.created_at).total_seconds() * 1000
    changed = ["status", "completed_at", "output_preview", "items", "cost", "cached", "confidence", "latency_ms", "compute_ms"]
    if reason_suffix:
        record.routing_reason += reason_suffix
        changed.append("routing_reason")
    if outcome is not None:
        record.queue_ms = outcome.queue_ms
        record.compute_ms = outcome.compute_ms
        record.units_out = outcome.units_out
        changed += ["queue_ms", "units_out"]
        if outcome.tokens_in is not None:
            record.units_in = outcome.tokens_in
            record.unit = "tokens"
            changed += ["units_in", "unit"]
    else:
        record.compute_ms = 0.0
    return {name: getattr(record, name) for name in changed}


def complete(record: InferenceRecord, **fields: Any) -> None:
    update_rows(InferenceRecord.objects.filter(pk=record.pk), completion(record, **fields))


def failure(record: InferenceRecord, *, status: str, code: str, message: str) -> dict[str, Any]:
    """Close `record` as failed in memory; returns the columns to write."""
    now = timezone.now()
    record.status, record.completed_at = status, now
    record.error_code, record.error_message = code[:64], message[:2000]
    record.latency_ms = (now - record.created_at).total_seconds() * 1000
    return {"status": status, "completed_at": now, "error_code": record.error_code,
            "error_message": record.error_message, "latency_ms": record.latency_ms}


def fail(record: InferenceRecord, **fields: Any) -> None:
    update_rows(InferenceRecord.objects.filter(pk=record.pk), failure(record, **fields))


def _preview(values: list[Any]) -> str:
    first = values[0] if values else None
    text = getattr(first, "text", None)
    if text is None:
        if hasattr(first, "intent"):
            text = f"{first.intent} ({first.confidence:.2f}): {first.transcription.text}"
        elif hasattr(first, "predicted"):
            text = ", ".join(first.predicted)
        elif isinstance(first, list) and first and hasattr(first[0], "language"):
            text = ", ".join(f"{g.language} {g.probability:.2f}" for g in first)
        elif hasattr(first, "vector"):
            text = f"{len(values)} vectors of {len(first.vector)} dimensions"
        elif hasattr(first, "scores"):
            text = f"{len(first.scores)} scores"
        else:
            text = ""
    return text[:PREVIEW_CHARS]


# --- money ---------------------------------------------------------------------------------------
# With a budget, every step that moves money writes the record in the same SQL statement: one round
# trip and one commit, as without a budget, and never money moved without the record that says why
# (a pending record always means a hold outstanding, which is what the reaper relies on).
def hold_and_admit(*, budget: Budget | None, key: ApiKey, task: str, spec: ModelSpec, summary: Summary,
                   request_id: str, reason: str, complexity: Any,
                   previous: InferenceRecord | None) -> tuple[Hold | Refusal, InferenceRecord]:
    """Reserve the attempt's maximum cost and write its pending record. On a Refusal the record is
    written too, for refuse() to close. Past the limit, a `local_only` budget still serves local
    models, uncharged."""
    estimate = estimate_cost(spec, summary)
    record = new_record(key=key, task=task, spec=spec, summary=summary, request_id=request_id, reason=reason,
                        complexity=complexity, previous=previous, reserved=estimate)
    if budget is None:
        insert_row(record)
        return Hold(budget=None, amount=estimate), record
    result = billing.reserve(budget, estimate, key_id=key.pk, model_slug=spec.slug, insert=record)
    if isinstance(result, Refusal) and spec.is_local and not result.model_only and budget.at_limit == budget.AtLimit.LOCAL_ONLY:
        record.reserved_cost = Decimal("0")
        record.routing_reason += "; budget used up: served locally without charge"
        InferenceRecord.objects.filter(pk=record.pk).update(reserved_cost=record.reserved_cost,
                                                            routing_reason=record.routing_reason)
        return Hold(budget=None, amount=Decimal("0")), record
    return result, record


def refuse(refusal: Refusal, record: InferenceRecord, *, budget: Budget, spec: ModelSpec, rest: list[ModelSpec],
           attempts: list[InferenceRecord]) -> tuple[str, InferenceRecord]:
    """Close an attempt the money refused; return (reason, record) for trying the next candidate, or
    raise 402 when none may answer."""
    attempts.append(record)
    record.reserved_cost = Decimal("0")
    InferenceRecord.objects.filter(pk=record.pk).update(
        reserved_cost=record.reserved_cost,
        **failure(record, status=InferenceRecord.Status.REJECTED, code="budget_exceeded", message=refusal.message),
    )
    if refusal.by_budget:
        from billing.alerts import budget_exhausted

        budget_exhausted(budget)
    if refusal.model_only and rest:
        return f"{spec.slug} skipped: its spending limit is used up", record
    if budget.at_limit == budget.AtLimit.LOCAL_ONLY and any(c.is_local for c in rest):
        return f"{spec.slug} skipped: budget used up, local models only", record
    raise BudgetExceeded(refusal.message)


def settle(held: Hold, record: InferenceRecord, *, cost: Decimal, **fields: Any) -> None:
    """Charge the actual cost and complete the record, together."""
    billing.settle(held, cost, record_id=record.pk,
                   update=(InferenceRecord.objects.filter(pk=record.pk), completion(record, cost=cost, **fields)))


def release(held: Hold, *, record: InferenceRecord, status: str, code: str, message: str) -> None:
    """Free the hold and close the record, together."""
    billing.release(held, record_id=record.pk, update=(InferenceRecord.objects.filter(pk=record.pk),
                                                       failure(record, status=status, code=code, message=message)))


TOKEN_TASKS = {"generation", "embeddings"}


def token_estimate(task: str, summary: Summary) -> int:
    """The most tokens a request can use, for tokens-per-minute limits (chat and embeddings; tasks
    priced by characters or audio are held by requests per minute and the budget)."""
    if task not in TOKEN_TASKS:
        return 0
    tokens_in = max(summary.units_in if summary.unit == "tokens" else 0, len(summary.text) / 2)
    tokens_out = (summary.max_output_tokens or settings.MODELGATE_MAX_OUTPUT_TOKENS) if task == "generation" else 0
    return int(tokens_in) + 1 + tokens_out


def tokens_used(record: InferenceRecord) -> float:
    """What an attempt actually consumed, for truing up the tokens-per-minute count."""
    done = record.status in (InferenceRecord.Status.OK, InferenceRecord.Status.ESCALATED)
    if not done or record.task not in TOKEN_TASKS or record.unit != "tokens" or record.cached:
        return 0.0
    return record.units_in + (record.units_out if record.task == "generation" else 0.0)


def actual_cost(spec: ModelSpec, summary: Summary, outcome: Outcome) -> Decimal:
    """Actual cost from the units the model used: compute time for local models, usage for APIs."""
    if spec.is_local:
        return spec.price_per_compute_second * Decimal(str(round(outcome.compute_ms / 1000, 6)))
    cost = Decimal("0")
    if outcome.tokens_in is not None:
        cost += spec.price_input_per_1k_tokens * Decimal(str(outcome.tokens_in)) / 1000
        cost += spec.price_output_per_1k_tokens * Decimal(str(outcome.tokens_out or 0)) / 1000
    if summary.unit == "characters":
        cost += spec.price_per_1k_characters * Decimal(str(summary.units_in)) / 1000
    if summary.unit == "seconds":
        cost += spec.price_per_audio_minute * Decimal(str(summary.units_in)) / 60
    return cost


def estimate_cost(spec: ModelSpec, summary: Summary) -> Decimal:
    """The most this attempt can cost, reserved at admission (the billing seam settles it)."""
    if spec.is_local:
        return spec.price_per_compute_second * Decimal(str(settings.MODELGATE_REQUEST_TIMEOUT))
    # A token is ~4 characters of English; counting one per 2 characters keeps the hold an upper bound.
    tokens_in = Decimal(str(max(summary.units_in if summary.unit == "tokens" else 0, len(summary.text) / 2)))
    return (
        spec.price_input_per_1k_tokens * tokens_in / 1000
        + spec.price_output_per_1k_tokens * Decimal(str(summary.max_output_tokens or settings.MODELGATE_MAX_OUTPUT_TOKENS)) / 1000
        + spec.price_per_1k_characters * Decimal(str(summary.units_in if summary.unit == "characters" else 0)) / 1000
        + spec.price_per_audio_minute * Decimal(str(summary.units_in if summary.unit == "seconds" else 0)) / 60
    )


def _cache_key(key: ApiKey, task: str, spec: ModelSpec, items: list[Any]) -> str:
    # repr() of the frozen payload dataclasses is stable; audio arrays are hashed by their bytes.
    digest = hashlib.sha256()
    for item in items:
        samples = getattr(item, "samples", None)
        if samples is not None:
            digest.update(samples.tobytes())
            digest.update(repr(getattr(item, "language", None)).encode())
        else:
            digest.update(repr(item).encode())
    return f"mg:result:{key.tenant_id}:{task}:{spec.slug}:{spec.updated_at.timestamp()}:{digest.hexdigest()}"
