"""The router: every request takes this one path — candidates, execution, quality check, escalation or
fallback — and every attempt leaves an InferenceRecord, written pending before the work starts."""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db.models import Q
from rest_framework import status

from core.errors import ApiError
from inference.errors import InferenceError, InvalidInput, ModelLoadError
from inference.payloads import GenerationInput, LanguageIdInput
from billing.prices import Summary, actual_cost, token_estimate
from billing.ratelimits import take_tokens
from billing.services import Hold, Refusal, budget_of
from registry.models import ModelSpec
from registry.services import ensure_prepared, get_pool
from core.metrics import observe_served_below_floor
from core.recent import configuration
from routing import quality, shadow
from routing.attempts import Outcome, admit, complete, hold_and_admit, refuse, release, settle, tokens_used
from routing.premium import run_premium
from routing.providers import ProviderRateLimited
from routing.agreement import agreement
from routing.models import InferenceRecord, LearnedRouter, QualitySignal, RoutingPolicy
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


class UpstreamRateLimited(ApiError):
    """Every candidate left was a provider refusing for its rate limit: a 503 to retry after its hint."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "upstream_rate_limited"


class InputRejected(ApiError):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_input"


@dataclass
class Routed:
    values: list[Any]
    record: InferenceRecord  # the last attempt that answered
    spec: ModelSpec | None
    attempts: list[InferenceRecord] = field(default_factory=list)
    item_models: list[str] = field(default_factory=list)  # per item, in the request's order: who answered it

    @property
    def cached(self) -> bool:
        return self.record.cached

    @property
    def cost(self) -> Decimal:
        """What the request cost: every attempt's charge (a local attempt whose items escalated included)."""
        return sum((attempt.cost for attempt in self.attempts), Decimal("0"))


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

    Items are routed one by one: those a candidate answers well enough stand, only the others go on to
    the next candidate, in one call carrying just them. `accept` narrows the candidates to models able
    to take this request (e.g. zero-shot ones when the request brings its own labels).
    """
    plan_ = plan(key=key, task=task, items=items, model=model, accept=accept)
    cache_key = _cache_key(key, task, plan_.candidates[0], items) if plan_.policy.cache_enabled else None
    if cache_key is not None:
        hit = cache.get(cache_key)
        if hit is not None:
            spec = plan_.candidates[0]
            # An entry keeps who answered each item (a split request); older entries held the values alone.
            values, models = (hit["values"], hit["models"]) if isinstance(hit, dict) else (hit, [spec.slug] * len(hit))
            record = admit(key=key, task=task, spec=spec, summary=summary, request_id=request_id,
                           reason="result cache hit", complexity=plan_.complexity, previous=None, policy=plan_.policy)
            complete(record, status=InferenceRecord.Status.OK, values=values, outcome=None, cost=Decimal("0"), cached=True)
            return Routed(values=values, record=record, spec=spec, attempts=[record], item_models=models)

    walk = Walk(key=key, task=task, summary=summary, request_id=request_id, model=model, plan=plan_)
    charge = take_tokens(key, token_estimate(task, summary))
    try:
        routed = _answer(walk, items=items, summary=summary, units_out=units_out, tokens_in=tokens_in)
    finally:
        if charge is not None:
            charge.true_up(sum(tokens_used(record) for record in walk.attempts))
    if cache_key is not None:
        cache.set(cache_key, {"values": routed.values, "models": routed.item_models}, timeout=plan_.policy.cache_ttl_seconds)
    return routed


class Walk:
    """The candidate loop that plain and streamed requests share: for each candidate in turn, hold its
    cost and write its pending record (or be refused by the money and move on), and after a failure
    decide between the next candidate and an error for the client. Every attempt is kept in order."""

    def __init__(self, *, key: ApiKey, task: str, summary: Summary, request_id: str, model: str, plan: Plan,
                 reason_suffix: str = ""):
        self.key, self.task, self.summary, self.request_id, self.model = key, task, summary, request_id, model
        self.policy, self.candidates, self.complexity = plan.policy, plan.candidates, plan.complexity
        self.reason = plan.reason + reason_suffix
        self.cause = plan.cause
        self.previous: InferenceRecord | None = None
        self.attempts: list[InferenceRecord] = []
        self.last_error, self.last_code = "", ""
        self.last_retry_after: float | None = None
        self.budget = budget_of(key.tenant)

    def __iter__(self) -> Iterator[tuple[ModelSpec, Hold, InferenceRecord, bool]]:
        """(spec, hold, pending record, whether another candidate may still answer) for each candidate
        whose cost could be held; the money is reserved before the call, so a refused model is never called."""
        for position, spec in enumerate(self.candidates):
            held, record = hold_and_admit(
                budget=self.budget, key=self.key, task=self.task, spec=spec, summary=self.summary,
                request_id=self.request_id, reason=self.reason, complexity=self.complexity, previous=self.previous,
                policy=self.policy, cause=self.cause,
            )
            if isinstance(held, Refusal):
                self.reason, self.previous = refuse(held, record, budget=self.budget, spec=spec,
                                                    rest=self.candidates[position + 1:], attempts=self.attempts)
                self.cause = InferenceRecord.EscalationCause.BUDGET
                continue
            self.attempts.append(record)
            yield spec, held, record, position + 1 < len(self.candidates) and self.model == "auto"

    def failed(self, exc: BaseException, *, spec: ModelSpec, held: Hold, record: InferenceRecord, may_pass_on: bool) -> None:
        """Close a failed attempt; return to try the next candidate, or raise what the client should see."""
        if isinstance(exc, InvalidInput):
            release(held, record=record, status=InferenceRecord.Status.REJECTED, code=exc.code, message=str(exc))
            if not may_pass_on:
                raise InputRejected(str(exc)) from None
            # One model's limits (a prompt too long for a small local model) need not be the request's.
            self.pass_on(record, f"fallback after {spec.slug} refused the input: {exc}", InferenceRecord.EscalationCause.VALIDATION)
            return
        if isinstance(exc, (InferenceError, ValidationError, OSError)):
            message = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            code = getattr(exc, "code", "error") if isinstance(exc, InferenceError) else "model_unavailable"
            if isinstance(exc, ModelLoadError) and spec.is_local:
                _unhealthy(spec, tenant_id=self.key.tenant_id, message=message)
            release(held, record=record, status=InferenceRecord.Status.ERROR, code=code, message=message)
            self.last_error, self.last_code = f"{spec.slug} ({code})", code
            self.last_retry_after = getattr(exc, "retry_after", None)
            self.pass_on(record, f"fallback after {spec.slug} failed ({code})", InferenceRecord.EscalationCause.ERROR)
            logger.warning("candidate failed", extra={"model": spec.slug, "code": code})
            return
        # The hold must never outlive the request, whatever happened.
        release(held, record=record, status=InferenceRecord.Status.ERROR, code="internal_error", message=repr(exc))
        raise exc

    def pass_on(self, record: InferenceRecord, reason: str, cause: str) -> None:
        self.reason, self.previous, self.cause = reason, record, cause

    def exhausted(self) -> ApiError:
        """The client's error once no candidate is left. It names the last model and its error code; the
        provider's or the runtime's own text (file paths, upstream bodies) stays in the records for operators."""
        last = f" The last to fail was {self.last_error}." if self.last_error else ""
        if self.last_code == "model_server_unavailable":
            # The models' process is gone (restarting): nobody can serve this now, a 503 to retry.
            return NoModelAvailable(f"No model server can serve this now; retry shortly.{last}")
        if self.last_code == ProviderRateLimited.code:
            # The provider's own limit, after the SDK's retries: the client may retry once it has passed.
            wait = max(1, math.ceil(self.last_retry_after or 1))
            return UpstreamRateLimited(f"The provider is rate limiting; retry in {wait} s.{last}",
                                       headers={"Retry-After": str(wait)})
        return UpstreamFailed(f"Every candidate model failed.{last}")


def _answer(walk: Walk, *, items: list[Any], summary: Summary, units_out: Callable[[list[Any]], float],
            tokens_in: Callable[[list[Any]], float] | None) -> Routed:
    task, policy = walk.task, walk.policy
    answers: list[Any] = [None] * len(items)
    item_models = [""] * len(items)
    pending = list(range(len(items)))  # the items no candidate has answered yet, in the request's order
    # Escalated items' local answers, by item: compared with the answer that replaced them (a quality signal).
    escalated_local: dict[int, tuple[InferenceRecord, Any]] = {}
    local_specs: dict[Any, ModelSpec] = {}  # by record id: the local attempts whose items escalated
    invalid: set[int] = set()  # items escalated because their local answer failed validation
    for spec, held, record, may_pass_on in walk:
        batch = [items[i] for i in pending]
        try:
            outcome = execute(spec=spec, task=task, items=batch, tenant=walk.key.tenant)
        except BaseException as exc:
            walk.failed(exc, spec=spec, held=held, record=record, may_pass_on=may_pass_on)
            continue
        try:
            judged = _judge(spec=spec, policy=policy, task=task, items=batch, values=outcome.values, may_pass_on=may_pass_on,
                            complexity=walk.complexity)
            outcome.units_out = units_out(outcome.values)
            if tokens_in is not None and outcome.tokens_in is None:
                # Local models that count their input (embeddings) report tokens like an API would.
                outcome.tokens_in = tokens_in(outcome.values)
            cost = actual_cost(spec, walk.summary, compute_ms=outcome.compute_ms, tokens_in=outcome.tokens_in,
                               tokens_out=outcome.tokens_out)
        except BaseException as exc:
            # As for the call itself: the hold never outlives the request.
            release(held, record=record, status=InferenceRecord.Status.ERROR, code="internal_error", message=repr(exc))
            raise
        escalate = [j for j, item in enumerate(judged) if item.escalate]
        kept = [j for j, item in enumerate(judged) if not item.escalate]
        # The record keeps its weakest item's confidence and score: the one its routing turned on.
        weakest = min(judged, key=lambda item: item.sort_key)
        fields = dict(values=outcome.values, outcome=outcome, cost=cost, confidence=weakest.confidence,
                      score=weakest.score, features=weakest.read(task, batch, walk.complexity) if spec.is_local else None,
                      items_escalated=len(escalate))
        if escalate:
            weakest_escalated = min((judged[j] for j in escalate), key=lambda item: item.sort_key)
            cause = (InferenceRecord.EscalationCause.VALIDATION if any(judged[j].problem for j in escalate)
                     else InferenceRecord.EscalationCause.LOW_CONFIDENCE)
            share = "" if not kept else f" ({len(escalate)} of {len(batch)} items)"
            why = weakest_escalated.problem or (f"{weakest_escalated.scored_by} {weakest_escalated.score:.2f} "
                                               f"< floor {policy.confidence_floor:.2f}")
            status = InferenceRecord.Status.OK if kept else InferenceRecord.Status.ESCALATED
            settle(held, record, status=status, reason_suffix=f"; escalated{share}: {why}", **fields)
            for j in kept:
                answers[pending[j]], item_models[pending[j]] = outcome.values[j], spec.slug
            if spec.is_local:
                escalated_local.update({pending[j]: (record, outcome.values[j]) for j in escalate})
                local_specs[record.pk] = spec
            invalid.update(pending[j] for j in escalate if judged[j].problem)
            walk.pass_on(record, f"escalated from {spec.slug}{share}: {why}", cause)
            pending = [pending[j] for j in escalate]
            # The next attempt is held and recorded for the escalated items only: its cost follows them.
            walk.summary = _part(summary, items, pending)
            continue
        settle(held, record, status=InferenceRecord.Status.OK, **fields)
        for j in kept:
            answers[pending[j]], item_models[pending[j]] = outcome.values[j], spec.slug
        if escalated_local and not spec.is_local:
            record_escalation_pairs(task, teacher=record, pairs=[(*escalated_local[i], answers[i]) for i in pending
                                                                 if i in escalated_local])
        if spec.is_local and len(pending) == len(items):
            shadow.sample(policy=policy, record=record, candidates=walk.candidates, items=items, values=answers,
                          summary=summary)
        return Routed(values=answers, record=record, spec=spec, attempts=walk.attempts, item_models=item_models)
    if pending and all(i in escalated_local and i not in invalid for i in pending):
        return _served_below_floor(walk, pending=pending, escalated_local=escalated_local, local_specs=local_specs,
                                   answers=answers, item_models=item_models)
    raise walk.exhausted()


def _served_below_floor(walk: Walk, *, pending: list[int], escalated_local: dict[int, tuple[InferenceRecord, Any]],
                        local_specs: dict[Any, ModelSpec], answers: list[Any], item_models: list[str]) -> Routed:
    """Every candidate after the local model failed: its answers under the floor (none of them failing
    validation) serve rather than an error — a low-confidence answer is still an answer. Its record says so."""
    record = escalated_local[pending[0]][0]
    for i in pending:
        answers[i], item_models[i] = escalated_local[i][1], escalated_local[i][0].model_slug
    record.status = InferenceRecord.Status.OK
    record.routing_reason += f"; served below the floor: every escalation failed ({walk.last_error or 'no candidate left'})"
    InferenceRecord.objects.filter(pk=record.pk).update(status=record.status, routing_reason=record.routing_reason)
    observe_served_below_floor(record)
    logger.warning("escalation failed; local answer served", extra={"model": record.model_slug, "items": len(pending)})
    return Routed(values=answers, record=record, spec=local_specs[record.pk], attempts=walk.attempts, item_models=item_models)


@dataclass
class Judged:
    """One item's verdict: its confidence, the score the floor applies to, and whether it escalates."""

    index: int
    value: Any
    confidence: float | None
    score: float | None
    problem: str | None
    escalate: bool
    features: dict[str, Any] | None = None  # read only where a learned router scores the items
    scored_by: str = "confidence"  # or "learned router"

    @property
    def sort_key(self) -> tuple[int, float]:
        # The weakest first: a problem, then the lowest score; items without a score last.
        return (0 if self.problem else 1, self.score if self.score is not None else math.inf)

    def read(self, task: str, items: list[Any], complexity: quality.Complexity | None) -> dict[str, Any] | None:
        """What the learned router reads of this item: the record keeps its weakest item's (what a router
        is trained on), read once per request rather than once per item of a large batch."""
        if self.features is not None:
            return self.features
        return quality.features(task, items[self.index], self.value, scored=complexity)


