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
from rest_framework import status

from core.errors import ApiError
from inference.errors import InferenceError, InvalidInput
from inference.payloads import GenerationInput
from billing.prices import Summary, actual_cost, token_estimate
from billing.ratelimits import take_tokens
from billing.services import Refusal, budget_of
from registry.models import ModelSpec
from registry.services import ensure_prepared, get_pool
from core.recent import configuration
from routing import quality
from routing.attempts import Outcome, admit, complete, hold_and_admit, refuse, release, settle, tokens_used
from routing.premium import run_premium
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
class Routed:
    values: list[Any]
    record: InferenceRecord
    spec: ModelSpec | None
    attempts: list[InferenceRecord] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.record.cached


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
            cost = actual_cost(spec, summary, compute_ms=outcome.compute_ms, tokens_in=outcome.tokens_in,
                               tokens_out=outcome.tokens_out)
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

    return configuration.remember(("policy", tenant.pk, task), load)


def _candidates(
    *, key: ApiKey, task: str, model: str, policy: RoutingPolicy, accept: Callable[[ModelSpec], bool] | None
) -> tuple[list[ModelSpec], str]:
    if model and model != "auto":
        spec = configuration.remember(("spec", model), lambda: ModelSpec.objects.filter(slug=model, enabled=True).first())
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

        ordered = configuration.remember(("candidates", task, tuple(policy.candidates)), load)
        origin = "tenant policy" if policy.tenant_id else "global policy"
    else:
        # No policy yet: every enabled model of the task, local first.
        ordered = configuration.remember(
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
        config = configuration.remember(("model-config", spec.pk, spec.updated_at), lambda: _prepared_config(spec))
        values, timing = get_pool().infer_timed(config, items, timeout=settings.MODELGATE_REQUEST_TIMEOUT)
        return Outcome(values=values, queue_ms=timing.queue_ms, compute_ms=timing.compute_ms, units_out=0.0)
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
