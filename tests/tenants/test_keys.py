"""Keys: only a hash is stored, the secret has enough entropy, rotation keeps the old key for a grace period."""
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from tenants import services
from tenants.models import KEY_PATTERN, ApiKey


def test_a_key_has_the_documented_shape_and_256_bits_of_secret(alice):
    match = KEY_PATTERN.match(alice.secret)
    assert match is not None
    assert match["prefix"] == alice.key.prefix
    assert len(match["secret"]) == 43  # base64 of 32 random bytes


def test_only_the_hash_of_the_secret_is_stored(alice):
    secret = KEY_PATTERN.match(alice.secret)["secret"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(k)::text FROM tenants_apikey k")
        rows = [row[0] for row in cursor.fetchall()]
    assert rows and all(secret not in row for row in rows)
    assert ApiKey.objects.get(pk=alice.key.pk).secret_hash == ApiKey.hash_secret(secret)


def test_two_keys_never_share_a_prefix_or_secret(tenant_a):
    issued = [services.issue_api_key(tenant=tenant_a, name=f"k{i}") for i in range(20)]
    assert len({key.prefix for key, _ in issued}) == 20
    assert len({secret for _, secret in issued}) == 20


def test_rotation_keeps_the_old_key_valid_for_the_grace_period(api, alice):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        new_key, new_secret = services.rotate_api_key(key=alice.key, grace=timedelta(hours=1))
        assert api.get("/v1/me", **alice.auth).status_code == 200
        assert api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {new_secret}").status_code == 200

    alice.key.refresh_from_db()
    assert alice.key.expires_at == start + timedelta(hours=1)
    assert alice.key.replaced_by == new_key
    assert (new_key.name, new_key.scopes, new_key.tenant) == (alice.key.name, alice.key.scopes, alice.tenant)

    with time_machine.travel(start + timedelta(hours=1, seconds=1), tick=False):
        old = api.get("/v1/me", **alice.auth)
        assert old.status_code == 401 and old.json()["error"]["code"] == "key_expired"
        assert api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {new_secret}").status_code == 200


def test_rotation_with_no_grace_revokes_at_once(api, alice):
    services.rotate_api_key(key=alice.key, grace=timedelta(0))
    response = api.get("/v1/me", **alice.auth)
    assert response.json()["error"]["code"] == "key_revoked"


def test_rotation_never_extends_a_key_that_expires_sooner(alice):
    soon = timezone.now() + timedelta(minutes=5)
    ApiKey.objects.filter(pk=alice.key.pk).update(expires_at=soon)
    alice.key.refresh_from_db()
    new_key, _ = services.rotate_api_key(key=alice.key, grace=timedelta(days=7))
    alice.key.refresh_from_db()
    assert alice.key.expires_at == soon
    assert new_key.expires_at == soon


def test_a_revoked_key_cannot_be_rotated(alice):
    services.revoke_api_key(key=alice.key)
    with pytest.raises(ValueError, match="revoked"):
        services.rotate_api_key(key=alice.key, grace=timedelta(hours=1))


def test_revoking_twice_reports_the_second_as_a_no_op(alice):
    assert services.revoke_api_key(key=alice.key) is True
    assert services.revoke_api_key(key=alice.key) is False


def test_rotation_keeps_every_limit_and_restriction_of_the_key(alice):
    ApiKey.objects.filter(pk=alice.key.pk).update(
        rpm_limit=30, tpm_limit=5000, local_only=True, allowed_models=["lid-176"], scopes=["classify"]
    )
    alice.key.refresh_from_db()
    new_key, _ = services.rotate_api_key(key=alice.key, grace=timedelta(hours=1))
    assert (new_key.rpm_limit, new_key.tpm_limit, new_key.local_only, new_key.allowed_models, new_key.scopes) == (
        30, 5000, True, ["lid-176"], ["classify"])