def _judge(*, spec: ModelSpec, policy: RoutingPolicy, task: str, items: list[Any], values: list[Any],
           may_pass_on: bool, complexity: quality.Complexity | None = None) -> list[Judged]:
    verdicts = quality.judge_each(task, items, values)
    if task == "translation" and spec.is_local and may_pass_on:
        verdicts = _check_output_language(items, values, verdicts)
    judged = []
    weights = learned_weights(policy) if spec.is_local else None
    for index, (item, value, verdict) in enumerate(zip(items, values, verdicts)):
        if not spec.is_local:
            # A premium answer has no calibrated confidence: none is recorded rather than a made-up one.
            judged.append(Judged(index=index, value=value, confidence=None, score=None, problem=verdict.problem,
                                 escalate=False))
            continue
        features = quality.features(task, item, value, scored=complexity) if weights is not None else None
        score, scored_by = verdict.confidence, "confidence"
        if weights is not None and features is not None:
            seen = features
            if task == "generation" and weights.encoder.embedding_dim:
                # A chat router trained on prompt embeddings reads this prompt's too (not kept on the record: 384 floats).
                seen = features | {"embedding": prompt_embedding(item.prompt)}
            score, scored_by = weights.predict_one(seen), "learned router"
        below = score is not None and score < policy.confidence_floor
        judged.append(Judged(index=index, value=value, confidence=verdict.confidence, score=score, problem=verdict.problem,
                             escalate=may_pass_on and bool(verdict.problem or below), features=features, scored_by=scored_by))
    return judged


