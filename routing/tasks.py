"""Background work for routing (django-q2): closing records whose request never finished."""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from routing.models import InferenceRecord

logger = logging.getLogger("modelgate.routing")

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "routing: reap abandoned inferences": ("routing.tasks.reap_abandoned", "I", 1),
}


def reap_abandoned() -> int:
    """Pending rows older than the request timeout belong to requests that died (a killed worker, a
    crash): close them as abandoned. Conditional on still being pending, so a retry is harmless."""
    cutoff = timezone.now() - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 60)
    closed = InferenceRecord.objects.filter(status=InferenceRecord.Status.PENDING, created_at__lt=cutoff).update(
        status=InferenceRecord.Status.ABANDONED,
        completed_at=timezone.now(),
        error_code="abandoned",
        error_message="The request did not finish within the request timeout.",
    )
    if closed:
        logger.warning("abandoned inferences closed", extra={"count": closed})
    return closed


def ensure_schedules(**kwargs: object) -> None:
    from django_q.models import Schedule

    for name, (func, schedule_type, minutes) in SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": schedule_type, "minutes": minutes, "repeats": -1}
        )
