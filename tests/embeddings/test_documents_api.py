"""Upserting, fetching and deleting documents: embedded through the router, unchanged text never twice."""
from __future__ import annotations

import numpy as np
import pytest

from embeddings.models import Collection, Document
from routing.models import InferenceRecord
from tests.embeddings.conftest import post, topic_documents


def embedding_records() -> int:
    return InferenceRecord.objects.filter(task="embeddings").count()


def test_an_upsert_embeds_through_the_router_and_stores_every_document(api, alice, minilm):
    post(api, "/v1/collections", {"name": "kb"}, alice)
    response = post(api, "/v1/collections/kb/documents", {"documents": topic_documents()}, alice, HTTP_X_REQUEST_ID="upsert-0001")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["inserted"], body["updated"], body["unchanged"], body["embedded"]) == (12, 0, 0, 12)
    [inference] = body["inferences"]
    record = InferenceRecord.objects.get(pk=inference["inference_id"])
    assert (record.request_id, record.task, record.model_slug, record.items, record.unit) == (
        "upsert-0001", "embeddings", "minilm-l6", 12, "tokens")
    stored = Document.objects.get(external_id="cats-0")
    assert stored.dim == 384 and abs(np.linalg.norm(stored.embedding) - 1) < 1e-4
    assert stored.metadata == {"topic": "cats", "index": 0} and stored.tenant_id == alice.tenant.pk
    assert Collection.objects.get(name="kb").document_count == 12


def test_upserting_the_same_documents_again_changes_nothing_and_embeds_nothing(api, alice, collection):
    before = embedding_records()
    first_vector = Document.objects.get(external_id="cats-0").embedding.copy()
    body = post(api, "/v1/collections/notes/documents", {"documents": topic_documents()}, alice).json()
    assert (body["inserted"], body["updated"], body["unchanged"], body["embedded"], body["inferences"]) == (0, 0, 12, 0, [])
    assert embedding_records() == before
    assert Document.objects.count() == 12 and np.array_equal(Document.objects.get(external_id="cats-0").embedding, first_vector)


def test_new_metadata_alone_updates_without_embedding_and_new_text_is_embedded(api, alice, collection):
    before = embedding_records()
    documents = topic_documents()
    documents[0]["metadata"] = {"topic": "cats", "index": 0, "reviewed": True}
    documents[1]["text"] = "A kitten sleeps in a cardboard box all afternoon."
    body = post(api, "/v1/collections/notes/documents", {"documents": documents}, alice).json()
    assert (body["inserted"], body["updated"], body["unchanged"], body["embedded"]) == (0, 2, 10, 1)
    assert embedding_records() == before + 1
    assert Document.objects.get(external_id="cats-0").metadata["reviewed"] is True
    assert Document.objects.get(external_id="cats-1").text.startswith("A kitten sleeps")
    assert Collection.objects.get(name="notes").document_count == 12


def test_precomputed_vectors_are_stored_as_given(api, alice, minilm):
    post(api, "/v1/collections", {"name": "own", "model": None, "dimension": 3, "distance": "l2"}, alice)
    documents = [{"id": "a", "vector": [1, 0, 0]}, {"id": "b", "text": "described", "vector": [0.5, 0.25, 2]}]
    body = post(api, "/v1/collections/own/documents", {"documents": documents}, alice).json()
    assert (body["inserted"], body["embedded"]) == (2, 0) and not InferenceRecord.objects.exists()
    assert list(Document.objects.get(external_id="b").embedding) == [0.5, 0.25, 2.0]
    again = post(api, "/v1/collections/own/documents", {"documents": documents}, alice).json()
    assert again["unchanged"] == 2


def test_a_vector_of_the_wrong_dimension_is_a_400_naming_it_and_nothing_is_written(api, alice, collection):
    documents = [{"id": "fine", "text": "A valid document."}, {"id": "bad", "text": "x", "vector": [0.1] * 383}]
    response = post(api, "/v1/collections/notes/documents", {"documents": documents}, alice)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "documents.1.vector: 383 numbers; this collection stores 384-dimensional vectors."
    assert not Document.objects.filter(external_id__in=["fine", "bad"]).exists()


