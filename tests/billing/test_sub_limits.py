"""Spending sub-limits inside a budget, per API key and per model: held all-or-nothing with the budget,
charged with it, reset with its period, freed by the reaper — and refusing only what they cover."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
import time_machine

from billing.models import Budget, SpendLimit
from billing.services import Hold, Refusal, release, reserve, roll_over, settle
from routing.models import InferenceRecord, RoutingPolicy
from tests.billing.test_budgets import CHAT, budget_for
from tests.routing.conftest import post, records
from tests.routing.test_premium_routing import premium


def sub_limit(budget: Budget, limit: str, *, key=None, model: str = "") -> SpendLimit:
    return SpendLimit.objects.create(budget=budget, api_key=key, model_slug=model, limit=Decimal(limit))


def test_a_hold_takes_budget_and_sub_limit_together_or_neither(alice, alice_limited):
    budget = budget_for(alice.tenant, "10")
    limit = sub_limit(budget, "0.5", key=alice.key)
    first = reserve(budget, Decimal("0.4"), key_id=alice.key.pk, model_slug="any")
    assert isinstance(first, Hold) and first.sub_limits == (limit.pk,)
    refused = reserve(budget, Decimal("0.4"), key_id=alice.key.pk, model_slug="any")
    assert isinstance(refused, Refusal) and not refused.by_budget and not refused.model_only
    assert f"API key {alice.key.prefix}" in refused.message
    budget.refresh_from_db()
    limit.refresh_from_db()
    # The refused hold left nothing behind on the budget (rolled back with the sub-limit's).
    assert (budget.reserved, limit.reserved) == (Decimal("0.4"), Decimal("0.4"))
    # Another key of the tenant is not covered by alice's sub-limit.
    assert isinstance(reserve(budget, Decimal("0.4"), key_id=alice_limited.key.pk, model_slug="any"), Hold)
    assert settle(first, Decimal("0.3")) == Decimal("0.3")
    limit.refresh_from_db()
    assert (limit.spent, limit.reserved) == (Decimal("0.3"), Decimal("0"))


def test_a_key_over_its_sub_limit_gets_402_naming_it_while_the_tenant_goes_on(api, alice, alice_limited, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers, input="0", output="1")  # hold: 100 tokens × 1/1k = 0.1
    budget = budget_for(alice.tenant, "10")
    sub_limit(budget, "0.05", key=alice.key)
    refused = post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="sub-key-0001")
    assert refused.status_code == 402
    assert f"API key {alice.key.prefix}" in refused.json()["error"]["message"]
    assert records("sub-key-0001")[0].error_code == "budget_exceeded"
    assert fake_providers.requests_to("/v1/chat/completions") == []
    assert post(api, "/v1/chat/completions", CHAT, alice_limited).status_code == 200
    budget.refresh_from_db()
    assert budget.spent > 0 and budget.reserved == 0


def test_a_model_over_its_sub_limit_is_skipped_for_the_next_candidate(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers, input="0", output="1")
    premium("gpt-other", "generation", fake_providers, input="0", output="1")
    RoutingPolicy.objects.create(tenant=alice.tenant, task="generation", candidates=["gpt-fake", "gpt-other"],
                                 complexity_threshold=0.0)
    budget = budget_for(alice.tenant, "10")
    capped = sub_limit(budget, "0.05", model="gpt-fake")
    response = post(api, "/v1/chat/completions", {**CHAT, "model": "auto"}, alice, HTTP_X_REQUEST_ID="sub-model-01")
    assert response.status_code == 200 and response["x-modelgate-model"] == "gpt-other"
    first, second = records("sub-model-01")
    assert (first.model_slug, first.status, first.error_code) == ("gpt-fake", "rejected", "budget_exceeded")
    assert second.escalated_from_id == first.id and "spending limit is used up" in second.routing_reason
    # Pinned to the capped model, there is nothing else to try.
    pinned = post(api, "/v1/chat/completions", CHAT, alice)
    assert pinned.status_code == 402 and "model gpt-fake" in pinned.json()["error"]["message"]
    capped.refresh_from_db()
    assert (capped.spent, capped.reserved) == (Decimal("0"), Decimal("0"))


def test_sub_limits_start_again_with_the_budget_period(alice):
    with time_machine.travel(datetime(2026, 11, 30, 12, 0, tzinfo=dt_timezone.utc), tick=False):
        budget = budget_for(alice.tenant, "10", period=Budget.Period.MONTHLY)
        limit = sub_limit(budget, "1", key=alice.key)
        settle(reserve(budget, Decimal("1"), key_id=alice.key.pk), Decimal("1"))
        assert isinstance(reserve(budget, Decimal("0.1"), key_id=alice.key.pk), Refusal)
    with time_machine.travel(datetime(2026, 12, 1, 0, 0, 1, tzinfo=dt_timezone.utc), tick=False):
        budget = roll_over(Budget.objects.get(pk=budget.pk))
        limit.refresh_from_db()
        assert (budget.spent, limit.spent) == (Decimal("0"), Decimal("0"))
        assert isinstance(reserve(budget, Decimal("0.1"), key_id=alice.key.pk), Hold)


def test_the_reaper_frees_a_dead_requests_sub_limit_holds(alice, settings):
    from routing.tasks import reap_abandoned

    budget = budget_for(alice.tenant, "10")
    by_key, by_model = sub_limit(budget, "1", key=alice.key), sub_limit(budget, "1", model="gpt-fake")
    assert isinstance(reserve(budget, Decimal("0.7"), key_id=alice.key.pk, model_slug="gpt-fake"), Hold)
    InferenceRecord.objects.create(
        tenant=alice.tenant, api_key=alice.key, task="generation", model_slug="gpt-fake", request_id="died-sub-001",
        reserved_cost=Decimal("0.7"),
        created_at=datetime.now(dt_timezone.utc) - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 120),
    )
    assert reap_abandoned() == 1
    for row in (budget, by_key, by_model):
        row.refresh_from_db()
        assert row.reserved == Decimal("0")


def test_a_sub_limit_covers_either_a_key_or_a_model(alice):
    from django.db import IntegrityError, transaction

    budget = budget_for(alice.tenant, "10")
    with pytest.raises(IntegrityError), transaction.atomic():
        sub_limit(budget, "1", key=alice.key, model="gpt-fake")
    with pytest.raises(IntegrityError), transaction.atomic():
        sub_limit(budget, "1")


def test_billing_in_full_adds_a_known_number_of_queries(api, alice, starter, django_assert_num_queries):
    """A budget with a key sub-limit and a request rate limit, against none of them: what billing costs."""
    text = {"text": "Das ist ein deutscher Satz."}
    post(api, "/v1/detect-language", {"text": "warm the model and last_used_at"}, alice)
    with django_assert_num_queries(3):  # key+tenant, record insert, record update
        assert post(api, "/v1/detect-language", text, alice).status_code == 200
    budget = budget_for(alice.tenant, "10")
    sub_limit(budget, "5", key=alice.key)
    alice.key.rpm_limit = 1000
    alice.key.save()
    post(api, "/v1/detect-language", text, alice)  # reads the sub-limits into the routing cache
    # + the rate counter's upsert (committed without waiting for the disk). The holds on budget and
    # sub-limit ride in the statement that inserts the record, their settlement in the one that completes it.
    with django_assert_num_queries(3 + 1):
        assert post(api, "/v1/detect-language", text, alice).status_code == 200


def test_a_full_budget_gives_back_what_the_sub_limits_took(alice):
    budget = budget_for(alice.tenant, "1")
    limit = sub_limit(budget, "10", key=alice.key)
    settle(reserve(budget, Decimal("0.9"), key_id=alice.key.pk), Decimal("0.9"))
    refused = reserve(budget, Decimal("0.5"), key_id=alice.key.pk)
    assert isinstance(refused, Refusal) and refused.by_budget
    limit.refresh_from_db()
    assert (limit.spent, limit.reserved) == (Decimal("0.9"), Decimal("0"))


def test_a_request_that_outlived_the_reaper_is_charged_but_frees_nothing_twice(alice, settings):
    from routing.tasks import reap_abandoned

    budget = budget_for(alice.tenant, "10")
    limit = sub_limit(budget, "10", key=alice.key)
    hold = reserve(budget, Decimal("6"), key_id=alice.key.pk)
    record = InferenceRecord.objects.create(
        tenant=alice.tenant, api_key=alice.key, task="generation", model_slug="gpt-fake", request_id="slow-stream-1",
        reserved_cost=Decimal("6"),
        created_at=datetime.now(dt_timezone.utc) - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 120),
    )
    other = reserve(budget, Decimal("3"), key_id=alice.key.pk)  # a live request's hold
    assert isinstance(other, Hold) and reap_abandoned() == 1  # frees the slow request's 6
    # The slow request finishes after all: its cost is charged, its (already freed) hold is not freed again.
    settle(hold, Decimal("2"), record_id=record.pk, update=(InferenceRecord.objects.filter(pk=record.pk), {"status": "ok"}))
    for row in (budget, limit):
        row.refresh_from_db()
        assert (row.spent, row.reserved) == (Decimal("2"), Decimal("3"))  # the live request's hold is intact
    assert InferenceRecord.objects.get(pk=record.pk).status == "ok"


def test_the_reaper_of_a_deleted_keys_request_leaves_model_sub_limits_alone(alice, alice_limited, settings):
    from routing.tasks import reap_abandoned

    budget = budget_for(alice.tenant, "10")
    by_model = sub_limit(budget, "10", model="gpt-other")
    assert isinstance(reserve(budget, Decimal("6"), key_id=alice_limited.key.pk, model_slug="gpt-other"), Hold)
    InferenceRecord.objects.create(
        tenant=alice.tenant, api_key=None, task="generation", model_slug="gpt-fake", request_id="died-nokey-1",
        reserved_cost=Decimal("1"),
        created_at=datetime.now(dt_timezone.utc) - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 120),
    )
    assert reap_abandoned() == 1
    by_model.refresh_from_db()
    assert by_model.reserved == Decimal("6")


@pytest.mark.django_db(transaction=True)
def test_concurrent_holds_and_settlements_on_a_sub_limit_never_deadlock(tenant_a):
    """Holds lock sub-limit then budget; settlements and releases must take them in the same order."""
    from django.db import connections

    from tests.conftest import make_caller

    caller = make_caller(tenant_a, "busy")
    budget = budget_for(tenant_a, "1000")
    sub_limit(budget, "1000", key=caller.key)
    sub_limit(budget, "1000", model="gpt-fake")
    errors: list[BaseException] = []

    def work(_: int) -> None:
        try:
            for step in range(25):
                hold = reserve(Budget.objects.get(pk=budget.pk), Decimal("1"), key_id=caller.key.pk, model_slug="gpt-fake")
                assert isinstance(hold, Hold) and len(hold.sub_limits) == 2
                if step % 2:
                    settle(hold, Decimal("0.5"))
                else:
                    release(hold)
        except BaseException as exc:  # collected: a deadlock must fail the test, not vanish in a thread
            errors.append(exc)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(6) as executor:
        list(executor.map(work, range(6)))
    assert errors == []
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == Decimal("0.5") * 6 * 12
    assert set(SpendLimit.objects.values_list("reserved", "spent")) == {(Decimal("0"), Decimal("0.5") * 6 * 12)}
