"""Background work for routing (django-q2): closing records whose request never finished."""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.schedules import register_schedules
from routing.models import InferenceRecord

logger = logging.getLogger("modelgate.routing")

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "routing: reap abandoned inferences": ("routing.tasks.reap_abandoned", "I", 1),
}


def reap_abandoned(*, limit: int = 1000) -> int:
    """Pending rows older than the request timeout belong to requests that died (a killed worker, a
    crash): close them as abandoned and free the budget they still hold. Each row is claimed with a
    conditional update, so a retried or concurrent reaper frees a hold once."""
    from billing.services import budget_of, release_reserved

    cutoff = timezone.now() - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 60)
    stale = InferenceRecord.objects.filter(status=InferenceRecord.Status.PENDING, created_at__lt=cutoff)
    closed = 0
    for record in stale.select_related("tenant__budget")[:limit]:
        with transaction.atomic():
            claimed = InferenceRecord.objects.filter(pk=record.pk, status=InferenceRecord.Status.PENDING).update(
                status=InferenceRecord.Status.ABANDONED,
                completed_at=timezone.now(),
                error_code="abandoned",
                error_message="The request did not finish within the request timeout.",
            )
            budget = budget_of(record.tenant)
            if claimed and budget is not None and record.reserved_cost > 0:
                release_reserved(budget, record.reserved_cost, key_id=record.api_key_id, model_slug=record.model_slug)
        closed += claimed
    if closed:
        logger.warning("abandoned inferences closed", extra={"count": closed})
    return closed


def ensure_schedules(**kwargs: object) -> None:
    register_schedules(SCHEDULES)
