"""Rate limits per key and per tenant — requests per minute and tokens per minute — counted in a store
that every process and machine shares (PostgreSQL, or Redis when REDIS_URL is set): N replicas never
allow N times the limit.

A sliding window, approximated the usual way: the previous minute's count weighted by how much of it
still overlaps the last 60 seconds, plus this minute's count. Taking is one atomic step per limited
subject (an upsert with a condition in PostgreSQL, a script in Redis): an amount is counted only when
it fits, so a refused request does not eat into the next one's allowance.
"""
from __future__ import annotations

import contextvars
import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework import status
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from core.errors import ApiError

WINDOW = timedelta(minutes=1)


@dataclass(frozen=True)
class Verdict:
    limit: int
    remaining: int
    reset_seconds: float  # until this minute's window ends
    allowed: bool
    window_start: datetime | None = None  # where a taken amount was counted (for adjust())


@dataclass(frozen=True)
class Take:
    bucket: str
    amount: int
    limit: int


class CounterStore(Protocol):
    def take_all(self, takes: list[Take], now: datetime) -> list[Verdict]:
        """Count every take, or none: stop at the first that does not fit (its verdict is the last)."""

    def adjust_all(self, buckets: list[str], window_start: datetime, delta: int) -> None: ...


def _verdict(*, limit: int, amount: int, current: int, previous: int, taken: bool, now: datetime, start: datetime) -> Verdict:
    """`current` is this minute's count after the take (or as it stood, when refused)."""
    elapsed = (now - start).total_seconds()
    used = previous * (1 - elapsed / 60) + current
    remaining = max(0, math.floor(limit - used))
    reset = 60 - elapsed
    if not taken:
        remaining = min(remaining, amount - 1)  # it did not fit: fewer than `amount` were left
        reset = _room_in(limit=limit, amount=amount, current=current, previous=previous, elapsed=elapsed)
    return Verdict(limit=limit, remaining=remaining, reset_seconds=reset,
                   allowed=taken, window_start=start if taken else None)


def _room_in(*, limit: int, amount: int, current: int, previous: int, elapsed: float) -> float:
    """Seconds until `amount` fits the sliding window, if nothing else is counted meanwhile: the
    previous minute's weight decays through this one, then this minute's count starts to decay."""
    room = limit - current - amount
    if room >= 0:  # the previous minute's share must shrink to `room`
        return max(1.0, 60 * (1 - room / previous) - elapsed) if previous else 1.0
    return (60 - elapsed) + max(0.0, 60 * (1 - (limit - amount) / current))


def _window(now: datetime) -> tuple[datetime, float]:
    """This minute's start, and how much of the previous minute still overlaps the last 60 seconds."""
    start = now.replace(second=0, microsecond=0)
    return start, 1 - (now - start).total_seconds() / 60


