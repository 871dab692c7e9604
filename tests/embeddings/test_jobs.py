"""Ingestion jobs: JSONL, CSV and JSON bodies upserted a chunk at a time, with progress and errors per
line; a job that fails half-way resumes after its last chunk without duplicates."""
from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Count
from django.utils import timezone

from billing.models import Budget
from embeddings import ingestion, tasks
from embeddings.models import Collection, Document, IngestionJob
from routing.models import InferenceRecord
from tests.embeddings.conftest import post, topic_documents


def jsonl(documents: list[dict]) -> bytes:
    return "\n".join(json.dumps(d) for d in documents).encode()


def upload(api, caller, data: bytes, name: str = "docs.jsonl", collection: str = "notes", **extra):
    return api.post(f"/v1/collections/{collection}/jobs", {"file": SimpleUploadedFile(name, data)},
                    format="multipart", **caller.auth, **extra)


def job_state(api, caller, job_id: str) -> dict:
    response = api.get(f"/v1/jobs/{job_id}", **caller.auth)
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def empty(api, alice, minilm) -> dict:
    response = post(api, "/v1/collections", {"name": "notes", "metadata_schema": {"year": "integer", "draft": "boolean"}}, alice)
    return response.json()


def test_a_jsonl_upload_is_ingested_with_errors_reported_per_line(api, alice, empty, settings, django_capture_on_commit_callbacks):
    settings.MODELGATE_INGEST_CHUNK_DOCUMENTS = 5
    lines = [json.dumps(d) for d in topic_documents()]
    lines.insert(3, "{not json")
    lines.insert(7, "")
    lines.insert(9, json.dumps({"id": "no-text"}))
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(api, alice, "\n".join(lines).encode(), HTTP_X_REQUEST_ID="ingest-0001")
    assert response.status_code == 202, response.content
    job = response.json()
    assert (job["status"], job["total"], job["done"], job["format"]) == ("queued", 14, 0, "jsonl")
    assert len(callbacks) == 1  # the task is queued once the job row is committed

    assert tasks.run_ingestion(job["id"]) == "done"
    state = job_state(api, alice, job["id"])
    assert (state["status"], state["done"], state["progress"], state["inserted"], state["embedded"]) == ("done", 14, 1.0, 12, 12)
    assert state["error_count"] == 2
    assert [(e["line"], e["message"][:16]) for e in state["errors"]] == [(4, "Not valid JSON: "), (10, "text: Give a tex")]
    assert Document.objects.count() == 12 and Collection.objects.get().document_count == 12
    # one routed embedding call per chunk, all under the request id of the upload
    assert InferenceRecord.objects.filter(request_id="ingest-0001", task="embeddings", status="ok").count() == 3


def test_a_csv_upload_types_its_columns_by_the_metadata_schema(api, alice, empty):
    data = ("id,text,year,draft,lang\n"
            "a,\"The cat sat on the mat, twice.\",2021,true,en\n"
            "b,Investors bought bonds.,2023,no,en\n"
            "c,Bake the bread.,soon,false,en\n").encode()
    job = upload(api, alice, data, name="docs.csv").json()
    assert job["format"] == "csv" and job["total"] == 3
    tasks.run_ingestion(job["id"])
    state = job_state(api, alice, job["id"])
    assert (state["inserted"], state["error_count"]) == (2, 1)
    assert state["errors"][0]["line"] == 4 and "metadata.year: The collection's schema says integer" in state["errors"][0]["message"]
    assert Document.objects.get(external_id="a").metadata == {"year": 2021, "draft": True, "lang": "en"}
    found = post(api, "/v1/collections/notes/search", {"query": "cats", "filter": {"year": {"$gte": 2022}}}, alice).json()
    assert [hit["id"] for hit in found["results"]] == ["b"]


def test_a_large_json_body_becomes_a_job(api, alice, empty):
    response = post(api, "/v1/collections/notes/jobs", {"documents": topic_documents()}, alice)
    assert response.status_code == 202 and response.json()["source_name"] == "request body"
    tasks.run_ingestion(response.json()["id"])
    assert Document.objects.count() == 12


def test_the_same_file_ingested_twice_embeds_nothing_the_second_time(api, alice, empty):
    data = jsonl(topic_documents())
    tasks.run_ingestion(upload(api, alice, data).json()["id"])
    embedded = InferenceRecord.objects.filter(task="embeddings").count()
    second = upload(api, alice, data).json()
    tasks.run_ingestion(second["id"])
    state = job_state(api, alice, second["id"])
    assert (state["inserted"], state["unchanged"], state["embedded"]) == (0, 12, 0)
    assert InferenceRecord.objects.filter(task="embeddings").count() == embedded


