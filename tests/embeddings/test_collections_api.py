"""/v1/collections: create (dimension measured through the router), list, get by id or name, delete, quotas."""
from __future__ import annotations

import pytest

from embeddings.models import Collection, Document
from routing.models import InferenceRecord
from tests.embeddings.conftest import post


def test_creating_a_collection_measures_its_dimension_with_one_recorded_embedding(api, alice, minilm):
    response = post(api, "/v1/collections", {"name": "kb"}, alice, HTTP_X_REQUEST_ID="create-0001")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["model"], body["dimension"], body["distance"]) == ("kb", "minilm-l6", 384, "cosine")
    assert body["document_count"] == 0 and body["index"] == "ready"  # 384/cosine is built by the migration
    [record] = InferenceRecord.objects.filter(request_id="create-0001")
    assert (record.task, record.model_slug, record.status) == ("embeddings", "minilm-l6", "ok")


def test_a_collection_is_found_by_id_and_by_name_and_listed(api, alice, collection):
    by_id = api.get(f"/v1/collections/{collection['id']}", **alice.auth).json()
    by_name = api.get("/v1/collections/notes", **alice.auth).json()
    assert by_id == by_name and by_id["document_count"] == 12
    listed = api.get("/v1/collections", **alice.auth).json()
    assert [c["name"] for c in listed] == ["notes"]


def test_deleting_a_collection_deletes_its_documents(api, alice, collection):
    response = api.delete("/v1/collections/notes", **alice.auth)
    assert response.status_code == 200 and response.json()["documents_deleted"] == 12
    assert not Collection.objects.exists() and not Document.objects.exists()
    assert api.get("/v1/collections/notes", **alice.auth).status_code == 404


def test_a_collection_without_a_model_takes_its_dimension_from_the_request(api, alice, minilm):
    response = post(api, "/v1/collections", {"name": "own", "model": None, "dimension": 3, "distance": "l2"}, alice)
    assert response.status_code == 201, response.content
    assert (response.json()["model"], response.json()["dimension"]) == (None, 3)
    assert not InferenceRecord.objects.exists()


def test_the_same_name_twice_is_a_conflict(api, alice, collection):
    response = post(api, "/v1/collections", {"name": "notes"}, alice)
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_the_collection_quota_per_tenant_holds(api, alice, bob, minilm, settings):
    settings.MODELGATE_COLLECTIONS_PER_TENANT = 1
    assert post(api, "/v1/collections", {"name": "one", "model": None, "dimension": 4}, alice).status_code == 201
    response = post(api, "/v1/collections", {"name": "two", "model": None, "dimension": 4}, alice)
    assert response.status_code == 403 and response.json()["error"]["code"] == "quota_exceeded"
    assert post(api, "/v1/collections", {"name": "one", "model": None, "dimension": 4}, bob).status_code == 201


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({}, 400, "name"),
        ({"name": "has space"}, 400, "name"),
        ({"name": "7d2c1a8e-3c55-4a4e-9a59-2f1f0c6b8f11"}, 400, "UUID"),
        ({"name": "x", "model": None}, 400, "dimension"),
        ({"name": "x", "model": None, "dimension": 0}, 400, "dimension"),
        ({"name": "x", "model": None, "dimension": 3000}, 400, "over the limit"),
        ({"name": "x", "dimension": 512}, 400, "embeds into 384 dimensions"),
        ({"name": "x", "model": "no-such-model"}, 400, "No enabled embeddings model"),
        ({"name": "x", "distance": "manhattan"}, 400, "distance"),
        ({"name": "x", "metadata_schema": {"year": "float"}}, 400, "metadata_schema"),
        ({"name": "x", "metadata_schema": ["year"]}, 400, "metadata_schema"),
    ],
)
def test_bad_collections_are_refused_and_nothing_is_created(api, alice, minilm, body, status, message):
    response = post(api, "/v1/collections", body, alice)
    assert response.status_code == status, response.content
    assert message in response.json()["error"]["message"]
    assert not Collection.objects.exists()


def test_the_schema_documents_the_collections_api(api, db):
    paths = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]
    for path in ["/v1/collections", "/v1/collections/{ref}", "/v1/collections/{ref}/documents",
                 "/v1/collections/{ref}/documents:delete", "/v1/collections/{ref}/documents/{external_id}",
                 "/v1/collections/{ref}/search", "/v1/collections/{ref}/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/resume"]:
        assert path in paths, path
    search = paths["/v1/collections/{ref}/search"]["post"]
    assert search["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Search")
