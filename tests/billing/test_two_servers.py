"""Budgets and rate limits hold across processes: two real gunicorn servers on one database, as two
replicas behind a load balancer would run, share nothing but PostgreSQL."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal
from functools import partial

import pytest

from billing.models import Budget
from routing.models import InferenceRecord
from tests.billing.servers import Reply, Server, all_at_once, running_servers
from tests.conftest import make_caller
from tests.routing.test_premium_routing import premium

pytestmark = pytest.mark.django_db(transaction=True)  # the servers only see committed rows

REQUESTS = 64
PROVIDER_SECONDS = 5.0
RPM = 10
CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 100}


@pytest.fixture(scope="module")
def servers(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two servers for the whole module: starting one costs seconds of CPU. Each has more threads
    than the budget has room for calls: were all 10 admitted on one server, its other requests
    must still be served (refused) while those 10 are in flight, not wait for a thread."""
    with running_servers(2, data_dir=tmp_path_factory.mktemp("servers"), threads=12) as started:
        yield started


def spread(servers: list[Server], count: int, method: str, path: str, **kwargs: object) -> list[Callable[[], Reply]]:
    """`count` calls, alternating between the servers, as a round-robin balancer would send them."""
    return [partial(servers[i % len(servers)].request, method, path, **kwargs) for i in range(count)]


def test_64_premium_requests_on_two_servers_never_overspend(servers, alice, fake_providers):
    spec = premium("gpt-fake", "generation", fake_providers, input="0", output="1")  # hold: 100 tokens × 1/1k = 0.1
    spec.options = {**spec.options, "timeout": 60}
    spec.save()
    Budget.objects.create(tenant=alice.tenant, limit=Decimal("1.0"))  # room for exactly 10 holds
    # Admitted calls stay in flight until every other request has tried to reserve: settling one
    # early would free room, and more than 10 could then (rightly) get through.
    fake_providers.slow(PROVIDER_SECONDS)
    request_ids = [f"two-servers-{i:03d}" for i in range(REQUESTS)]
    calls = [
        partial(servers[i % 2].request, "POST", "/v1/chat/completions", key=alice.secret, body=CHAT, request_id=request_id)
        for i, request_id in enumerate(request_ids)
    ]

    replies = all_at_once(calls)

    reached = len(fake_providers.requests_to("/v1/chat/completions"))
    statuses = [reply.status for reply in replies]
    assert set(statuses) <= {200, 402}, [(r.status, r.body) for r in replies if r.status not in (200, 402)]
    assert 0 < reached <= 10 and statuses.count(200) == reached
    assert all(reply.error_code == "budget_exceeded" for reply in replies if reply.status == 402)
    budget = Budget.objects.get(tenant=alice.tenant)
    assert budget.spent <= budget.limit and budget.reserved == 0
    records = InferenceRecord.objects.filter(tenant=alice.tenant)
    assert sorted(records.values_list("request_id", flat=True)) == request_ids
    rejected = records.filter(status=InferenceRecord.Status.REJECTED, error_code="budget_exceeded")
    assert rejected.count() == REQUESTS - reached
    served = records.filter(status=InferenceRecord.Status.OK)
    assert served.count() == reached and all(record.reserved_cost == Decimal("0.1") for record in served)
    # Every answer was charged what it used (5 words of reply at 1 per 1k tokens), nothing more.
    assert budget.spent == sum(record.cost for record in served) == Decimal("0.005") * reached


def until_clear_of_a_minute_boundary(margin: float = 5.0) -> None:
    """Counters are per minute; a burst that straddles two of them is only approximately exact."""
    now = datetime.now(dt_timezone.utc)
    second = now.second + now.microsecond / 1e6
    if second > 60 - margin:
        time.sleep(60 - second + 0.2)


def assert_rate_limited_exactly(replies: list[Reply], limit: int) -> None:
    allowed = [reply for reply in replies if reply.status == 200]
    refused = [reply for reply in replies if reply.status != 200]
    assert len(allowed) == limit, [reply.status for reply in replies]
    assert {reply.status for reply in refused} == {429}
    assert all(reply.headers["x-ratelimit-limit-requests"] == str(limit) for reply in replies)
    # Each allowed request took one place in the shared count, whichever server counted it.
    assert sorted(int(reply.headers["x-ratelimit-remaining-requests"]) for reply in allowed) == list(range(limit))
    for reply in refused:
        retry_after = int(reply.headers["retry-after"])
        reset = int(reply.headers["x-ratelimit-reset-requests"].removesuffix("s"))
        assert reply.error_code == "rate_limited" and reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= retry_after <= 120 and reset in (retry_after - 1, retry_after)  # ceil vs rounding of one reset


def test_a_key_limit_holds_across_two_servers(servers, tenant_a):
    caller = make_caller(tenant_a, "burst")
    caller.key.rpm_limit = RPM
    caller.key.save()
    until_clear_of_a_minute_boundary()

    replies = all_at_once(spread(servers, 3 * RPM, "GET", "/v1/me", key=caller.secret))

    assert_rate_limited_exactly(replies, RPM)


def test_a_tenant_limit_spans_its_keys_on_both_servers(servers, tenant_a):
    tenant_a.rpm_limit = RPM
    tenant_a.save()
    first, second = make_caller(tenant_a, "first"), make_caller(tenant_a, "second")
    until_clear_of_a_minute_boundary()

    # Each key goes to its own server: only the shared tenant counter can stop them at RPM together.
    calls = [partial(servers[0].request, "GET", "/v1/me", key=first.secret) for _ in range(RPM)]
    calls += [partial(servers[1].request, "GET", "/v1/me", key=second.secret) for _ in range(RPM)]
    replies = all_at_once(calls)

    assert_rate_limited_exactly(replies, RPM)
