"""One attempt of a request on one model: its InferenceRecord (written pending at admission, completed
or failed after) and the money held for it, which always move together. Every attempt closed here is
counted in the Prometheus series (core.metrics) once its row is written."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing import services as billing
from billing.models import Budget
from billing.prices import TOKEN_TASKS, Summary, estimate_cost
from billing.services import BudgetExceeded, Hold, Refusal
from core.db import insert_row, update_rows
from core.metrics import observe_attempt
from registry.models import ModelSpec
from routing.models import InferenceRecord, RoutingPolicy
from tenants.models import ApiKey

PREVIEW_CHARS = 200


@dataclass
class Outcome:
    """What a model answered and what it used doing so."""

    values: list[Any]
    queue_ms: float | None
    compute_ms: float
    units_out: float
    tokens_in: float | None = None  # premium usage, as the provider reported it
    tokens_out: float | None = None


def new_record(*, key: ApiKey, task: str, spec: ModelSpec, summary: Summary, request_id: str, reason: str,
               complexity: Any, previous: InferenceRecord | None, reserved: Decimal = Decimal("0"),
               policy: RoutingPolicy | None = None, cause: str = "") -> InferenceRecord:
    """The attempt's pending record, not saved yet, with what the decision is made with: the policy,
    the floor (local models) and complexity threshold (chat) in force, and why this attempt exists."""
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
        escalation_cause=cause,
        policy_id=policy.pk if policy is not None else None,
        floor=policy.confidence_floor if policy is not None and spec.is_local else None,
        threshold=policy.complexity_threshold if policy is not None and task == "generation" else None,
    )


def admit(**fields: Any) -> InferenceRecord:
    record = new_record(**fields)
    insert_row(record)
    return record


def completion(record: InferenceRecord, *, status: str, values: list[Any], outcome: Outcome | None, cost: Decimal,
               confidence: float | None = None, score: float | None = None, features: list[Any] | None = None,
               items_escalated: int = 0, cached: bool = False, reason_suffix: str = "") -> dict[str, Any]:
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
    if score is not None or features is not None or items_escalated:
        record.score, record.features, record.items_escalated = score, features, items_escalated
        changed += ["score", "features", "items_escalated"]
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
    observe_attempt(record)


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
    observe_attempt(record)


def _preview(values: list[Any]) -> str:
    first = values[0] if values else None
    text = getattr(first, "text", None)
    if text is None:
        if hasattr(first, "intent"):
            text = f"{first.intent} ({first.confidence:.2f}): {first.transcription.text}"
        elif hasattr(first, "predicted"):
            text = ", ".join(first.predicted)
        elif isinstance(first, list) and first and hasattr(first[0], "language"):
            text = ", ".join(g.language if g.probability is None else f"{g.language} {g.probability:.2f}" for g in first)
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
                   request_id: str, reason: str, complexity: Any, previous: InferenceRecord | None,
                   policy: RoutingPolicy | None = None, cause: str = "") -> tuple[Hold | Refusal, InferenceRecord]:
    """Reserve the attempt's maximum cost and write its pending record. On a Refusal the record is
    written too, for refuse() to close. Past the limit, a `local_only` budget still serves local
    models, uncharged."""
    estimate = estimate_cost(spec, summary)
    record = new_record(key=key, task=task, spec=spec, summary=summary, request_id=request_id, reason=reason,
                        complexity=complexity, previous=previous, reserved=estimate, policy=policy, cause=cause)
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
    observe_attempt(record)
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
                   update=(_still_pending(record), completion(record, cost=cost, **fields)))
    observe_attempt(record)


def charge_failed(held: Hold, *, record: InferenceRecord, cost: Decimal, tokens_in: float, tokens_out: float, status: str,
                  code: str, message: str) -> None:
    """Close the record as failed and charge what the attempt used all the same (a premium stream cut off
    after the provider had written part of the answer), together."""
    record.cost, record.unit, record.units_in, record.units_out = cost, "tokens", tokens_in, tokens_out
    columns = {**failure(record, status=status, code=code, message=message), "cost": cost, "unit": "tokens",
               "units_in": tokens_in, "units_out": tokens_out}
    billing.settle(held, cost, record_id=record.pk, update=(_still_pending(record), columns))
    observe_attempt(record)


def release(held: Hold, *, record: InferenceRecord, status: str, code: str, message: str) -> None:
    """Free the hold and close the record, together."""
    billing.release(held, record_id=record.pk, update=(_still_pending(record),
                                                       failure(record, status=status, code=code, message=message)))
    observe_attempt(record)


def _still_pending(record: InferenceRecord) -> Any:
    # A record the reaper charged meanwhile (abandoned with what its stream had streamed) stays as the
    # reaper closed it, and the money statement charges nothing more. One it closed without a charge is
    # completed by a request that outlived it, as that request's money is.
    return InferenceRecord.objects.filter(pk=record.pk, cost=0)


def tokens_used(record: InferenceRecord) -> float:
    """What an attempt actually consumed, for truing up the tokens-per-minute count."""
    done = record.status in (InferenceRecord.Status.OK, InferenceRecord.Status.ESCALATED)
    if not done or record.task not in TOKEN_TASKS or record.unit != "tokens" or record.cached:
        return 0.0
    return record.units_in + (record.units_out if record.task == "generation" else 0.0)
