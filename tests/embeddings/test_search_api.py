"""POST /v1/collections/{id}/search with the real MiniLM on real text: vector, filtered, exact, hybrid, reranked."""
from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from embeddings.models import Document, SearchRecord
from routing.models import InferenceRecord
from tests.embeddings.conftest import TOPICS, docstring_sentences, post


def search(api, caller, body: dict, collection: str = "notes", **extra):
    response = post(api, f"/v1/collections/{collection}/search", body, caller, **extra)
    assert response.status_code == 200, response.content
    return response.json()


def test_the_nearest_documents_come_first_and_the_search_is_recorded(api, alice, collection):
    body = search(api, alice, {"query": "my kitten sleeps on the sofa", "k": 3}, HTTP_X_REQUEST_ID="search-0001")
    assert [hit["metadata"]["topic"] for hit in body["results"]] == ["cats"] * 3
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(abs(h["score"] - (1 - h["distance"])) < 1e-5 for h in body["results"])
    record = SearchRecord.objects.get(pk=body["search_id"])
    assert (record.request_id, record.rows, record.k, record.mode, record.filtered) == ("search-0001", 3, 3, "vector", False)
    assert record.latency_ms >= record.database_ms > 0
    assert record.embedding.request_id == "search-0001" and record.embedding.task == "embeddings"
    assert body["inferences"]["embedding"]["inference_id"] == str(record.embedding_id)


def test_a_query_vector_finds_what_its_text_finds(api, alice, collection):
    by_text = search(api, alice, {"query": "interest rates and bonds", "k": 4})
    vector = list(Document.objects.get(external_id=by_text["results"][0]["id"]).embedding)
    by_vector = search(api, alice, {"vector": vector, "k": 4})
    assert by_vector["results"][0]["id"] == by_text["results"][0]["id"]
    assert by_vector["inferences"]["embedding"] is None
    assert abs(by_vector["results"][0]["distance"]) < 1e-5


def test_filters_by_equality_set_and_numeric_and_date_ranges(api, alice, collection):
    dates = {"cats": "2023-03-01", "finance": "2024-01-15", "cooking": "2024-06-30T12:00:00Z", "football": "2025-02-01"}
    documents = [{"id": h.external_id, "text": h.text, "metadata": {**h.metadata, "published": dates[h.metadata["topic"]]}}
                 for h in Document.objects.all()]
    post(api, "/v1/collections/notes/documents", {"documents": documents}, alice)

    def ids(filter_: dict) -> set[str]:
        return {hit["id"] for hit in search(api, alice, {"query": "anything at all", "k": 12, "filter": filter_})["results"]}

    assert ids({"topic": "cats"}) == {"cats-0", "cats-1", "cats-2"}
    assert ids({"topic": {"$in": ["cats", "football"]}, "index": 0}) == {"cats-0", "football-0"}
    assert ids({"index": {"$gte": 1, "$lt": 2}}) == {f"{topic}-1" for topic in TOPICS}
    assert ids({"topic": {"$ne": "cats"}, "index": {"$gt": 1}}) == {"finance-2", "cooking-2", "football-2"}
    assert ids({"published": {"$gte": "2024-01-01", "$lte": "2024-06-30T23:59:59Z"}}) == {
        "finance-0", "finance-1", "finance-2", "cooking-0", "cooking-1", "cooking-2"}
    assert ids({"published": {"$lt": "2024-01-01T00:00:00+00:00"}}) == {"cats-0", "cats-1", "cats-2"}
    assert ids({"topic": {"$nin": ["cats", "finance", "cooking"]}}) == {"football-0", "football-1", "football-2"}
    assert ids({"topic": "astronomy"}) == set()


@pytest.fixture
def large(api, alice, minilm) -> list[str]:
    """300 docstring sentences, each in one of 20 groups: a filter on a group keeps 5% of them."""
    post(api, "/v1/collections", {"name": "large"}, alice)
    texts = docstring_sentences(300)
    for start in range(0, 300, 100):
        documents = [{"id": f"d{i}", "text": texts[i], "metadata": {"group": i % 20}} for i in range(start, start + 100)]
        assert post(api, "/v1/collections/large/documents", {"documents": documents}, alice).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE embeddings_document")
    return texts