def record_escalation_pairs(task: str, *, teacher: InferenceRecord, pairs: list[tuple[InferenceRecord, Any, Any]]) -> None:
    """Label each escalated local attempt with its agreement with the premium answer that replaced it.
    These pairs only exist below the floor: the tuner never lets them speak for answers above it."""
    by_record: dict[Any, tuple[InferenceRecord, list[float]]] = {}
    for local, local_value, premium_value in pairs:
        try:
            value = agreement(task, local_value, premium_value)
        except (ValueError, TypeError):
            return  # chat needs the judge prompt (shadow evaluation); tasks without an agreement measure have no pairs
        by_record.setdefault(local.pk, (local, []))[1].append(value)
    QualitySignal.objects.bulk_create(
        [QualitySignal(record=local, source=QualitySignal.Source.ESCALATION, agreement=sum(values) / len(values),
                       teacher=teacher, detail=f"{len(values)} item(s) compared with {teacher.model_slug}")
         for local, values in by_record.values()],
        ignore_conflicts=True,
    )


def prompt_embedding(text: str) -> list[float] | None:
    """The prompt embedded by the first enabled local embeddings model (MiniLM in the starter pack),
    for the learned router of chat; None when there is none or it fails (the router treats it as missing)."""
    spec = configuration.remember(("prompt-embedder",), lambda: ModelSpec.objects.filter(
        task="embeddings", enabled=True).exclude(source_kind=ModelSpec.SourceKind.PROVIDER).order_by("slug").first())
    if spec is None:
        return None
    try:
        ensure_prepared(spec)
        return [float(x) for x in get_pool().infer(spec.to_config(), text, timeout=10).vector]
    except (InferenceError, ValidationError, OSError) as exc:
        logger.warning("prompt embedding skipped", extra={"model": spec.slug, "error": str(exc)})
        return None


