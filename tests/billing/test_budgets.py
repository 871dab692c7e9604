"""Budgets that cannot be overrun: atomic reservations, settlement, release, roll-over, and the
behaviour at the limit (block or local only), through the real API."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
import time_machine
from django.db import IntegrityError, transaction

from billing.models import Budget
from billing.services import Hold, Refusal, release, reserve, roll_over, settle
from routing.models import InferenceRecord
from tests.routing.conftest import post, records
from tests.routing.test_premium_routing import premium

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 100}


def budget_for(tenant, limit: str, **fields) -> Budget:
    return Budget.objects.create(tenant=tenant, limit=Decimal(limit), **fields)


def test_reserve_settle_and_release_move_money_exactly(tenant_a):
    budget = budget_for(tenant_a, "1.0")
    first = reserve(budget, Decimal("0.6"))
    assert isinstance(first, Hold) and first.amount == Decimal("0.6")
    refused = reserve(budget, Decimal("0.5"))  # 0.6 held + 0.5 > 1.0
    assert isinstance(refused, Refusal) and refused.by_budget and not refused.model_only
    assert settle(first, Decimal("0.2")) == Decimal("0.2")
    budget.refresh_from_db()
    assert (budget.spent, budget.reserved) == (Decimal("0.2"), Decimal("0"))
    second = reserve(budget, Decimal("0.8"))
    assert isinstance(second, Hold)
    release(second)
    budget.refresh_from_db()
    assert (budget.spent, budget.reserved, budget.remaining) == (Decimal("0.2"), Decimal("0"), Decimal("0.8"))


def test_settlement_never_charges_more_than_was_held(tenant_a):
    budget = budget_for(tenant_a, "1.0")
    assert settle(reserve(budget, Decimal("0.1")), Decimal("5")) == Decimal("0.1")


def test_the_database_refuses_an_overrun_whatever_the_code_path(tenant_a):
    budget = budget_for(tenant_a, "1.0")
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.filter(pk=budget.pk).update(spent=Decimal("1.5"))


def test_the_period_rolls_over_at_the_boundary(tenant_a):
    with time_machine.travel(datetime(2026, 11, 30, 23, 59, 59, tzinfo=dt_timezone.utc), tick=False):
        budget = budget_for(tenant_a, "1.0", period=Budget.Period.MONTHLY)
        assert budget.period_end == datetime(2026, 12, 1, tzinfo=dt_timezone.utc)
        settle(reserve(budget, Decimal("1.0")), Decimal("1.0"))
        assert isinstance(reserve(budget, Decimal("0.01")), Refusal)
    with time_machine.travel(datetime(2026, 12, 1, 0, 0, 1, tzinfo=dt_timezone.utc), tick=False):
        budget = roll_over(Budget.objects.get(pk=budget.pk))
        assert (budget.spent, budget.period_start.day, budget.period_end.month) == (Decimal("0"), 1, 1)
        assert isinstance(reserve(budget, Decimal("0.5")), Hold)


def test_block_refuses_with_402_naming_the_budget_and_its_reset(api, alice, starter):
    budget_for(alice.tenant, "0", period=Budget.Period.DAILY)
    response = post(api, "/v1/detect-language", {"text": "Bonjour tout le monde"}, alice, HTTP_X_REQUEST_ID="blocked-0001")
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and "daily budget" in error["message"] and "resets at" in error["message"]
    [record] = records("blocked-0001")
    assert (record.status, record.error_code) == ("rejected", "budget_exceeded")


def test_local_only_keeps_serving_local_models_and_refuses_premium(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    budget_for(alice.tenant, "0", at_limit=Budget.AtLimit.LOCAL_ONLY)
    local = post(api, "/v1/detect-language", {"text": "Bonjour tout le monde"}, alice, HTTP_X_REQUEST_ID="local-only-01")
    assert local.status_code == 200
    [record] = records("local-only-01")
    assert "served locally without charge" in record.routing_reason and record.reserved_cost == 0
    assert post(api, "/v1/chat/completions", CHAT, alice).status_code == 402
    assert fake_providers.requests == []
    assert Budget.objects.get(tenant=alice.tenant).spent == 0


def test_a_provider_error_releases_the_hold(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers, input="0", output="1")
    budget_for(alice.tenant, "1.0")
    fake_providers.status(500, times=10)
    assert post(api, "/v1/chat/completions", CHAT, alice).status_code == 502
    budget = Budget.objects.get(tenant=alice.tenant)
    assert (budget.spent, budget.reserved) == (Decimal("0"), Decimal("0"))


def test_a_provider_timeout_releases_the_hold(api, alice, starter, fake_providers):
    spec = premium("gpt-fake", "generation", fake_providers, input="0", output="1")
    spec.options = {**spec.options, "timeout": 0.5, "max_retries": 0}
    spec.save()
    budget_for(alice.tenant, "1.0")
    fake_providers.hang(times=5)
    assert post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="timeout-0001").status_code == 502
    budget = Budget.objects.get(tenant=alice.tenant)
    assert (budget.spent, budget.reserved) == (Decimal("0"), Decimal("0"))
    record = records("timeout-0001")[0]
    assert (record.status, record.reserved_cost) == ("error", Decimal("0.1"))
    assert "timeout" in record.error_code or "timed out" in record.error_message.lower()


@pytest.mark.django_db(transaction=True)  # closing a response ends the request, as on a real server
def test_a_client_that_disconnects_mid_stream_releases_the_hold(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers, input="0", output="1")
    budget_for(alice.tenant, "1.0")
    response = post(api, "/v1/chat/completions", {**CHAT, "stream": True}, alice, HTTP_X_REQUEST_ID="disconnect-01")
    next(iter(response.streaming_content))
    assert Budget.objects.get(tenant=alice.tenant).reserved > 0
    response.close()  # what the server does when the client goes away: it closes the generator
    budget = Budget.objects.get(tenant=alice.tenant)
    assert (budget.spent, budget.reserved) == (Decimal("0"), Decimal("0"))
    assert records("disconnect-01")[0].error_code == "client_disconnected"


def test_streamed_and_plain_answers_cost_the_same(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers, input="1", output="2")
    plain = post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="same-cost-01")
    streamed = post(api, "/v1/chat/completions", {**CHAT, "stream": True}, alice, HTTP_X_REQUEST_ID="same-cost-02")
    b"".join(streamed.streaming_content)
    assert plain.status_code == 200
    assert records("same-cost-01")[0].cost == records("same-cost-02")[0].cost > 0


@pytest.mark.django_db(transaction=True)
def test_64_concurrent_premium_requests_never_overspend(alice, starter, fake_providers):
    """64 threads, each with its own database connection, run the whole request path at once."""
    from django.db import connections
    from django.test import Client

    spec = premium("gpt-fake", "generation", fake_providers, input="0", output="1")  # hold: 100 tokens × 1/1k = 0.1
    spec.options = {**spec.options, "timeout": 60}
    spec.save()
    budget_for(alice.tenant, "1.0")  # room for exactly 10 holds
    # Admitted calls stay in flight until every other request has tried to reserve: settling one
    # early would free room, and more than 10 could then (rightly) get through.
    fake_providers.slow(6.0)
    barrier = threading.Barrier(64)

    def call(_: int) -> int:
        client = Client()
        try:
            barrier.wait(timeout=30)
            response = client.post("/v1/chat/completions", json.dumps(CHAT), content_type="application/json",
                                   HTTP_AUTHORIZATION=f"Bearer {alice.secret}")
            return response.status_code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(64) as executor:
        statuses = list(executor.map(call, range(64)))
    reached = len(fake_providers.requests_to("/v1/chat/completions"))
    budget = Budget.objects.get(tenant=alice.tenant)
    assert 0 < reached <= 10 and statuses.count(200) == reached
    assert statuses.count(402) == 64 - reached
    assert budget.spent <= budget.limit and budget.reserved == 0
    assert InferenceRecord.objects.filter(tenant=alice.tenant).count() == 64
    assert InferenceRecord.objects.filter(error_code="budget_exceeded").count() == 64 - reached


def test_the_reaper_frees_the_hold_of_a_request_whose_worker_died(alice, settings):
    from routing.tasks import reap_abandoned

    budget = budget_for(alice.tenant, "1.0")
    assert isinstance(reserve(budget, Decimal("0.4")), Hold)  # the dead worker's hold
    InferenceRecord.objects.create(
        tenant=alice.tenant, api_key=alice.key, task="generation", model_slug="gpt-fake", request_id="died-000001",
        reserved_cost=Decimal("0.4"), created_at=datetime.now(dt_timezone.utc) - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 120),
    )
    assert reap_abandoned() == 1
    assert reap_abandoned() == 0
    budget.refresh_from_db()
    assert (budget.reserved, budget.spent) == (Decimal("0"), Decimal("0"))


def test_a_tenant_reads_its_own_budget_and_nobody_elses(api, alice, bob):
    budget_for(alice.tenant, "2.5", period=Budget.Period.DAILY)
    mine = api.get("/v1/budget", **alice.auth).json()["budget"]
    assert (mine["limit"], mine["spent"], mine["period"], mine["at_limit"]) == ("2.500000000000", "0.000000000000", "daily", "block")
    assert 0 <= mine["period_progress"] <= 1 and mine["remaining_fraction"] == 1.0
    assert api.get("/v1/budget", **bob.auth).json() == {"budget": None, "message": "No budget is set: spending is not limited."}


def test_a_budget_adds_no_query_to_the_hot_path(api, alice, starter, django_assert_num_queries):
    budget_for(alice.tenant, "10")
    post(api, "/v1/detect-language", {"text": "warm the model and last_used_at"}, alice)
    # key+tenant+budget; the hold and the record's INSERT in one statement; the settlement and the record's
    # UPDATE in another: the same three queries and two commits as without a budget.
    with django_assert_num_queries(3):
        response = post(api, "/v1/detect-language", {"text": "Das ist ein deutscher Satz."}, alice)
    assert response.status_code == 200


def test_money_statements_are_planned_once_per_connection_and_logged_with_their_values(api, alice, starter):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    budget = budget_for(alice.tenant, "10")
    post(api, "/v1/detect-language", {"text": "warm the model and last_used_at"}, alice)
    with CaptureQueriesContext(connection) as queries:
        assert post(api, "/v1/detect-language", {"text": "Das ist ein deutscher Satz."}, alice).status_code == 200
    hold, settlement = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().startswith("WITH")]
    assert "Das ist ein deutscher Satz." in hold and "%s" not in hold and "$1" not in hold
    assert "%s" not in settlement and "$1" not in settlement
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("UPDATE billing_budget SET reserved = reserved +" in sql for sql in prepared)  # the hold
    assert any("WITH pending AS" in sql for sql in prepared)  # the settlement
    budget.refresh_from_db()
    assert budget.spent > 0 and budget.reserved == 0


def test_a_key_served_from_the_key_cache_brings_its_budget_without_a_query(api, alice, starter, key_cache,
                                                                           django_assert_num_queries):
    budget = budget_for(alice.tenant, "10")
    post(api, "/v1/detect-language", {"text": "warm the model and last_used_at"}, alice)
    with django_assert_num_queries(2):  # hold with the record's insert, settlement with its update: no key lookup
        assert post(api, "/v1/detect-language", {"text": "Das ist ein deutscher Satz."}, alice).status_code == 200
    budget.refresh_from_db()
    assert budget.spent > 0 and budget.reserved == 0
    # The copy that came with the key may be seconds old; /v1/budget reads the row.
    assert api.get("/v1/budget", **alice.auth).json()["budget"]["spent"] == f"{budget.spent:f}"


def test_the_402_reports_the_figures_the_refusal_saw_not_the_copy_cached_with_the_key(api, alice, starter, key_cache):
    budget = budget_for(alice.tenant, "1", period=Budget.Period.DAILY)
    assert post(api, "/v1/detect-language", {"text": "The key, with its budget, is cached now."}, alice).status_code == 200
    # Spent elsewhere (another process, another key) since: the cached copy still says almost nothing was.
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("0.75"), reserved=Decimal("0.25"))
    response = post(api, "/v1/detect-language", {"text": "Bonjour tout le monde"}, alice)
    assert response.status_code == 402
    message = response.json()["error"]["message"]
    assert "The daily budget of 1.0000 is used up (0.7500 spent, 0.2500 held by requests in flight; " in message
    assert "this request needs up to 0.0" in message
