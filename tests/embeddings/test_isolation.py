"""Tenant isolation over every collections endpoint: tenant B gets, for A's collection, job or
document, exactly what it gets for one that does not exist — and changes nothing of A's."""
from __future__ import annotations

import json
import uuid

import pytest

from embeddings.models import Collection, Document, IngestionJob, SearchRecord
from tests.embeddings.conftest import post, topic_documents

MISSING = str(uuid.uuid4())


def endpoints(collection: str, job: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", f"/v1/collections/{collection}", None),
        ("delete", f"/v1/collections/{collection}", None),
        ("post", f"/v1/collections/{collection}/documents", {"documents": [{"id": "x", "text": "hello"}]}),
        ("post", f"/v1/collections/{collection}/documents:delete", {"ids": ["cats-0"]}),
        ("get", f"/v1/collections/{collection}/documents/cats-0", None),
        ("delete", f"/v1/collections/{collection}/documents/cats-0", None),
        ("post", f"/v1/collections/{collection}/search", {"query": "cats"}),
        ("get", f"/v1/collections/{collection}/jobs", None),
        ("post", f"/v1/collections/{collection}/jobs", {"documents": [{"id": "x", "text": "hello"}]}),
        ("get", f"/v1/jobs/{job}", None),
        ("post", f"/v1/jobs/{job}/resume", None),
        ("post", f"/v1/jobs/{job}/cancel", None),
    ]


def call(api, method: str, path: str, body: dict | None, caller=None):
    headers = caller.auth if caller else {}
    if body is None:
        return getattr(api, method)(path, **headers)
    return getattr(api, method)(path, json.dumps(body), content_type="application/json", **headers)


@pytest.fixture
def job(api, alice, collection) -> str:
    return post(api, "/v1/collections/notes/jobs", {"documents": topic_documents()[:2]}, alice).json()["id"]


def test_tenant_b_meets_the_same_404_for_a_collection_of_a_as_for_a_missing_one(api, alice, bob, collection, job):
    before = (Collection.objects.count(), Document.objects.count(), IngestionJob.objects.get(pk=job).status)
    for (method, path, body), (_, missing_path, _) in zip(endpoints(collection["id"], job), endpoints(MISSING, MISSING)):
        foreign = call(api, method, path, body, bob)
        missing = call(api, method, missing_path, body, bob)
        assert foreign.status_code == missing.status_code == 404, (method, path)
        assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
        assert foreign.json()["error"]["message"].replace(collection["id"], "?").replace(job, "?") == \
            missing.json()["error"]["message"].replace(MISSING, "?"), (method, path)
    assert (Collection.objects.count(), Document.objects.count(), IngestionJob.objects.get(pk=job).status) == before
    assert not SearchRecord.objects.exists()


def test_names_are_per_tenant_so_b_reaches_only_its_own_collection_of_the_same_name(api, alice, bob, collection):
    post(api, "/v1/collections", {"name": "notes"}, bob)
    post(api, "/v1/collections/notes/documents", {"documents": [{"id": "b-only", "text": "A cat owned by tenant B."}]}, bob)
    found = post(api, "/v1/collections/notes/search", {"query": "cat", "k": 20}, bob).json()["results"]
    assert [hit["id"] for hit in found] == ["b-only"]
    assert [c["name"] for c in api.get("/v1/collections", **bob.auth).json()] == ["notes"]
    post(api, "/v1/collections/notes/documents:delete", {"filter": {"topic": "cats"}}, bob)
    assert Document.objects.filter(collection_id=collection["id"]).count() == 12
    assert api.get("/v1/collections/notes/documents/cats-0", **bob.auth).status_code == 404


@pytest.mark.parametrize("index", range(12))
def test_the_permission_matrix(api, alice, alice_limited, collection, job, index):
    method, path, body = endpoints(collection["id"], job)[index]
    assert call(api, method, path, body).status_code == 401
    limited = call(api, method, path, body, alice_limited)
    assert limited.status_code == 403 and limited.json()["error"]["code"] == "missing_scope"
    assert call(api, method, path, body, alice).status_code in {200, 202, 409}  # 409: resuming a queued job


def test_the_list_and_create_endpoints_need_the_collections_scope(api, alice_limited, minilm):
    assert api.get("/v1/collections", **alice_limited.auth).status_code == 403
    assert post(api, "/v1/collections", {"name": "x"}, alice_limited).status_code == 403
    assert api.get("/v1/collections").status_code == 401
