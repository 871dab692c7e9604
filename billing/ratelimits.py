"""Rate limits per key and per tenant (requests per minute), counted in PostgreSQL so that every
process and machine shares one count: N replicas never allow N times the limit.

A sliding window, approximated the usual way: the previous minute's count weighted by how much of
it still overlaps the last 60 seconds, plus this minute's count. One statement per limited
subject: an atomic upsert of this minute's counter that also reads the previous minute's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

WINDOW = timedelta(minutes=1)

_COUNT = """
WITH current AS (
    INSERT INTO billing_ratecounter (bucket, window_start, count) VALUES (%s, %s, 1)
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = billing_ratecounter.count + 1
    RETURNING count
)
SELECT current.count,
       COALESCE((SELECT count FROM billing_ratecounter WHERE bucket = %s AND window_start = %s), 0)
FROM current
"""


@dataclass(frozen=True)
class Verdict:
    limit: int
    remaining: int
    reset_seconds: float  # until this minute's window ends
    allowed: bool


def hit(bucket: str, limit: int, now: datetime | None = None) -> Verdict:
    """Count one request against `bucket` and say whether it is within `limit` per minute."""
    now = now or timezone.now()
    start = now.replace(second=0, microsecond=0)
    with connection.cursor() as cursor:
        cursor.execute(_COUNT, [bucket, start, bucket, start - WINDOW])
        current, previous = cursor.fetchone()
    elapsed = (now - start).total_seconds() / 60
    used = previous * (1 - elapsed) + current
    reset = 60 - (now - start).total_seconds()
    return Verdict(limit=limit, remaining=max(0, math.floor(limit - used)), reset_seconds=reset, allowed=used <= limit)


def purge(before: datetime) -> int:
    from billing.models import RateCounter

    return RateCounter.objects.filter(window_start__lt=before).delete()[0]


class RequestRateThrottle(BaseThrottle):
    """DRF throttle: the key's limit, then the tenant's; the tightest result goes in the headers."""

    def allow_request(self, request: Request, view: object) -> bool:
        key = request.auth
        limits = []
        if getattr(key, "rpm_limit", None):
            limits.append((f"key:{key.pk}", key.rpm_limit))
        tenant = getattr(key, "tenant", None)
        if tenant is not None and tenant.rpm_limit:
            limits.append((f"tenant:{tenant.pk}", tenant.rpm_limit))
        if not limits:
            return True
        verdicts = [hit(bucket, limit) for bucket, limit in limits]
        tightest = min(verdicts, key=lambda v: (v.allowed, v.remaining))
        self.verdict = tightest
        request._request.rate_limit = tightest  # for the response headers (billing.middleware)
        return all(v.allowed for v in verdicts)

    def wait(self) -> float | None:
        return math.ceil(self.verdict.reset_seconds)
