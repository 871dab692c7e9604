"""Background work for billing (django-q2)."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from billing.ratelimits import purge
from config.schedules import register_schedules

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "billing: purge old rate counters": ("billing.tasks.purge_rate_counters", "I", 10),
}


def purge_rate_counters() -> int:
    """Only the current and previous minute matter; older counters are dead weight."""
    return purge(timezone.now() - timedelta(minutes=5))


def ensure_schedules(**kwargs: object) -> None:
    register_schedules(SCHEDULES)