def learned_weights(policy: RoutingPolicy) -> Any:
    """The policy's learned router, decoded once per process (routing configuration cache)."""
    if policy.learned_router_id is None:
        return None
    from routing.learned import RouterWeights

    def load() -> Any:
        router = LearnedRouter.objects.filter(pk=policy.learned_router_id, accepted=True).first()
        return RouterWeights.from_json(router.weights) if router is not None else None

    return configuration.remember(("learned-router", policy.learned_router_id), load)


def _part(summary: Summary, items: list[Any], indices: list[int]) -> Summary:
    """The summary of some items of a request: what the escalation of just those is held and charged for."""
    if len(indices) == len(items) or summary.unit != "characters":
        return summary  # single-item tasks (chat, audio, rerank) never split
    return Summary.characters([item if isinstance(item, str) else item.text for item in (items[i] for i in indices)])


# --- policies and candidates -------------------------------------------------------------------
@dataclass
class Plan:
    """The policy, the candidates in the order they will be tried, and why."""

    policy: RoutingPolicy
    candidates: list[ModelSpec]
    reason: str
    complexity: quality.Complexity | None = None
    cause: str = ""  # why the first candidate is not the first of the chain (complexity)


def plan(*, key: ApiKey, task: str, items: list[Any], model: str, accept: Callable[[ModelSpec], bool] | None = None) -> Plan:
    policy = policy_for(tenant=key.tenant, task=task)
    candidates, reason = _candidates(key=key, task=task, model=model, policy=policy, accept=accept)
    complexity, cause = None, ""
    if task == "generation" and model == "auto" and isinstance(items[0], GenerationInput):
        complexity = quality.complexity(items[0])
        premium = [spec for spec in candidates if not spec.is_local]
        if complexity.score > policy.complexity_threshold and premium and len(premium) < len(candidates):
            candidates, cause = premium, InferenceRecord.EscalationCause.COMPLEXITY
            reason = (
                f"complexity {complexity.score:.2f} > threshold {policy.complexity_threshold:.2f} "
                f"({', '.join(complexity.reasons)}): local models skipped"
            )
        else:
            reason += f"; complexity {complexity.score:.2f} vs threshold {policy.complexity_threshold:.2f}"
    return Plan(policy=policy, candidates=candidates, reason=reason, complexity=complexity, cause=cause)


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
    # A local model whose weights failed to load is skipped while another can answer (until a health
    # check passes); when none can, it is tried all the same rather than refusing outright.
    healthy = [spec for spec in allowed if not (spec.is_local and spec.last_check_ok is False)]
    skipped = [spec.slug for spec in allowed if spec not in healthy]
    reason = f"{origin}: {' → '.join(s.slug for s in (healthy or allowed))}"
    if skipped and healthy:
        return healthy, f"{reason} ({', '.join(skipped)} skipped: unhealthy)"
    return allowed, reason


