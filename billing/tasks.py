"""Background work for billing (django-q2)."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from billing.ratelimits import purge
from billing.usage import rollup
from core.schedules import register_schedules

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "billing: purge old rate counters": ("billing.tasks.purge_rate_counters", "I", 10),
    "billing: roll up daily usage": ("billing.tasks.rollup_usage", "I", 5),
}


def purge_rate_counters() -> int:
    """Only the current and previous minute matter; older counters are dead weight."""
    return purge(timezone.now() - timedelta(minutes=5))


def rollup_usage() -> int:
    """Recompute yesterday's and today's usage rows (and any days missed while nothing ran)."""
    return rollup()


def ensure_schedules(**kwargs: object) -> None:
    register_schedules(SCHEDULES)
