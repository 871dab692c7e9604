"""The operator screens: collections with counts and index status, the search box, indexes, jobs."""
from __future__ import annotations

from django_q.models import OrmQ

from embeddings.models import IngestionJob, SearchRecord
from routing.models import InferenceRecord
from tests.embeddings.conftest import post, topic_documents


def test_the_collection_list_shows_counts_and_index_status(admin_client, collection, bob, api):
    post(api, "/v1/collections", {"name": "bobs", "model": None, "dimension": 7}, bob)
    page = admin_client.get("/admin/embeddings/collection/").content.decode()
    assert "notes" in page and "bobs" in page
    assert ">12<" in page and ">ready<" in page and ">missing<" in page


def test_the_search_box_runs_a_real_search_recorded_under_the_operator(admin_client, collection):
    embeddings_before = InferenceRecord.objects.count()
    url = f"/admin/embeddings/collection/{collection['id']}/search/"
    page = admin_client.get(url, {"query": "the striker scored a goal", "k": 3, "filter": '{"topic": "football"}'})
    assert page.status_code == 200
    html = page.content.decode()
    assert "3 results" in html and "The striker scored twice" in html
    assert "Query plan" in html and "embeddings_document" in html
    record = SearchRecord.objects.get()
    assert (record.operator, record.rows, record.filtered, record.api_key) == ("admin", 3, True, None)
    assert InferenceRecord.objects.count() == embeddings_before  # support work is not the tenant's usage


def test_the_search_box_reports_a_bad_filter(admin_client, collection):
    page = admin_client.get(f"/admin/embeddings/collection/{collection['id']}/search/", {"query": "x", "k": 3, "filter": "{nope"})
    assert "Not valid JSON" in page.content.decode() and not SearchRecord.objects.exists()


def test_the_indexes_page_lists_indexes_and_queues_a_build(admin_client, api, alice, minilm):
    post(api, "/v1/collections", {"name": "pts", "model": None, "dimension": 3, "distance": "l2"}, alice)
    page = admin_client.get("/admin/embeddings/collection/indexes/").content.decode()
    assert "document_hnsw_3_l2" in page and "missing" in page and "document_hnsw_384_cosine" in page
    queued = OrmQ.objects.count()
    response = admin_client.post("/admin/embeddings/collection/indexes/", {"dimension": 3, "distance": "l2"})
    assert response.status_code == 302 and OrmQ.objects.count() == queued + 1


def test_documents_are_found_by_id_or_by_words(admin_client, collection):
    by_words = admin_client.get("/admin/embeddings/document/", {"q": "referee card"}).content.decode()
    assert "football-1" in by_words and "cats-0" not in by_words
    assert "finance-2" in admin_client.get("/admin/embeddings/document/", {"q": "finance-2"}).content.decode()


def test_jobs_are_listed_and_resumed_from_the_admin(admin_client, api, alice, collection):
    job = post(api, "/v1/collections/notes/jobs", {"documents": topic_documents()}, alice).json()
    IngestionJob.objects.filter(pk=job["id"]).update(status="failed", error_code="budget_exceeded")
    listing = admin_client.get("/admin/embeddings/ingestionjob/").content.decode()
    assert "Failed" in listing and "notes" in listing
    admin_client.post("/admin/embeddings/ingestionjob/", {"action": "resume_jobs", "_selected_action": [job["id"]]})
    assert IngestionJob.objects.get(pk=job["id"]).status == "queued"