def test_a_job_that_fails_half_way_resumes_after_its_last_chunk_without_duplicates(api, alice, empty, settings):
    settings.MODELGATE_INGEST_CHUNK_DOCUMENTS = 4
    budget = Budget.objects.create(tenant=alice.tenant, limit=Decimal("1"))
    job = upload(api, alice, jsonl(topic_documents()), HTTP_X_REQUEST_ID="ingest-half").json()

    # Two chunks, each in a task of its own (as when a slice of the task timeout runs out).
    assert ingestion.run_job(job["id"], seconds=0) == "continues in a new task"
    assert ingestion.run_job(job["id"], seconds=0) == "continues in a new task"
    assert job_state(api, alice, job["id"])["done"] == 8

    # The tenant's budget runs out: the third chunk cannot be embedded and the job stops there.
    Budget.objects.filter(pk=budget.pk).update(spent=budget.limit)
    assert tasks.run_ingestion(job["id"]) == "failed: budget_exceeded"
    failed = job_state(api, alice, job["id"])
    assert (failed["status"], failed["done"], failed["inserted"], failed["error_code"]) == ("failed", 8, 8, "budget_exceeded")
    assert Document.objects.count() == 8

    Budget.objects.filter(pk=budget.pk).update(limit=Decimal("10"))
    resumed = post(api, f"/v1/jobs/{job['id']}/resume", {}, alice)
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert tasks.run_ingestion(job["id"]) == "done"
    done = job_state(api, alice, job["id"])
    assert (done["status"], done["done"], done["inserted"], done["unchanged"], done["embedded"]) == ("done", 12, 12, 0, 12)
    assert Document.objects.count() == 12 == Collection.objects.get().document_count
    assert not Document.objects.values("external_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    outcomes = list(InferenceRecord.objects.filter(request_id="ingest-half").values_list("status", flat=True))
    assert sorted(outcomes) == ["ok", "ok", "ok", "rejected"]  # no chunk embedded twice


def test_a_chunk_whose_progress_another_worker_moved_writes_nothing(api, alice, empty, settings):
    settings.MODELGATE_INGEST_CHUNK_DOCUMENTS = 4
    job_id = upload(api, alice, jsonl(topic_documents())).json()["id"]
    job = ingestion.claim(job_id)
    IngestionJob.objects.filter(pk=job_id).update(done=4)  # another worker committed the first chunk meanwhile
    with pytest.raises(ingestion.JobInterrupted):
        ingestion.process_chunk(job)
    assert not Document.objects.exists()  # the chunk's documents were rolled back with it


def test_a_job_is_claimed_by_one_worker_at_a_time_and_a_finished_job_by_none(api, alice, empty):
    job_id = upload(api, alice, jsonl(topic_documents())).json()["id"]
    assert ingestion.claim(job_id) is not None
    assert ingestion.claim(job_id) is None
    assert tasks.run_ingestion(job_id) == "not claimed"
    IngestionJob.objects.filter(pk=job_id).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert tasks.run_ingestion(job_id) == "done"
    assert tasks.run_ingestion(job_id) == "not claimed"
    assert IngestionJob.objects.get(pk=job_id).attempts == 2


def test_a_job_whose_worker_died_is_found_and_resumed(api, alice, empty, settings):
    settings.MODELGATE_INGEST_CHUNK_DOCUMENTS = 4
    job_id = upload(api, alice, jsonl(topic_documents())).json()["id"]
    ingestion.run_job(job_id, seconds=0)
    long_ago = timezone.now() - timedelta(hours=1)
    IngestionJob.objects.filter(pk=job_id).update(status="running", lease_until=long_ago, updated_at=long_ago)
    assert ingestion.stalled_jobs() == [job_id]
    assert tasks.resume_stalled_jobs() == 1
    assert tasks.run_ingestion(job_id) == "done"
    assert Document.objects.count() == 12 and IngestionJob.objects.get(pk=job_id).inserted == 12


def test_a_cancelled_job_stops_and_can_be_resumed(api, alice, empty):
    job_id = upload(api, alice, jsonl(topic_documents())).json()["id"]
    assert post(api, f"/v1/jobs/{job_id}/cancel", {}, alice).json()["status"] == "cancelled"
    assert tasks.run_ingestion(job_id) == "not claimed" and not Document.objects.exists()
    post(api, f"/v1/jobs/{job_id}/resume", {}, alice)
    assert tasks.run_ingestion(job_id) == "done"
    again = post(api, f"/v1/jobs/{job_id}/resume", {}, alice)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_resumable"


def test_a_job_stops_when_the_key_that_started_it_is_revoked(api, alice, empty):
    job_id = upload(api, alice, jsonl(topic_documents())).json()["id"]
    alice.key.revoked_at = timezone.now()
    alice.key.save()
    assert tasks.run_ingestion(job_id) == "failed: key_unusable"
    assert not Document.objects.exists()


def test_the_collection_lists_its_jobs_without_their_source(api, alice, empty):
    upload(api, alice, jsonl(topic_documents()))
    [job] = api.get("/v1/collections/notes/jobs", **alice.auth).json()
    assert job["total"] == 12 and "source" not in job


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("docs.jsonl", b"\xff\xfe\x00garbage", "not UTF-8"),
        ("docs.jsonl", b"\n\n  \n", "no documents"),
        ("docs.csv", b"", "empty"),
        ("docs.csv", b"name,text\nx,y\n", "id column"),
        ("docs.csv", b"id,text,id\n1,2,3\n", "twice"),
    ],
)
def test_unreadable_uploads_are_refused(api, alice, empty, name, data, message):
    response = upload(api, alice, data, name=name)
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert not IngestionJob.objects.exists()


