"""The partial HNSW indexes: built by migration for the common dimensions, on demand for the others."""
from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection

from embeddings import indexes, tasks
from embeddings.models import Document
from tests.embeddings.conftest import post


def explain(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_the_migration_builds_cosine_indexes_for_the_common_dimensions(db):
    states = indexes.index_states()
    assert {name: state.status for name, state in states.items()} == {
        f"document_hnsw_{d}_cosine": "ready" for d in (384, 768, 1024, 1536)}


def test_a_new_dimension_gets_its_index_on_demand_and_searches_use_it(api, alice, minilm, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        created = post(api, "/v1/collections", {"name": "pts", "model": None, "dimension": 3, "distance": "l2"}, alice)
    assert created.json()["index"] == "missing" and len(callbacks) == 1
    points = [{"id": str(i), "vector": [i, i % 7, i % 3]} for i in range(50)]
    post(api, "/v1/collections/pts/documents", {"documents": points}, alice)
    assert post(api, "/v1/collections/pts/search", {"vector": [1, 1, 1], "k": 3}, alice).status_code == 200  # exact until built

    assert tasks.build_vector_index(3, "l2") == "ready"
    assert api.get("/v1/collections/pts", **alice.auth).json()["index"] == "ready"
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    plan = explain("SELECT id FROM embeddings_document WHERE dim = 3 ORDER BY (embedding::vector(3)) <-> '[1,1,1]' LIMIT 3")
    assert "document_hnsw_3_l2" in plan
    assert tasks.build_vector_index(3, "l2") == "ready"  # a second build is a no-op


def test_vectors_wider_than_pgvector_indexes_are_stored_and_searched_exactly(api, alice, minilm, settings):
    settings.MODELGATE_COLLECTION_MAX_DIMENSION = 2500
    created = post(api, "/v1/collections", {"name": "wide", "model": None, "dimension": 2500}, alice).json()
    assert created["index"] == "exact only"
    vectors = {"a": [1.0] + [0.0] * 2499, "b": [0.0, 1.0] + [0.0] * 2498}
    post(api, "/v1/collections/wide/documents", {"documents": [{"id": k, "vector": v} for k, v in vectors.items()]}, alice)
    hits = post(api, "/v1/collections/wide/search", {"vector": [0.9, 0.1] + [0.0] * 2498, "k": 2}, alice).json()["results"]
    assert [hit["id"] for hit in hits] == ["a", "b"]


def test_the_operator_command_lists_and_builds_indexes(api, alice, minilm, capsys):
    post(api, "/v1/collections", {"name": "ip", "model": None, "dimension": 5, "distance": "inner_product"}, alice)
    call_command("embeddings", "indexes")
    assert "missing" in capsys.readouterr().out
    call_command("embeddings", "build-missing")
    assert "document_hnsw_5_inner_product: ready" in capsys.readouterr().out
    call_command("embeddings", "collections", "--tenant", "alpha")
    listing = capsys.readouterr().out
    assert "ip" in listing and "index ready" in listing and "(own vectors)" in listing


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_index_is_built_concurrently(tenant_a):
    from embeddings.models import Collection

    collection = Collection.objects.create(tenant=tenant_a, name="c", dimension=6, distance="cosine")
    Document.objects.create(collection=collection, tenant=tenant_a, external_id="a", embedding=[1, 2, 3, 4, 5, 6], dim=6,
                            content_hash="x")
    try:
        assert not connection.in_atomic_block
        assert indexes.build_index(6, "cosine") == "ready"
        assert indexes.state_of(6, "cosine").status == "ready"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX IF EXISTS document_hnsw_6_cosine")
