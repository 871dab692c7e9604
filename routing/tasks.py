"""Background work for routing (django-q2): closing records whose request never finished, tuning the
thresholds, checking for drift; shadow evaluation runs from routing.shadow."""
from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.schedules import register_schedules
from routing.models import InferenceRecord

logger = logging.getLogger("modelgate.routing")

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "routing: reap abandoned inferences": ("routing.tasks.reap_abandoned", "I", 1),
    "routing: tune thresholds": ("routing.tasks.tune_policies", "I", settings.MODELGATE_TUNE_MINUTES),
    "routing: check drift": ("routing.tasks.check_drift", "D", None),
    "routing: prune record texts": ("routing.tasks.prune_record_texts", "H", None),
}


def prune_record_texts() -> str:
    """The hourly retention prune (routing.retention): old records lose their texts, keep their costs."""
    from routing.retention import prune_record_texts as prune

    blanked = prune()
    return f"{sum(blanked.values())} records of {len(blanked)} tenants pruned"


def tune_policies() -> str:
    """The scheduled tuner: every policy with auto-tune on and not locked (routing.tuning)."""
    from core.metrics import TUNER_RUNS
    from routing.tuning import tune_all

    changes = tune_all()
    TUNER_RUNS.inc()
    moved = [change for change in changes if change.changed]
    return f"{len(changes)} policies tuned, {len(moved)} floors moved"


def check_drift() -> str:
    """The daily drift check of every policy (routing.drift)."""
    from routing.drift import check_all

    reports = check_all()
    return f"{len(reports)} policies checked, {sum(report.drifted for report in reports)} drifted"


def reap_abandoned(*, limit: int = 1000) -> int:
    """Pending rows older than the request timeout belong to requests that died (a killed worker, a
    crash): close them as abandoned and free the budget they still hold. A stream that wrote its
    progress (routing.streaming) may run until the stream deadline; when it is reaped, what it had
    streamed is charged, since the provider billed it. Each row is claimed with a conditional update,
    so a retried or concurrent reaper moves the money once."""
    from billing.services import budget_of

    now = timezone.now()
    request_cutoff = now - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 60)
    stream_cutoff = now - timedelta(seconds=max(settings.MODELGATE_STREAM_TIMEOUT, settings.MODELGATE_REQUEST_TIMEOUT) + 60)
    stale = InferenceRecord.objects.filter(status=InferenceRecord.Status.PENDING, created_at__lt=request_cutoff).filter(
        Q(compute_ms__isnull=True) | Q(created_at__lt=stream_cutoff))
    closed = 0
    for record in stale.select_related("tenant__budget", "model")[:limit]:
        with transaction.atomic():
            closed += _reap(record, budget_of(record.tenant))
    if closed:
        logger.warning("abandoned inferences closed", extra={"count": closed})
    return closed


def _reap(record: InferenceRecord, budget: Any) -> int:
    from billing.services import release_evaluation, release_reserved, settle_reserved
    from core.metrics import observe_abandoned

    used = _streamed_cost(record)
    message = "The request did not finish within the request timeout."
    if used is not None:
        message = (f"The stream stopped without finishing (its worker was stopped); charged for the "
                   f"{record.units_out:.0f} tokens it had streamed.")
    claimed = InferenceRecord.objects.filter(pk=record.pk, status=InferenceRecord.Status.PENDING).update(
        status=InferenceRecord.Status.ABANDONED,
        completed_at=timezone.now(),
        error_code="abandoned",
        error_message=message,
        cost=used or Decimal("0"),
    )
    if not claimed:
        return 0
    observe_abandoned(record)
    if record.reserved_cost <= 0:
        pass
    elif record.purpose == InferenceRecord.Purpose.EVALUATION:
        # A shadow evaluation's hold is on the evaluation allowance, never on the budget.
        release_evaluation(record.tenant_id, record.reserved_cost)
    elif budget is not None and used:
        settle_reserved(budget, record.reserved_cost, used, key_id=record.api_key_id, model_slug=record.model_slug)
    elif budget is not None:
        release_reserved(budget, record.reserved_cost, key_id=record.api_key_id, model_slug=record.model_slug)
    return 1


def _streamed_cost(record: InferenceRecord) -> Decimal | None:
    """What a stream that wrote its progress had used, at its model's prices and never more than was held
    (nothing when nothing was: served free past a local-only budget); None for any other pending record."""
    from billing.prices import Summary, actual_cost

    if record.compute_ms is None or record.model is None:
        return None
    summary = Summary(text="", unit=record.unit, units_in=record.units_in)
    premium = not record.model.is_local
    cost = actual_cost(record.model, summary, compute_ms=record.compute_ms,
                       tokens_in=record.units_in if premium else None, tokens_out=record.units_out if premium else None)
    return min(cost, record.reserved_cost)


def ensure_schedules(**kwargs: object) -> None:
    register_schedules(SCHEDULES)
