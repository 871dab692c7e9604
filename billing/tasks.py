"""Background work for billing (django-q2)."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from billing.ratelimits import purge

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "billing: purge old rate counters": ("billing.tasks.purge_rate_counters", "I", 10),
}


def purge_rate_counters() -> int:
    """Only the current and previous minute matter; older counters are dead weight."""
    return purge(timezone.now() - timedelta(minutes=5))


def ensure_schedules(**kwargs: object) -> None:
    from django_q.models import Schedule

    for name, (func, schedule_type, minutes) in SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": schedule_type, "minutes": minutes, "repeats": -1}
        )