@pytest.mark.parametrize(
    "documents, message",
    [
        ([], "documents"),
        ([{"text": "no id"}], "documents.0.id"),
        ([{"id": "a"}], "documents.0.text: Give a text"),
        ([{"id": "a", "text": "   "}], "documents.0.text"),
        ([{"id": "a", "text": "x\u0000y"}], "documents.0.text: Holds a NUL character"),
        ([{"id": "a", "text": "ok", "metadata": {"k": "x\u0000y"}}], "documents.0.metadata.k: Holds a NUL character"),
        ([{"id": "a", "text": "ok", "metadata": ["not", "an", "object"]}], "documents.0.metadata"),
        ([{"id": "a", "text": "ok", "metadata": {"index": "three"}}], "schema says integer"),
        ([{"id": "a", "text": "ok", "metadata": {"published": "last tuesday"}}], "schema says date"),
        ([{"id": "a", "text": "ok", "metadata": {"k": "v" * 9000}}], "bytes as JSON"),
        ([{"id": "a", "text": "ok", "vector": ["x"] * 384}], "A list of numbers"),
        ([{"id": "a", "text": "ok", "vector": [0.0] * 384}], "zero vector"),
        ([{"id": "a", "text": "ok", "vector": [1e39] * 384}], "finite"),
        ([{"id": "a", "text": "one"}, {"id": "a", "text": "two"}], "appears twice"),
        ([{"id": "x" * 257, "text": "ok"}], "documents.0.id"),
    ],
)
def test_bad_documents_are_refused_and_nothing_is_written(api, alice, collection, documents, message):
    before = (Document.objects.count(), embedding_records())
    response = post(api, "/v1/collections/notes/documents", {"documents": documents}, alice)
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]["message"]
    assert (Document.objects.count(), embedding_records()) == before


def test_limits_on_documents_per_request_and_text_size(api, alice, collection, settings):
    settings.MODELGATE_COLLECTION_DOCUMENTS_PER_REQUEST = 3
    settings.MODELGATE_COLLECTION_MAX_TEXT_CHARACTERS = 100
    many = post(api, "/v1/collections/notes/documents", {"documents": topic_documents()[:4]}, alice)
    assert many.status_code == 400 and "the limit is 3 per request" in many.json()["error"]["message"]
    long = post(api, "/v1/collections/notes/documents", {"documents": [{"id": "l", "text": "a" * 101}]}, alice)
    assert long.status_code == 400 and "101 characters; the limit is 100" in long.json()["error"]["message"]


def test_the_document_quota_of_a_collection_holds_all_or_nothing(api, alice, collection, settings):
    settings.MODELGATE_COLLECTION_MAX_DOCUMENTS = 13
    documents = [{"id": "new-1", "text": "One more note."}, {"id": "new-2", "text": "And another."}]
    response = post(api, "/v1/collections/notes/documents", {"documents": documents}, alice)
    assert response.status_code == 403 and response.json()["error"]["code"] == "quota_exceeded"
    assert Document.objects.count() == 12 and Collection.objects.get(name="notes").document_count == 12
    assert post(api, "/v1/collections/notes/documents", {"documents": documents[:1]}, alice).status_code == 200


def test_a_document_is_fetched_by_id_with_or_without_its_vector(api, alice, collection):
    body = api.get("/v1/collections/notes/documents/finance-1", **alice.auth).json()
    assert body["text"] == "Shares fell sharply after the quarterly earnings report."
    assert body["metadata"] == {"topic": "finance", "index": 1} and "vector" not in body
    with_vector = api.get("/v1/collections/notes/documents/finance-1?include_vector=true", **alice.auth).json()
    assert len(with_vector["vector"]) == 384
    assert api.get("/v1/collections/notes/documents/nope", **alice.auth).status_code == 404


def test_ids_may_hold_slashes_and_the_word_delete(api, alice, collection):
    documents = [{"id": "a/b/c", "text": "Nested path id."}, {"id": "delete", "text": "Named like the custom method."}]
    post(api, "/v1/collections/notes/documents", {"documents": documents}, alice)
    assert api.get("/v1/collections/notes/documents/a/b/c", **alice.auth).json()["id"] == "a/b/c"
    assert api.get("/v1/collections/notes/documents/delete", **alice.auth).json()["id"] == "delete"
    assert api.delete("/v1/collections/notes/documents/delete", **alice.auth).json() == {"deleted": 1}


def test_documents_are_deleted_by_ids_and_by_filter(api, alice, collection):
    by_ids = post(api, "/v1/collections/notes/documents:delete", {"ids": ["cats-0", "cats-1", "missing"]}, alice)
    assert by_ids.json() == {"deleted": 2}
    by_filter = post(api, "/v1/collections/notes/documents:delete", {"filter": {"topic": {"$in": ["finance", "cooking"]}}}, alice)
    assert by_filter.json() == {"deleted": 6}
    assert sorted(Document.objects.values_list("external_id", flat=True)) == [
        "cats-2", "football-0", "football-1", "football-2"]
    assert Collection.objects.get(name="notes").document_count == 4


@pytest.mark.parametrize(
    "body, message",
    [({}, "Give either ids or filter"), ({"ids": ["a"], "filter": {"topic": "x"}}, "Give either ids or filter"),
     ({"filter": {}}, "non-empty filter"), ({"filter": {"year": {"$like": 3}}}, "Unknown operator"), ({"ids": []}, "ids")],
)
def test_bad_deletes_are_refused(api, alice, collection, body, message):
    response = post(api, "/v1/collections/notes/documents:delete", body, alice)
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert Document.objects.count() == 12
