"""POST /v1/detect-language: results, the record it leaves, limits, scopes and isolation."""
from __future__ import annotations

import pytest

from routing.models import InferenceRecord
from tests.routing.conftest import post, records


def test_it_detects_languages_and_records_the_inference(api, alice, starter):
    texts = ["Bonjour tout le monde, comment allez-vous ?", "Good morning to all of you"]
    response = post(api, "/v1/detect-language", {"texts": texts, "top_k": 2}, alice, HTTP_X_REQUEST_ID="detect-request-1")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["language"] for r in body["results"]] == ["fr", "en"]
    assert len(body["results"][0]["candidates"]) == 2
    assert body["model"] == "lid-176" and body["tier"] == "local" and body["request_id"] == "detect-request-1"
    [record] = records("detect-request-1")
    assert record.status == InferenceRecord.Status.OK
    assert (record.tenant, record.api_key, record.task, record.model_slug) == (alice.tenant, alice.key, "language_id", "lid-176")
    assert record.items == 2 and record.unit == "characters" and record.units_in == sum(map(len, texts))
    assert record.input_preview.startswith("Bonjour") and record.input_text == ""
    assert len(record.input_digest) == 64
    assert record.output_preview.startswith("fr ")
    assert record.confidence is not None and 0 < record.confidence <= 1
    assert record.compute_ms > 0 and record.queue_ms is not None and record.latency_ms > 0
    assert record.cost > 0 and record.reserved_cost >= record.cost
    assert "default order" in record.routing_reason
    assert str(record.id) == body["inference_id"]


def test_a_tenant_that_opted_in_keeps_the_full_text(api, alice, starter):
    alice.tenant.store_full_text = True
    alice.tenant.save()
    post(api, "/v1/detect-language", {"text": "Hallo Welt, wie geht es dir heute?"}, alice, HTTP_X_REQUEST_ID="full-text-1")
    assert records("full-text-1")[0].input_text == "Hallo Welt, wie geht es dir heute?"


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({}, 400, "Give either text or texts"),
        ({"text": "a", "texts": ["b"]}, 400, "Give either text or texts"),
        ({"text": 12}, 400, "text: Must be a string"),
        ({"text": "   "}, 400, "text: Must not be blank"),
        ({"texts": []}, 400, "texts"),
        ({"texts": ["ok", ""]}, 400, "texts.1"),
        ({"texts": ["x"] * 129}, 400, "the limit is 128"),
        ({"texts": ["x" * 90_000, "y" * 90_000, "z" * 90_000]}, 413, "the limit is 200000"),
        ({"text": "hello", "top_k": 0}, 400, "top_k"),
        ({"text": "hello", "model": "no-such-model"}, 400, "no-such-model"),
        ({"text": "hello", "model": "minilm-l6"}, 400, "No enabled language_id model named 'minilm-l6'"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_nothing_is_recorded(api, alice, starter, body, status, message):
    response = post(api, "/v1/detect-language", body, alice)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert message in error["message"] or message in str(error.get("details"))
    assert not InferenceRecord.objects.exists()


def test_a_key_without_the_scope_is_refused(api, alice_limited, starter):
    response = post(api, "/v1/detect-language", {"text": "hello"}, alice_limited)
    assert response.status_code == 403 and response.json()["error"]["code"] == "missing_scope"


def test_the_hot_path_costs_a_pinned_number_of_queries(api, alice, starter, django_assert_num_queries):
    post(api, "/v1/detect-language", {"text": "warm the model and last_used_at"}, alice)
    # key+tenant, record insert, record update (policy and candidates come from the per-process cache)
    with django_assert_num_queries(3):
        response = post(api, "/v1/detect-language", {"text": "Das ist ein deutscher Satz."}, alice)
    assert response.status_code == 200