def test_a_filtered_search_on_the_hnsw_index_still_returns_k_rows(api, alice, large):
    query = "Return the path of the current working directory."
    # Keep the planner on the HNSW index, as it is on a large collection (here a scan would be cheaper).
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off; SET enable_sort = off")
    body = search(api, alice, {"query": query, "k": 5, "ef_search": 10, "filter": {"group": 7}}, collection="large")
    assert len(body["results"]) == 5
    assert all(hit["metadata"]["group"] == 7 for hit in body["results"])
    distances = [hit["distance"] for hit in body["results"]]
    assert distances == sorted(distances)

    vector = Document.objects.get(external_id=body["results"][0]["id"]).embedding
    plan_sql = ("SELECT id FROM embeddings_document WHERE dim = 384 AND metadata @> '{\"group\": 7}' "
                "ORDER BY (embedding::vector(384)) <=> %s::vector(384) LIMIT 5")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = 10")
        cursor.execute("EXPLAIN " + plan_sql, [str(list(vector))])
        assert "document_hnsw_384_cosine" in "\n".join(row[0] for row in cursor.fetchall())
        # Without the iterative scan, the 10 candidates HNSW finds hold about one row of the group.
        cursor.execute("SET LOCAL hnsw.iterative_scan = off")
        cursor.execute(plan_sql, [str(list(vector))])
        assert len(cursor.fetchall()) < 5


def test_exact_search_agrees_with_the_index_on_a_small_collection(api, alice, large):
    query = {"query": "Raise an exception when the process exits with a non-zero status.", "k": 10}
    approximate = [hit["id"] for hit in search(api, alice, query, collection="large")["results"]]
    exact = search(api, alice, {**query, "exact": True}, collection="large")
    assert exact["mode"] == "exact"
    assert len(set(approximate) & {hit["id"] for hit in exact["results"]}) >= 9


def test_hybrid_search_fuses_keyword_and_vector_ranks(api, alice, collection):
    post(api, "/v1/collections/notes/documents",
         {"documents": [{"id": "pump", "text": "Error code E1234 means the pump is blocked.", "metadata": {"topic": "manual"}}]}, alice)
    body = search(api, alice, {"query": "E1234", "k": 3, "hybrid": True, "candidates": 13})
    assert body["mode"] == "hybrid"
    first = body["results"][0]
    assert first["id"] == "pump" and first["keyword_rank"] == 1
    for hit in body["results"]:
        expected = sum(1 / (60 + rank) for rank in (hit["vector_rank"], hit["keyword_rank"]) if rank is not None)
        assert abs(hit["score"] - expected) < 1e-6
    plain = search(api, alice, {"query": "E1234", "k": 13})
    assert [h["id"] for h in plain["results"]].index("pump") + 1 == first["vector_rank"]


