"""Shadow evaluation: a sampled share of local answers is also asked of the policy's premium model, in
the background, and the two compared. The answer the tenant got, its latency and its budget are never
touched; the teacher's call is held and settled on the tenant's evaluation allowance and recorded as
an evaluation (purpose), linked to the local record it judged."""
from __future__ import annotations

import logging
import random
from decimal import Decimal
from typing import Any

from django.db import IntegrityError

from billing import services as billing
from billing.prices import Summary, actual_cost, estimate_cost
from core.db import insert_row
from inference.errors import InferenceError
from registry.models import ModelSpec
from routing.agreement import JudgeRequired, agreement
from routing.attempts import PREVIEW_CHARS, complete, fail
from routing.models import InferenceRecord, QualitySignal, RoutingPolicy

logger = logging.getLogger("modelgate.routing")

JUDGE_TOKENS_OUT = 32  # {"agreement": 0.85} and a little slack


def sample(*, policy: RoutingPolicy, record: InferenceRecord, candidates: list[ModelSpec], items: list[Any],
           values: list[Any], summary: Summary, draw: Any = random.random) -> bool:
    """Called after a request was answered wholly by a local model: with the policy's shadow rate,
    hand the request to the background for the premium candidate to answer too. True when sampled."""
    if policy.pk is None or policy.shadow_rate <= 0 or record.purpose != InferenceRecord.Purpose.ANSWER:
        return False
    teacher = next((spec for spec in reversed(candidates) if not spec.is_local), None)
    if teacher is None or draw() >= policy.shadow_rate:
        return False
    from django_q.tasks import async_task

    async_task("routing.shadow.evaluate", str(record.pk), teacher.slug, items, values, summary,
               task_name=f"shadow {record.pk}", group="shadow evaluation")
    return True


def evaluate(record_id: str, teacher_slug: str, items: list[Any], values: list[Any], summary: Summary) -> str:
    """The background half: the teacher's answer, its cost on the allowance, and the agreement stored as
    the local record's quality (once: a retried task finds the signal and stops)."""
    local = InferenceRecord.objects.select_related("tenant", "policy").filter(pk=record_id).first()
    if local is None:
        return "the local record is gone"
    if QualitySignal.objects.filter(record=local, source=QualitySignal.Source.SHADOW).exists():
        return "already evaluated"
    teacher = ModelSpec.objects.filter(slug=teacher_slug, enabled=True).first()
    if teacher is None or teacher.is_local:
        return f"no premium model {teacher_slug!r} to evaluate with"
    judging = local.task == "generation"
    estimate = estimate_cost(teacher, summary) * (2 if judging else 1)  # chat: the answer, then the judge's verdict
    allowance = billing.evaluation_allowance(local.tenant_id)
    if not billing.reserve_evaluation(allowance, estimate):
        logger.info("shadow evaluation skipped: allowance used up", extra={"tenant": local.tenant_id})
        return "the evaluation allowance is used up"
    record = InferenceRecord(
        request_id=local.request_id, tenant_id=local.tenant_id, api_key_id=local.api_key_id, task=local.task,
        model=teacher, model_slug=teacher.slug, tier=teacher.tier, input_digest=local.input_digest,
        input_preview=local.input_preview[:PREVIEW_CHARS], unit=summary.unit, units_in=summary.units_in,
        reserved_cost=estimate, routing_reason=f"shadow evaluation of {local.model_slug}'s answer ({local.pk})",
        policy_id=local.policy_id, purpose=InferenceRecord.Purpose.EVALUATION,
    )
    insert_row(record)
    try:
        from routing.premium import judge_chat, run_premium

        outcome = run_premium(spec=teacher, task=local.task, items=items, tenant=local.tenant)
        cost = actual_cost(teacher, summary, compute_ms=outcome.compute_ms, tokens_in=outcome.tokens_in,
                           tokens_out=outcome.tokens_out)
        if judging:
            scores, judge_cost = [], Decimal("0")
            for item, mine, theirs in zip(items, values, outcome.values):
                verdict = judge_chat(spec=teacher, item=item, candidate=mine.text, reference=theirs.text, tenant=local.tenant)
                scores.append(verdict.value)
                judge_cost += actual_cost(teacher, summary, compute_ms=0.0, tokens_in=verdict.tokens_in,
                                          tokens_out=verdict.tokens_out)
            cost += judge_cost
        else:
            scores = [agreement(local.task, mine, theirs) for mine, theirs in zip(values, outcome.values)]
    except (InferenceError, JudgeRequired, ValueError, TypeError, OSError) as exc:
        billing.release_evaluation(allowance, estimate)
        fail(record, status=InferenceRecord.Status.ERROR, code=getattr(exc, "code", "error"), message=str(exc))
        logger.warning("shadow evaluation failed", extra={"record": record_id, "error": str(exc)})
        return f"failed: {exc}"
    except BaseException:
        billing.release_evaluation(allowance, estimate)
        fail(record, status=InferenceRecord.Status.ERROR, code="internal_error", message="shadow evaluation crashed")
        raise
    charged = billing.settle_evaluation(allowance, estimate, cost)
    complete(record, status=InferenceRecord.Status.OK, values=outcome.values, outcome=outcome, cost=charged)
    value = sum(scores) / len(scores) if scores else 0.0
    if judging and isinstance(local.features, dict):
        # A labelled chat answer keeps its prompt's embedding: what a learned chat router trains on.
        from routing.router import prompt_embedding  # the router samples through this module

        embedding = prompt_embedding(items[0].prompt)
        if embedding is not None:
            InferenceRecord.objects.filter(pk=local.pk).update(features=local.features | {"embedding": embedding})
    try:
        QualitySignal.objects.create(record=local, source=QualitySignal.Source.SHADOW, agreement=value, teacher=record,
                                     detail=f"{len(scores)} item(s) compared with {teacher.slug}")
    except IntegrityError:
        return "already evaluated"  # a concurrent duplicate of this task got there first
    return f"agreement {value:.3f}"
