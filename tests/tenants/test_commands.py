"""`manage.py tenants …` and `manage.py keys …`: what an operator types, and what it prints."""
import io
import re

import pytest
from django.core.management import CommandError, call_command

from tenants.models import KEY_PATTERN, ApiKey, Tenant


def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def printed_key(output):
    keys = [line for line in output.splitlines() if KEY_PATTERN.match(line)]
    assert len(keys) == 1, output
    return keys[0]


@pytest.mark.django_db
def test_tenants_create_list_suspend_activate():
    assert "Created tenant acme (Acme Inc)" in run("tenants", "create", "acme", "--name", "Acme Inc")
    assert re.search(r"acme\s+active\s+0 active keys\s+Acme Inc", run("tenants", "list"))
    run("tenants", "suspend", "acme")
    assert Tenant.objects.get(slug="acme").status == "suspended"
    run("tenants", "activate", "acme")
    assert Tenant.objects.get(slug="acme").is_active


@pytest.mark.django_db
def test_tenants_create_refuses_a_duplicate_or_bad_slug():
    run("tenants", "create", "acme")
    with pytest.raises(CommandError, match="slug"):
        run("tenants", "create", "acme")
    with pytest.raises(CommandError, match="slug"):
        run("tenants", "create", "not a slug!")


def test_keys_create_prints_the_secret_once_and_stores_its_hash(api, tenant_a):
    output = run("keys", "create", "alpha", "--name", "ci", "--scopes", "chat,embeddings", "--rpm", "120", "--tpm", "9000",
                 "--expires-in", "30d")
    secret = printed_key(output)
    key = ApiKey.objects.get(prefix=KEY_PATTERN.match(secret)["prefix"])
    assert (key.name, key.scopes, key.rpm_limit, key.tpm_limit) == ("ci", ["chat", "embeddings"], 120, 9000)
    assert key.expires_at is not None
    assert key.matches(KEY_PATTERN.match(secret)["secret"])
    assert api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    assert secret not in run("keys", "list", "--tenant", "alpha")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["keys", "create", "ghost"], "No tenant with slug 'ghost'"),
        (["keys", "create", "alpha", "--scopes", "chat,fly"], "Unknown scopes fly"),
        (["keys", "create", "alpha", "--expires-in", "soon"], "Invalid duration 'soon'"),
        (["keys", "create", "alpha", "--rpm", "0"], "--rpm must be at least 1"),
        (["keys", "create", "alpha", "--tpm", "-5"], "--tpm must be at least 1"),
        (["keys", "revoke", "000000000000"], "No key with prefix"),
        (["keys", "rotate", "000000000000"], "No key with prefix"),
    ],
)
def test_keys_commands_explain_bad_input(tenant_a, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert ApiKey.objects.count() == 0


def test_keys_revoke_accepts_the_prefix_or_the_whole_key(api, alice):
    assert "Revoked key" in run("keys", "revoke", alice.secret)
    assert api.get("/v1/me", **alice.auth).json()["error"]["code"] == "key_revoked"
    assert "already revoked" in run("keys", "revoke", alice.key.prefix)


def test_keys_rotate_prints_a_new_key_and_the_old_ones_deadline(api, alice):
    output = run("keys", "rotate", alice.key.prefix, "--grace", "2h")
    new_secret = printed_key(output)
    assert "stays valid until" in output
    assert api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {new_secret}").status_code == 200
    assert api.get("/v1/me", **alice.auth).status_code == 200
    lines = run("keys", "list", "--tenant", "alpha").splitlines()
    assert len(lines) == 2 and all("active" in line for line in lines)