@pytest.mark.parametrize("body", [{}, {"documents": []}, {"documents": "x"}, {"documents": [1, 2]}])
def test_bad_job_bodies_are_refused(api, alice, empty, body):
    assert post(api, "/v1/collections/notes/jobs", body, alice).status_code == 400
    assert not IngestionJob.objects.exists()


def test_texts_the_model_refuses_become_errors_of_their_lines(api, alice, minilm):
    from registry.models import ModelSpec

    ModelSpec.objects.create(slug="minilm-short", display_name="MiniLM, short texts only", task="embeddings",
                             backend="sentence-transformers", source_kind="package", source=minilm.source,
                             options={"max_characters": 60})
    post(api, "/v1/collections", {"name": "short", "model": "minilm-short"}, alice)
    documents = [{"id": "a", "text": "A short note."}, {"id": "b", "text": "x" * 80}, {"id": "c", "text": "Another one."}]
    job_id = upload(api, alice, jsonl(documents), collection="short").json()["id"]
    assert tasks.run_ingestion(job_id) == "done"
    state = job_state(api, alice, job_id)
    assert (state["inserted"], state["error_count"]) == (2, 1)
    assert state["errors"][0]["line"] == 2 and "The model refused the text" in state["errors"][0]["message"]
    assert sorted(Document.objects.values_list("external_id", flat=True)) == ["a", "c"]


def test_json_lines_split_at_newlines_only(api, alice, empty):
    documents = [{"id": "sep", "text": "A line\u2028separator and a\u2029paragraph one stay inside the text."},
                 {"id": "crlf", "text": "Windows line ends."}]
    data = (json.dumps(documents[0], ensure_ascii=False) + "\r\n" + json.dumps(documents[1]) + "\r\n").encode()
    job = upload(api, alice, data).json()
    assert job["total"] == 2
    tasks.run_ingestion(job["id"])
    assert Document.objects.get(external_id="sep").text == documents[0]["text"]
    assert job_state(api, alice, job["id"])["inserted"] == 2


def test_records_that_cannot_be_stored_are_skipped_and_listed_with_their_ids_escaped(api, alice, empty):
    nested: dict = {}
    for _ in range(40):
        nested = {"in": nested}
    lines = [
        '{"id": "j\\u0000", "text": "A NUL in the id."}',
        '{"id": "s1", "text": "A lone surrogate \\ud800 in the text."}',
        '{"id": "k1", "text": "A NUL in a metadata key.", "metadata": {"a\\u0000b": 1}}',
        json.dumps({"id": "deep", "text": "Metadata nested forty levels.", "metadata": nested}),
        "[" * 5000 + "]" * 5000,
        json.dumps({"id": "good", "text": "The cat curled up on the warm windowsill."}),
    ]
    job = upload(api, alice, "\n".join(lines).encode()).json()
    assert tasks.run_ingestion(job["id"]) == "done"
    state = job_state(api, alice, job["id"])
    assert (state["status"], state["inserted"], state["error_count"], state["error_code"]) == ("done", 1, 5, "")
    assert [(e["line"], e.get("id"), e["message"]) for e in state["errors"]] == [
        (1, "j\\u0000", "id: Holds a NUL character (U+0000), which cannot be stored."),
        (2, "s1", "text: Holds a lone surrogate (U+D800), which is not valid Unicode text."),
        (3, "k1", "metadata: A key holds a NUL character (U+0000), which cannot be stored."),
        (4, "deep", "metadata.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in.in: "
                    "Nested deeper than 32 levels."),
        (5, None, "Nested deeper than 32 levels."),
    ]
    assert list(Document.objects.values_list("external_id", flat=True)) == ["good"]


