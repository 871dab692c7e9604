"""A permission matrix over every task endpoint × {full key, key without the scope, no key}."""
from __future__ import annotations

import uuid

import pytest

ENDPOINTS = [
    ("post", "/v1/translate", "translate"),
    ("post", "/v1/detect-language", "detect_language"),
    ("post", "/v1/classify", "classify"),
    ("post", "/v1/embeddings", "embeddings"),
    ("post", "/v1/rerank", "rerank"),
    ("post", "/v1/chat/completions", "chat"),
    ("post", "/v1/audio/transcriptions", "audio"),
    ("post", "/v1/intent", "audio"),
    ("post", "/v1/feedback", "inferences"),
    ("get", f"/v1/inferences/{uuid.uuid4()}", "inferences"),
    ("get", "/v1/models", None),
    ("get", "/v1/budget", "usage"),
]


@pytest.mark.parametrize("method, path, scope", ENDPOINTS)
def test_permission_matrix(api, alice, alice_limited, method, path, scope):
    call = getattr(api, method)
    # An empty body: a caller who gets past authentication meets validation (400) or a missing record (404).
    assert call(path).status_code == 401
    assert call(path, **alice.auth).status_code in {200, 400, 404}
    limited = call(path, **alice_limited.auth).status_code
    expected_limited = {200, 400, 404} if scope in (None, "chat") else {403}
    assert limited in expected_limited