class PostgresStore:
    """Counters in `billing_ratecounter`, one row per (subject, minute). All the subjects of a request
    (its key, its tenant) are counted by one statement: a chain of conditional upserts, each taken only
    when the one before it was."""

    # set_config(…, true): the statement's transaction commits without waiting for its WAL flush. A
    # counter lost in a database crash only lets a few requests more through; waiting for the disk on
    # every request cost more than the rest of rate limiting together.
    _STEP = """
    previous{i} AS (
        SELECT COALESCE((SELECT count FROM billing_ratecounter WHERE bucket = %(bucket{i})s AND window_start = %(previous)s), 0) AS count,
               set_config('synchronous_commit', 'off', true) AS asynchronous
    ), taken{i} AS (
        INSERT INTO billing_ratecounter (bucket, window_start, count)
        SELECT %(bucket{i})s, %(start)s, %(amount{i})s FROM previous{i}
         WHERE previous{i}.count * %(weight)s + %(amount{i})s <= %(limit{i})s {after}
        ON CONFLICT (bucket, window_start) DO UPDATE SET count = billing_ratecounter.count + EXCLUDED.count
        WHERE billing_ratecounter.count + EXCLUDED.count + (SELECT count FROM previous{i}) * %(weight)s <= %(limit{i})s
        RETURNING count
    )"""
    _CURRENT = "SELECT COALESCE((SELECT count FROM billing_ratecounter WHERE bucket = %s AND window_start = %s), 0)"

    @classmethod
    @functools.cache
    def _statement(cls, count: int) -> str:
        steps = [cls._STEP.format(i=i, after=f"AND EXISTS (SELECT 1 FROM taken{i - 1})" if i else "") for i in range(count)]
        results = ", ".join(f"(SELECT count FROM taken{i}), (SELECT count FROM previous{i})" for i in range(count))
        return "WITH " + ",".join(steps) + f"\nSELECT {results}"

    def take_all(self, takes: list[Take], now: datetime) -> list[Verdict]:
        start, weight = _window(now)
        params: dict[str, object] = {"start": start, "previous": start - WINDOW, "weight": weight}
        for i, take in enumerate(takes):
            params.update({f"bucket{i}": take.bucket, f"amount{i}": take.amount, f"limit{i}": take.limit})
        with connection.cursor() as cursor:
            cursor.execute(self._statement(len(takes)), params)
            row = cursor.fetchone()
            verdicts = []
            for i, take in enumerate(takes):
                taken, previous = row[2 * i], row[2 * i + 1]
                if taken is None:
                    # Refused (the slow path): a new statement sees the count that refused it, which the
                    # first one's snapshot may predate when other processes were counting at that moment.
                    cursor.execute(self._CURRENT, [take.bucket, start])
                    (current,) = cursor.fetchone()
                    verdicts.append(_verdict(limit=take.limit, amount=take.amount, current=current, previous=previous,
                                             taken=False, now=now, start=start))
                    for earlier in takes[:i]:
                        self.adjust_all([earlier.bucket], start, -earlier.amount)  # all or nothing
                    return verdicts
                verdicts.append(_verdict(limit=take.limit, amount=take.amount, current=taken, previous=previous,
                                         taken=True, now=now, start=start))
        return verdicts

    def adjust_all(self, buckets: list[str], window_start: datetime, delta: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE billing_ratecounter SET count = GREATEST(count + %s, 0) "
                "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous "
                "WHERE bucket = ANY(%s) AND window_start = %s",
                [delta, buckets, window_start],
            )


class RedisStore:
    """Counters as Redis keys that expire with their window; each step is one Lua script."""

    _TAKE = """
    local current = tonumber(redis.call('GET', KEYS[1]) or '0')
    local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
    local amount = tonumber(ARGV[1])
    if previous * tonumber(ARGV[3]) + current + amount > tonumber(ARGV[2]) then
        return {current, previous, 0}
    end
    current = redis.call('INCRBY', KEYS[1], amount)
    redis.call('EXPIRE', KEYS[1], 180)
    return {current, previous, 1}
    """
    _ADJUST = """
    if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
    local value = redis.call('INCRBY', KEYS[1], ARGV[1])
    if value < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
    return value
    """

    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.take_script = self.client.register_script(self._TAKE)
        self.adjust_script = self.client.register_script(self._ADJUST)

    @staticmethod
    def _key(bucket: str, start: datetime) -> str:
        return f"mg:rate:{bucket}:{int(start.timestamp())}"

    def take_all(self, takes: list[Take], now: datetime) -> list[Verdict]:
        start, weight = _window(now)
        verdicts = []
        for i, take in enumerate(takes):
            current, previous, taken = self.take_script(
                keys=[self._key(take.bucket, start), self._key(take.bucket, start - WINDOW)],
                args=[take.amount, take.limit, repr(weight)],
            )
            verdicts.append(_verdict(limit=take.limit, amount=take.amount, current=int(current), previous=int(previous),
                                     taken=bool(taken), now=now, start=start))
            if not taken:
                for earlier in takes[:i]:
                    self.adjust_all([earlier.bucket], start, -earlier.amount)
                break
        return verdicts

    def adjust_all(self, buckets: list[str], window_start: datetime, delta: int) -> None:
        for bucket in buckets:
            self.adjust_script(keys=[self._key(bucket, window_start)], args=[delta])