def test_a_csv_cell_with_a_nul_skips_its_row(api, alice, empty):
    data = "id,text,year\nj\x00,A NUL in the id.,2020\nok,The striker scored twice.,2021\nm,A NUL in a column.,20\x0021\n"
    job = upload(api, alice, data.encode(), name="docs.csv").json()
    assert tasks.run_ingestion(job["id"]) == "done"
    state = job_state(api, alice, job["id"])
    assert [(e["line"], e["id"], e["message"]) for e in state["errors"]] == [
        (2, "j\\u0000", "id: Holds a NUL character (U+0000), which cannot be stored."),
        (4, "m", "metadata.year: Holds a NUL character (U+0000), which cannot be stored."),
    ]
    assert list(Document.objects.values_list("external_id", flat=True)) == ["ok"]


def test_a_json_body_that_cannot_be_stored_is_refused_before_a_job_exists(api, alice, empty):
    response = api.post("/v1/collections/notes/jobs", '{"documents": [{"id": "j\\u0000", "text": "t"}]}',
                        content_type="application/json", **alice.auth)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "documents.0.id: Holds a NUL character (U+0000), which cannot be stored."
    assert not IngestionJob.objects.exists()


def test_an_internal_error_shows_the_tenant_a_generic_message_and_the_details_only_in_the_logs(
    api, alice, empty, monkeypatch, caplog
):
    from django.db import DataError

    def broken(**kwargs):
        # What PostgreSQL answers for a value it cannot hold: the statement and its parameters included.
        raise DataError('invalid byte sequence for encoding "UTF8": 0x00\nCONTEXT: INSERT INTO "embeddings_document" ...')

    job = upload(api, alice, jsonl(topic_documents()[:2]), HTTP_X_REQUEST_ID="ingest-broken").json()
    monkeypatch.setattr(ingestion, "upsert_documents", broken)
    with pytest.raises(DataError):  # re-raised: the task queue records the failure too
        tasks.run_ingestion(job["id"])
    state = job_state(api, alice, job["id"])
    assert (state["status"], state["error_code"]) == ("failed", "internal_error")
    assert "INSERT" not in state["error_message"] and "UTF8" not in state["error_message"]
    assert job["id"] in state["error_message"] and "ingest-broken" in state["error_message"]
    logged = [r for r in caplog.records if r.name == "modelgate.embeddings" and r.exc_info]
    assert logged and "INSERT INTO" in str(logged[0].exc_info[1])


def test_a_json_body_s_records_of_the_wrong_shape_are_listed_by_the_job(api, alice, empty):
    documents = [{"id": {"not": "a string"}, "text": "An object for an id."}, {"id": "long", "text": "x" * 40_000},
                 {"id": "meta", "text": "Metadata that is a list.", "metadata": ["a"]}, {"id": True, "text": "A boolean id."},
                 {"id": "fine", "text": "Whisk the eggs with sugar."}]
    response = post(api, "/v1/collections/notes/jobs", {"documents": documents}, alice)
    assert response.status_code == 202, response.content
    assert tasks.run_ingestion(response.json()["id"]) == "done"
    state = job_state(api, alice, response.json()["id"])
    assert [(e["line"], e["message"]) for e in state["errors"]] == [
        (1, "id: Not a valid string."), (2, "text: 40000 characters; the limit is 32768."), (3, "metadata: An object."),
        (4, "id: Not a valid string."),
    ]
    assert list(Document.objects.values_list("external_id", flat=True)) == ["fine"]


def test_an_upload_whose_file_name_holds_a_nul_keeps_the_name_without_it(api, alice, empty):
    # Django drops non-printable characters from uploaded file names: the name is storable as it comes.
    response = upload(api, alice, jsonl(topic_documents()[:1]), name="docs\x00.jsonl")
    assert response.status_code == 202, response.content
    assert IngestionJob.objects.get().source_name == response.json()["source_name"] == "docs.jsonl"
