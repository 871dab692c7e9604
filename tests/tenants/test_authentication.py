"""Every way a key can fail, each a 401/403 in the one error shape; and what a good key costs."""
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from tenants.models import ApiKey, Tenant


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message", "request_id"} <= set(body["error"])
    return body["error"]


def test_a_valid_bearer_key_is_accepted(api, alice):
    response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 200
    assert response.json()["tenant"]["slug"] == "alpha"


def test_the_key_may_come_in_x_api_key(api, alice):
    response = api.get("/v1/me", HTTP_X_API_KEY=alice.secret)
    assert response.status_code == 200
    assert response.json()["key"]["name"] == "alice"


def test_it_rejects_a_missing_key_with_401_and_a_challenge(api, db):
    response = api.get("/v1/me")
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "Bearer a b"])
def test_it_rejects_a_malformed_authorization_header(api, db, header):
    response = api.get("/v1/me", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert error_of(response)["code"] == "malformed_authorization"


@pytest.mark.parametrize("token", ["sk-abc", "mg_short_secret", "mg_0123456789ab_tooshort", "mg_0123456789AB_" + "a" * 43])
def test_it_rejects_a_malformed_key(api, db, token):
    response = api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 401
    assert error_of(response)["code"] == "malformed_api_key"


def test_it_rejects_an_unknown_prefix(api, db):
    response = api.get("/v1/me", HTTP_AUTHORIZATION="Bearer mg_0123456789ab_" + "a" * 43)
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_it_rejects_a_wrong_secret_for_a_real_prefix(api, alice):
    wrong = f"mg_{alice.key.prefix}_" + "b" * 43
    response = api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {wrong}")
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_it_rejects_a_revoked_key(api, alice):
    ApiKey.objects.filter(pk=alice.key.pk).update(revoked_at=timezone.now())
    response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 401
    assert error_of(response)["code"] == "key_revoked"


def test_it_rejects_an_expired_key(api, alice):
    ApiKey.objects.filter(pk=alice.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 401
    assert error_of(response)["code"] == "key_expired"


def test_it_rejects_a_key_of_a_suspended_tenant_with_403(api, alice):
    Tenant.objects.filter(pk=alice.tenant.pk).update(status=Tenant.Status.SUSPENDED)
    response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 403
    assert error_of(response)["code"] == "tenant_suspended"


def test_a_key_lacking_the_scope_gets_403_naming_it(api, alice_limited):
    response = api.get("/v1/keys", **alice_limited.auth)
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "missing_scope"
    assert "'keys'" in error["message"]


def test_last_used_is_written_at_most_once_a_minute(api, alice):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        api.get("/v1/me", **alice.auth)
    alice.key.refresh_from_db()
    assert alice.key.last_used_at == start

    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        api.get("/v1/me", **alice.auth)
    alice.key.refresh_from_db()
    assert alice.key.last_used_at == start

    with time_machine.travel(start + timedelta(seconds=61), tick=False):
        api.get("/v1/me", **alice.auth)
    alice.key.refresh_from_db()
    assert alice.key.last_used_at == start + timedelta(seconds=61)


def test_an_authenticated_request_costs_one_query_once_last_used_is_fresh(api, alice, django_assert_num_queries):
    api.get("/v1/me", **alice.auth)  # writes last_used_at
    with django_assert_num_queries(1):  # the key with its tenant, in one join
        response = api.get("/v1/me", **alice.auth)
    assert response.status_code == 200