def test_reranked_search_orders_the_candidates_by_the_cross_encoder(api, alice, collection, reranker, cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    query = "Which team won the match?"
    body = search(api, alice, {"query": query, "k": 4, "rerank": True, "candidates": 12}, HTTP_X_REQUEST_ID="rerank-0001")
    texts = {d.external_id: d.text for d in Document.objects.all()}
    scores = CrossEncoder(str(cross_encoder_dir)).predict([(query, text) for text in texts.values()])
    expected = [doc_id for _, doc_id in sorted(zip(scores, texts), key=lambda pair: -pair[0])][:4]
    assert [hit["id"] for hit in body["results"]] == expected
    assert all(abs(hit["rerank_score"] - float(scores[list(texts).index(hit["id"])])) < 1e-4 for hit in body["results"])
    assert body["inferences"]["rerank"]["model"] == "minilm-cross-encoder"
    assert [r.task for r in InferenceRecord.objects.filter(request_id="rerank-0001").order_by("created_at")] == ["embeddings", "rerank"]
    assert SearchRecord.objects.get(request_id="rerank-0001").reranked


def test_searching_by_vector_costs_a_pinned_number_of_queries(api, alice, collection, django_assert_num_queries):
    vector = list(Document.objects.get(external_id="cats-0").embedding)
    # key+tenant, the collection, the HNSW settings with the collection's check and the search in one
    # round trip, the search record
    with django_assert_num_queries(4):
        search(api, alice, {"vector": vector, "k": 5})


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "Give a query text or a vector"),
        ({"query": "   "}, "query: Must not be blank"),
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 101}, "k"),
        ({"query": "x", "ef_search": 1001}, "ef_search"),
        ({"vector": [0.1] * 10}, "vector: 10 numbers; this collection stores 384-dimensional vectors."),
        ({"vector": [0.1] * 384, "hybrid": True}, "hybrid: Needs the query text"),
        ({"vector": [0.1] * 384, "rerank": True}, "rerank: Needs the query text"),
        ({"query": "x", "filter": {"index": {"$gte": "soon"}}}, "filter: index.$gte: 'soon' is not an ISO 8601 date"),
        ({"query": "x", "filter": {"index": {"$gte": "2024-01-01"}}}, "schema says this field is integer"),
        ({"query": "x", "filter": {"topic": {"$in": []}}}, "topic.$in"),
        ({"query": "x", "filter": {"$or": []}}, "operators go inside a field"),
        ({"query": "x", "filter": ["topic"]}, "filter"),
        ({"query": "x", "filter": {"a": {"$gt": 1, "$lt": "2024-01-01"}}}, "not both"),
    ],
)
def test_bad_searches_are_refused(api, alice, collection, body, message):
    response = post(api, "/v1/collections/notes/search", body, alice)
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]["message"]
    assert not SearchRecord.objects.exists()


def test_rerank_without_a_rerank_model_says_so(api, alice, collection):
    response = post(api, "/v1/collections/notes/search", {"query": "cats", "rerank": True}, alice)
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_model_available"


def test_a_collection_of_own_vectors_is_searched_by_vector_with_its_distance(api, alice, minilm):
    post(api, "/v1/collections", {"name": "points", "model": None, "dimension": 2, "distance": "l2"}, alice)
    points = {"origin": [0, 0], "near": [1, 1], "far": [10, 10]}
    post(api, "/v1/collections/points/documents", {"documents": [{"id": k, "vector": v} for k, v in points.items()]}, alice)
    body = search(api, alice, {"vector": [0.9, 0.8], "k": 3}, collection="points")
    assert [hit["id"] for hit in body["results"]] == ["near", "origin", "far"]
    assert np.isclose(body["results"][0]["distance"], np.hypot(0.1, 0.2), atol=1e-5)
    assert body["results"][0]["score"] == -body["results"][0]["distance"]
    text = post(api, "/v1/collections/points/search", {"query": "near"}, alice)
    assert text.status_code == 400 and "no embedding model" in text.json()["error"]["message"]


def test_a_recently_found_collection_costs_no_lookup_and_a_deleted_one_is_still_gone(
    api, alice, bob, collection, settings, django_assert_num_queries
):
    settings.MODELGATE_COLLECTION_CACHE_SECONDS = 2
    vector = list(Document.objects.get(external_id="cats-0").embedding)
    first = search(api, alice, {"vector": vector, "k": 5})
    # key+tenant, the settings with the collection's check and the search, the record
    with django_assert_num_queries(3):
        again = search(api, alice, {"vector": vector, "k": 5})
    assert [hit["id"] for hit in again["results"]] == [hit["id"] for hit in first["results"]]
    # Bob's collection of the same name is his own, cached or not.
    assert post(api, "/v1/collections/notes/search", {"vector": vector, "k": 5}, bob).status_code == 404
    assert post(api, "/v1/collections", {"name": "notes", "model": None, "dimension": 384}, bob).status_code == 201
    assert search(api, bob, {"vector": vector, "k": 5})["results"] == []
    # Deleted by another server process (no signal reaches this one): the search's own check sees it.
    records = SearchRecord.objects.count()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM embeddings_document WHERE collection_id = %s", [collection["id"]])
        cursor.execute("UPDATE embeddings_searchrecord SET collection_id = NULL WHERE collection_id = %s", [collection["id"]])
        cursor.execute("DELETE FROM embeddings_collection WHERE id = %s", [collection["id"]])
    gone = post(api, "/v1/collections/notes/search", {"vector": vector, "k": 5}, alice)
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "No collection 'notes'."
    assert SearchRecord.objects.count() == records
