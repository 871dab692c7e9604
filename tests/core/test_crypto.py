"""Encryption at rest: each kind of secret under its own key, rotation, secrets stored before a kind had its own key."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from core import crypto
from core.crypto import PROVIDER_CREDENTIALS, WEBHOOK_SECRETS


@pytest.fixture(autouse=True)
def fresh_keys():
    crypto._fernet.cache_clear()
    yield
    crypto._fernet.cache_clear()


def test_a_secret_round_trips_and_is_not_stored_in_clear():
    token = WEBHOOK_SECRETS.encrypt("whsec_abc")
    assert "whsec_abc" not in token
    assert WEBHOOK_SECRETS.decrypt(token) == "whsec_abc"


@pytest.mark.parametrize("configured", [False, True])
def test_each_kind_of_secret_has_its_own_key(settings, configured):
    if configured:
        settings.MODELGATE_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    webhook = WEBHOOK_SECRETS.encrypt("whsec_abc")
    provider = PROVIDER_CREDENTIALS.encrypt("sk-abc")
    with pytest.raises(ImproperlyConfigured, match="stored provider credential cannot be decrypted"):
        PROVIDER_CREDENTIALS.decrypt(webhook)
    # The webhook vault still reads secrets written under the provider key (before it had its own) …
    assert WEBHOOK_SECRETS.decrypt(provider) == "sk-abc"
    # … but never writes with it.
    assert set(WEBHOOK_SECRETS.keys()).isdisjoint(PROVIDER_CREDENTIALS.keys())


def test_configured_keys_rotate_without_losing_data(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MODELGATE_ENCRYPTION_KEYS = [old]
    tokens = {vault: vault.encrypt("secret") for vault in (PROVIDER_CREDENTIALS, WEBHOOK_SECRETS)}
    crypto._fernet.cache_clear()
    settings.MODELGATE_ENCRYPTION_KEYS = [new, old]
    assert all(vault.decrypt(token) == "secret" for vault, token in tokens.items())
    crypto._fernet.cache_clear()
    settings.MODELGATE_ENCRYPTION_KEYS = [new]
    with pytest.raises(ImproperlyConfigured, match="stored webhook signing secret cannot be decrypted"):
        WEBHOOK_SECRETS.decrypt(tokens[WEBHOOK_SECRETS])


def test_a_malformed_configured_key_is_named_as_such(settings):
    settings.MODELGATE_ENCRYPTION_KEYS = ["not-a-fernet-key"]
    with pytest.raises(ImproperlyConfigured, match="not a Fernet key"):
        WEBHOOK_SECRETS.encrypt("x")
