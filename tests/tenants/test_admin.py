"""The operator's admin: keys are created with their secret shown once, revoked by an action."""
import re

import pytest
from django.contrib.auth import get_user_model

from tenants.models import KEY_PATTERN, ApiKey, Tenant


@pytest.fixture
def operator(client, db):
    user = get_user_model().objects.create_superuser("operator", "", "a-long-password-1")
    client.force_login(user)
    return client


def shown_secrets(response):
    return sorted(set(re.findall(r"mg_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", response.content.decode())))


def test_adding_a_key_shows_its_secret_once_and_stores_only_the_hash(operator, tenant_a):
    response = operator.post(
        "/admin/tenants/apikey/add/",
        {"tenant": tenant_a.pk, "name": "from-admin", "scopes": ["chat", "classify"], "rpm_limit": "60", "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 200, response.content[:2000]
    [secret] = shown_secrets(response)
    key = ApiKey.objects.get(name="from-admin")
    assert key.scopes == ["chat", "classify"]
    assert key.matches(KEY_PATTERN.match(secret)["secret"])
    # The change page, visited afterwards, never shows it again.
    assert shown_secrets(operator.get(f"/admin/tenants/apikey/{key.pk}/change/")) == []


def test_adding_a_tenant_with_an_inline_key_shows_that_secret(operator, db):
    response = operator.post(
        "/admin/tenants/tenant/add/",
        {
            "slug": "charlie",
            "name": "Charlie",
            "status": "active",
            "api_keys-TOTAL_FORMS": "1",
            "api_keys-INITIAL_FORMS": "0",
            "api_keys-MIN_NUM_FORMS": "0",
            "api_keys-MAX_NUM_FORMS": "1000",
            "api_keys-0-name": "first",
            "api_keys-0-scopes": ["*"],
            "api_keys-0-rpm_limit": "",
            "api_keys-0-expires_at_0": "",
            "api_keys-0-expires_at_1": "",
        },
    )
    assert response.status_code == 200, response.content[:2000]
    [secret] = shown_secrets(response)
    key = ApiKey.objects.get(tenant__slug="charlie")
    assert key.matches(KEY_PATTERN.match(secret)["secret"])


def test_revoke_action_revokes_the_selected_keys(operator, alice, alice_limited, api):
    response = operator.post(
        "/admin/tenants/apikey/", {"action": "revoke_keys", "_selected_action": [alice.key.pk]}, follow=True
    )
    assert "Revoked 1 key(s)" in response.content.decode()
    assert api.get("/v1/me", **alice.auth).status_code == 401
    assert api.get("/v1/me", **alice_limited.auth).status_code == 200


def test_suspend_action_stops_every_key_of_the_tenant(operator, alice, bob, api):
    operator.post("/admin/tenants/tenant/", {"action": "suspend_tenants", "_selected_action": [alice.tenant.pk]})
    assert Tenant.objects.get(pk=alice.tenant.pk).status == "suspended"
    assert api.get("/v1/me", **alice.auth).status_code == 403
    assert api.get("/v1/me", **bob.auth).status_code == 200


def test_changelists_search_and_filter(operator, alice, bob):
    page = operator.get("/admin/tenants/tenant/", {"q": "alpha"}).content.decode()
    assert "Alpha Corp" in page and "Bravo Ltd" not in page
    page = operator.get("/admin/tenants/apikey/", {"state": "active", "q": alice.key.prefix}).content.decode()
    assert alice.key.prefix in page and bob.key.prefix not in page
    assert operator.get(f"/admin/tenants/tenant/{alice.tenant.pk}/change/").status_code == 200
