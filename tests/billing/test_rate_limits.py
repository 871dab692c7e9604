"""Rate limits per key and per tenant: exact counts for a burst, shared by every thread and process."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine

from billing.models import RateCounter
from billing.ratelimits import hit
from billing.tasks import purge_rate_counters
from tests.conftest import make_caller


def me(api, caller):
    return api.get("/v1/me", **caller.auth)


def test_a_burst_gets_exactly_the_allowed_count_with_headers(api, alice):
    alice.key.rpm_limit = 5
    alice.key.save()
    with time_machine.travel(datetime(2026, 11, 22, 10, 0, 5, tzinfo=dt_timezone.utc), tick=False):
        responses = [me(api, alice) for _ in range(8)]
    assert [r.status_code for r in responses] == [200] * 5 + [429] * 3
    # 5 counted by 10:00:05; one more fits once they weigh 4: 12 s into the next minute, 67 s from now.
    first, refused = responses[0], responses[-1]
    assert first["x-ratelimit-limit-requests"] == "5" and first["x-ratelimit-remaining-requests"] == "4"
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused["Retry-After"] == "67" and refused["x-ratelimit-remaining-requests"] == "0"


def test_the_window_slides_instead_of_resetting_at_once(alice):
    bucket = f"key:{alice.key.pk}"
    start = datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt_timezone.utc)
    for _ in range(10):
        hit(bucket, 10, now=start + timedelta(seconds=50))
    # Half way through the next minute, half of the previous minute still counts: 5 of 10 used.
    verdict = hit(bucket, 10, now=start + timedelta(seconds=90))
    assert verdict.allowed and verdict.remaining == 4
    assert not hit(bucket, 10, now=start + timedelta(seconds=61)).allowed


def test_keys_are_limited_apart_and_the_tenant_limit_spans_its_keys(api, alice, alice_limited, bob):
    alice.tenant.rpm_limit = 3
    alice.tenant.save()
    statuses = [me(api, caller).status_code for caller in (alice, alice_limited, alice, alice_limited)]
    assert statuses == [200, 200, 200, 429]
    assert me(api, bob).status_code == 200  # another tenant is untouched


def test_no_limit_costs_no_query(api, alice, django_assert_num_queries):
    me(api, alice)
    with django_assert_num_queries(1):
        assert me(api, alice).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_share_one_count(tenant_a):
    """32 threads, each with its own database connection (as separate processes would have)."""
    from django.db import connections
    from django.test import Client

    caller = make_caller(tenant_a, "burst")
    caller.key.rpm_limit = 10
    caller.key.save()
    barrier = threading.Barrier(32)

    def call(_: int) -> int:
        try:
            barrier.wait(timeout=30)
            return Client().get("/v1/me", **caller.auth).status_code
        finally:
            connections.close_all()

    with time_machine.travel(datetime(2026, 11, 22, 10, 0, 1, tzinfo=dt_timezone.utc), tick=False):
        with ThreadPoolExecutor(32) as executor:
            statuses = list(executor.map(call, range(32)))
    assert statuses.count(200) == 10 and statuses.count(429) == 22


def test_old_counters_are_purged(alice):
    hit("key:old", 5, now=datetime.now(dt_timezone.utc) - timedelta(minutes=30))
    hit("key:new", 5)
    assert purge_rate_counters() == 1
    assert list(RateCounter.objects.values_list("bucket", flat=True)) == ["key:new"]


def test_a_request_the_tenant_refuses_is_not_counted_against_its_key(api, alice):
    alice.key.rpm_limit = 100
    alice.key.save()
    alice.tenant.rpm_limit = 2
    alice.tenant.save()
    with time_machine.travel(datetime(2026, 11, 22, 10, 0, 5, tzinfo=dt_timezone.utc), tick=False):
        assert [me(api, alice).status_code for _ in range(3)] == [200, 200, 429]
    counts = dict(RateCounter.objects.values_list("bucket", "count"))
    assert counts == {f"key:{alice.key.pk}": 2, f"tenant:{alice.tenant.pk}": 2}


def test_retry_after_says_when_the_sliding_window_has_room_again():
    from billing.ratelimits import _room_in

    # The previous minute's 10 must weigh at most 9 - 5: 60 × (1 - 4/10) = 36 s into this minute.
    assert _room_in(limit=10, amount=1, current=5, previous=10, elapsed=20) == pytest.approx(16)
    # This minute alone is full: wait for the next one, then until its share has decayed enough.
    assert _room_in(limit=10, amount=1, current=10, previous=0, elapsed=30) == pytest.approx(30 + 6)