@functools.cache
def _redis_store(url: str) -> RedisStore:
    return RedisStore(url)


def store() -> CounterStore:
    return _redis_store(settings.REDIS_URL) if settings.REDIS_URL else PostgresStore()


def hit(bucket: str, limit: int, now: datetime | None = None) -> Verdict:
    """Count one request against `bucket` if it is within `limit` per minute."""
    return store().take_all([Take(bucket, 1, limit)], now or timezone.now())[0]


def purge(before: datetime) -> int:
    from billing.models import RateCounter

    return RateCounter.objects.filter(window_start__lt=before).delete()[0]


# --- requests per minute: a DRF throttle, before the view runs --------------------------------
class RequestRateThrottle(BaseThrottle):
    """The key's limit, then the tenant's; the tightest result goes in the headers."""

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
        verdicts = store().take_all([Take(bucket, 1, limit) for bucket, limit in limits], timezone.now())
        tightest = min(verdicts, key=lambda v: (v.allowed, v.remaining))
        self.verdict = tightest
        request._request.rate_limit = tightest  # for the response headers (billing.middleware)
        return all(v.allowed for v in verdicts)

    def wait(self) -> float | None:
        return math.ceil(self.verdict.reset_seconds)


# --- tokens per minute: taken by the router once it knows the request's size ------------------
class TokenRateLimited(ApiError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "rate_limited"


# The token verdict of the request being served, for the response headers (billing.middleware).
token_verdict: contextvars.ContextVar[Verdict | None] = contextvars.ContextVar("token_verdict", default=None)


@dataclass
class TokenCharge:
    """Tokens counted at admission (an upper bound), trued up to what the request used at the end."""

    amount: int
    buckets: list[str]
    window_start: datetime

    def true_up(self, used: float) -> None:
        delta = math.ceil(used) - self.amount
        if delta:
            store().adjust_all(self.buckets, self.window_start, delta)
        self.amount += delta


def take_tokens(key: object, amount: int) -> TokenCharge | None:
    """Count `amount` tokens against the key's and the tenant's per-minute limits; raise 429 when
    either has no room (then nothing is counted). None when no token limit applies: no query."""
    limits = []
    if getattr(key, "tpm_limit", None):
        limits.append((f"tokens:key:{key.pk}", key.tpm_limit, "this key"))
    tenant = key.tenant
    if tenant.tpm_limit:
        limits.append((f"tokens:tenant:{tenant.pk}", tenant.tpm_limit, "this tenant"))
    if not limits or amount <= 0:
        return None
    for _, limit, whose in limits:
        if amount > limit:
            raise TokenRateLimited(
                f"This request may use up to {amount} tokens (input and max output), more than the {limit} tokens per "
                f"minute {whose} may use: send less text or a lower max_tokens.", code="request_too_large_for_limit",
            )
    verdicts = store().take_all([Take(bucket, amount, limit) for bucket, limit, _ in limits], timezone.now())
    if not verdicts[-1].allowed:
        refused = verdicts[-1]
        token_verdict.set(refused)
        wait = math.ceil(refused.reset_seconds)
        raise TokenRateLimited(
            f"Token rate limit of {limits[len(verdicts) - 1][2]} reached: {refused.limit} tokens per minute, "
            f"{refused.remaining} left; this request may use up to {amount}. Retry after {wait} s.",
            headers={"Retry-After": str(wait)},
        )
    token_verdict.set(min(verdicts, key=lambda v: v.remaining))
    return TokenCharge(amount=amount, buckets=[bucket for bucket, _, _ in limits], window_start=verdicts[0].window_start)