def _unhealthy(spec: ModelSpec, *, tenant_id: int, message: str) -> None:
    """Weights that do not load (corrupt, missing, incompatible): the model is marked unhealthy, so the
    router skips it, and the tenant whose request found it is alerted (once a day per model)."""
    from django.utils import timezone

    from billing.alerts import raise_model_unhealthy
    from registry.services import mark_unhealthy

    mark_unhealthy(spec, message)
    day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    raise_model_unhealthy(tenant_id=tenant_id, slug=spec.slug, message=message, day=day)


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


def _check_output_language(items: list[Any], values: list[Any], verdicts: list[quality.Verdict]) -> list[quality.Verdict]:
    """A translation in the wrong language is wrong however confident the model was."""
    lid = ModelSpec.objects.filter(task="language_id", enabled=True, source_kind__in=["package", "path", "hub"]).first()
    if lid is None:
        return verdicts
    checked = [i for i, value in enumerate(values) if verdicts[i].problem is None and len(value.text) >= 20]
    if not checked:
        return verdicts
    try:
        guesses = get_pool().infer_many(lid.to_config(), [LanguageIdInput(text=values[i].text) for i in checked], timeout=10)
    except (InferenceError, ValidationError, OSError) as exc:
        # The check is a safeguard; when it cannot run, the translation is judged without it.
        logger.warning("output language check skipped", extra={"model": lid.slug, "error": str(exc)})
        return verdicts
    verdicts = list(verdicts)
    for i, guess in zip(checked, guesses):
        target = values[i].target.split("-")[0]
        if guess and guess[0].probability > 0.5 and guess[0].language != target:
            verdicts[i] = quality.Verdict(confidence=verdicts[i].confidence,
                                          problem=f"output is in {guess[0].language}, not {target}")
    return verdicts


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
