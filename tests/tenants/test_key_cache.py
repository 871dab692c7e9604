"""Keys verified lately are trusted for MODELGATE_KEY_CACHE_SECONDS: no query for a busy key, and a
revocation or suspension made elsewhere refuses the key once that window has passed."""
from datetime import timedelta
from decimal import Decimal

import time_machine
from django.utils import timezone

from billing.models import Budget
from tenants.models import ApiKey, Tenant

WINDOW = 2  # MODELGATE_KEY_CACHE_SECONDS as the key_cache fixture sets it


def code_of(response) -> str:
    return response.json()["error"]["code"]


def test_a_busy_key_costs_no_query_within_the_window(api, alice, key_cache, django_assert_num_queries):
    api.get("/v1/me", **alice.auth)  # verifies the key and writes last_used_at
    with django_assert_num_queries(0):
        assert api.get("/v1/me", **alice.auth).status_code == 200


def test_a_key_revoked_elsewhere_is_refused_once_the_window_has_passed(api, alice, key_cache):
    assert api.get("/v1/me", **alice.auth).status_code == 200
    # What another process's revocation looks like from here: the row changes, no signal arrives.
    ApiKey.objects.filter(pk=alice.key.pk).update(revoked_at=timezone.now())

    key_cache.now += WINDOW - 0.1
    assert api.get("/v1/me", **alice.auth).status_code == 200  # the documented delay
    key_cache.now += 0.1
    response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 401 and code_of(response) == "key_revoked"


def test_a_tenant_suspended_elsewhere_is_refused_once_the_window_has_passed(api, alice, key_cache):
    assert api.get("/v1/me", **alice.auth).status_code == 200
    Tenant.objects.filter(pk=alice.tenant.pk).update(status=Tenant.Status.SUSPENDED)

    key_cache.now += WINDOW
    response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 403 and code_of(response) == "tenant_suspended"


def test_a_key_saved_in_this_process_is_seen_by_the_next_request(api, alice, key_cache):
    assert api.get("/v1/keys", **alice.auth).status_code == 200
    alice.key.scopes = ["chat"]
    alice.key.save()
    response = api.get("/v1/keys", **alice.auth)
    assert response.status_code == 403 and code_of(response) == "missing_scope"


def test_a_cached_key_still_expires_on_time(api, alice, key_cache):
    expires = timezone.now() + timedelta(minutes=5)
    ApiKey.objects.filter(pk=alice.key.pk).update(expires_at=expires)
    assert api.get("/v1/me", **alice.auth).status_code == 200
    with time_machine.travel(expires + timedelta(seconds=1)):
        response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 401 and code_of(response) == "key_expired"


def test_only_the_right_secret_finds_the_cached_key(api, alice, key_cache):
    assert api.get("/v1/me", **alice.auth).status_code == 200
    wrong = f"mg_{alice.key.prefix}_" + "b" * 43
    response = api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {wrong}")
    assert response.status_code == 401 and code_of(response) == "invalid_api_key"


def test_the_budget_is_read_fresh_while_the_key_is_cached(api, alice, key_cache):
    budget = Budget.objects.create(tenant=alice.tenant, limit=Decimal("10"))
    assert api.get("/v1/budget", **alice.auth).json()["budget"]["spent"] == "0.000000000000"
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("2.5"))
    assert api.get("/v1/budget", **alice.auth).json()["budget"]["spent"] == "2.500000000000"


def test_a_budget_set_in_this_process_applies_to_the_next_request(api, alice, key_cache):
    assert api.get("/v1/budget", **alice.auth).json()["budget"] is None  # the key is cached with "no budget"
    Budget.objects.create(tenant=alice.tenant, limit=Decimal("10"))
    assert api.get("/v1/budget", **alice.auth).json()["budget"]["limit"] == "10.000000000000"
