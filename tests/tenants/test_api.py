"""/v1/me and /v1/keys: each tenant sees itself only; a permission matrix over the endpoints."""
import pytest

ENDPOINTS = ["/v1/me", "/v1/keys", "/v1/keys/{own_prefix}"]


def test_me_answers_the_calling_tenant_and_key(api, alice):
    body = api.get("/v1/me", **alice.auth).json()
    assert body["tenant"] == {"slug": "alpha", "name": "Alpha Corp", "status": "active", "created_at": body["tenant"]["created_at"]}
    assert body["key"]["prefix"] == alice.key.prefix
    assert body["key"]["scopes"] == ["*"]
    assert "secret_hash" not in body["key"]


def test_keys_lists_only_the_own_tenants_keys(api, alice, alice_limited, bob):
    prefixes = {key["prefix"] for key in api.get("/v1/keys", **alice.auth).json()}
    assert prefixes == {alice.key.prefix, alice_limited.key.prefix}
    assert {key["prefix"] for key in api.get("/v1/keys", **bob.auth).json()} == {bob.key.prefix}


def test_another_tenants_key_is_as_missing_as_a_key_that_never_existed(api, alice, bob):
    foreign = api.get(f"/v1/keys/{alice.key.prefix}", **bob.auth)
    missing = api.get("/v1/keys/000000000000", **bob.auth)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert foreign.json()["error"]["message"] == missing.json()["error"]["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "who, expected",
    [("alice", 200), ("alice_limited", {"/v1/me": 200}), ("bob", {"/v1/keys/{own_prefix}": 404}), ("nobody", 401)],
)
def test_permission_matrix(api, alice, alice_limited, bob, path, who, expected):
    callers = {"alice": alice, "alice_limited": alice_limited, "bob": bob}
    url = path.format(own_prefix=alice.key.prefix)  # always A's objects
    headers = callers[who].auth if who in callers else {}
    response = api.get(url, **headers)
    if isinstance(expected, dict):
        default = 403 if who == "alice_limited" else 200
        expected = expected.get(path, default)
    assert response.status_code == expected, response.content
    if expected >= 400:
        assert "error" in response.json()
