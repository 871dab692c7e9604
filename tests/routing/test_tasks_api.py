"""The text task endpoints end to end with real models: translate, classify, rerank, embeddings."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from registry.models import ModelSpec
from routing.models import InferenceRecord, RoutingPolicy
from tests.routing.conftest import post, records


def test_translate_detects_the_source_when_absent_and_records_both_inferences(api, alice, translator):
    response = post(api, "/v1/translate", {"text": "Hello world, how are you today?", "target": "fr"}, alice,
                    HTTP_X_REQUEST_ID="translate-0001")
    assert response.status_code == 200, response.content
    [result] = response.json()["results"]
    assert (result["source"], result["target"], result["source_detected"]) == ("en", "fr", True)
    assert 0 <= result["confidence"] <= 1
    detection, translation = records("translate-0001")
    assert (detection.task, detection.model_slug) == ("language_id", "lid-176")
    assert (translation.task, translation.model_slug, translation.unit) == ("translation", "tiny-nllb", "characters")


def test_translate_takes_an_explicit_source_and_a_batch(api, alice, translator):
    response = post(api, "/v1/translate", {"texts": ["Hello", "Good morning"], "source": "en", "target": "de"}, alice,
                    HTTP_X_REQUEST_ID="translate-0002")
    assert [r["target"] for r in response.json()["results"]] == ["de", "de"]
    assert [r.task for r in records("translate-0002")] == ["translation"]


@pytest.mark.parametrize(
    "body, message",
    [({"text": "Hello"}, "target"), ({"text": "Hello", "target": "xx_Fake"}, "Unknown language code"),
     ({"text": "Hello", "target": "fr", "source": "klingon"}, "Unknown language code")],
)
def test_translate_bad_input(api, alice, translator, body, message):
    response = post(api, "/v1/translate", body, alice)
    assert response.status_code == 400 and message in str(response.json()["error"])
    assert not InferenceRecord.objects.exists()


def test_translate_into_a_language_the_model_lacks_is_rejected_and_recorded(api, alice, translator):
    response = post(api, "/v1/translate", {"text": "Hello", "source": "en", "target": "ja"}, alice, HTTP_X_REQUEST_ID="translate-0003")
    assert response.status_code == 400 and "Japanese" in response.json()["error"]["message"]
    assert [r.status for r in records("translate-0003")] == ["rejected"]


def test_without_a_translation_model_the_answer_says_so(api, alice, starter):
    response = post(api, "/v1/translate", {"text": "Hello", "source": "en", "target": "fr"}, alice)
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_model_available"


def test_classify_with_labels_goes_to_a_zero_shot_model(api, alice, starter):
    response = post(api, "/v1/classify", {"texts": ["Shares fell after the earnings report", "Whisk the eggs and bake"],
                                          "labels": ["sports", "finance", "cooking"]}, alice)
    assert response.status_code == 200
    body = response.json()
    assert [r["predicted"] for r in body["results"]] == [["finance"], ["cooking"]]
    assert body["model"] == "zero-shot-minilm"


def test_classify_without_labels_needs_a_model_with_fixed_labels(api, alice, starter):
    # The starter pack classifies zero-shot only: without labels the request is the client's to fix.
    response = post(api, "/v1/classify", {"texts": ["hello"]}, alice)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith("labels: No classifier with fixed labels")


@pytest.fixture
def reranker(starter, tmp_path, settings) -> ModelSpec:
    from sentence_transformers import CrossEncoder

    settings.MODELGATE_MODEL_ROOTS = [str(tmp_path)]
    CrossEncoder(str(starter["minilm-l6"].weights_path()), num_labels=1).save_pretrained(str(tmp_path / "ce"))
    return ModelSpec.objects.create(slug="tiny-reranker", display_name="r", task="rerank", backend="cross-encoder",
                                    source_kind="path", source=str(tmp_path / "ce"))


def test_rerank_orders_documents_and_honours_top_n(api, alice, reranker):
    documents = ["cats purr", "stock prices", "kittens play", "tax forms"]
    response = post(api, "/v1/rerank", {"query": "cats", "documents": documents, "top_n": 2}, alice)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2 and results[0]["score"] >= results[1]["score"]
    assert all(documents[r["index"]] == r["document"] for r in results)


def test_rerank_bad_input(api, alice, reranker):
    assert post(api, "/v1/rerank", {"query": "q", "documents": []}, alice).status_code == 400
    assert post(api, "/v1/rerank", {"documents": ["a"]}, alice).status_code == 400


def test_embeddings_answer_in_openai_format_with_usage_and_headers(api, alice, starter):
    response = post(api, "/v1/embeddings", {"input": ["a cat", "a dog"], "model": "minilm-l6"}, alice, HTTP_X_REQUEST_ID="embed-000001")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "minilm-l6"
    assert [d["index"] for d in body["data"]] == [0, 1] and len(body["data"][0]["embedding"]) == 384
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert response["x-modelgate-model"] == "minilm-l6" and response["x-modelgate-tier"] == "local"
    assert response["x-modelgate-request-id"] == "embed-000001"
    [record] = records("embed-000001")
    assert record.unit == "tokens" and record.units_in == body["usage"]["prompt_tokens"]


def test_embeddings_in_base64(api, alice, starter):
    body = post(api, "/v1/embeddings", {"input": "a cat", "encoding_format": "base64"}, alice).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4


@pytest.mark.parametrize("body", [{"input": [1, 2, 3]}, {"input": []}, {"input": ""}, {"model": "minilm-l6"}, {"input": {"a": 1}}])
def test_embeddings_bad_input(api, alice, starter, body):
    response = post(api, "/v1/embeddings", body, alice)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_a_local_only_key_never_reaches_a_premium_model(api, alice, starter):
    ModelSpec.objects.create(slug="premium-embed", display_name="p", task="embeddings", backend="openai",
                             source_kind="provider", source="text-embedding-3-small", tier="premium")
    RoutingPolicy.objects.create(tenant=alice.tenant, task="embeddings", candidates=["premium-embed", "minilm-l6"])
    alice.key.local_only = True
    alice.key.save()
    assert post(api, "/v1/embeddings", {"input": "x"}, alice).json()["model"] == "minilm-l6"
    response = post(api, "/v1/embeddings", {"input": "x", "model": "premium-embed"}, alice)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "body, message",
    [
        ({"texts": ["x"], "labels": ["only-one"]}, "labels"),
        ({"texts": ["x"], "labels": "sports"}, "labels"),
        ({"texts": ["x"], "labels": ["a", "b"], "model": "minilm-l6"}, "No enabled classification model"),
        ({"labels": ["a", "b"]}, "Give either text or texts"),
    ],
)
def test_classify_bad_input(api, alice, starter, body, message):
    response = post(api, "/v1/classify", body, alice)
    assert response.status_code == 400 and message in str(response.json()["error"])
    assert not InferenceRecord.objects.exists()
