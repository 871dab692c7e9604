"""Routing decisions: a confident local answer stays, a doubtful one escalates, a failure falls back,
a pinned model is honoured, repeated inputs come from the cache; every attempt is recorded and linked."""
from __future__ import annotations


from registry.models import ModelSpec
from routing.models import InferenceRecord, RoutingPolicy
from tests.routing.conftest import post, records

SPORTS = {"texts": ["The striker scored twice in the final minutes of the match"], "labels": ["sports", "finance", "cooking"]}


def policy(tenant, *candidates, floor=0.5, **fields):
    return RoutingPolicy.objects.create(tenant=tenant, task="classification", candidates=list(candidates),
                                        confidence_floor=floor, **fields)


def test_a_confident_local_answer_stays(api, alice, starter):
    policy(alice.tenant, "zero-shot-minilm", floor=0.5)
    response = post(api, "/v1/classify", SPORTS, alice, HTTP_X_REQUEST_ID="stays-0001")
    assert response.status_code == 200
    [record] = records("stays-0001")
    assert record.status == "ok" and record.confidence > 0.5 and record.escalated_from is None
    assert "tenant policy" in record.routing_reason


def test_a_low_confidence_answer_escalates_to_the_next_candidate(api, alice, hesitant):
    policy(alice.tenant, "zero-shot-hesitant", "zero-shot-minilm", floor=0.5)
    response = post(api, "/v1/classify", SPORTS, alice, HTTP_X_REQUEST_ID="escalates-1")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "zero-shot-minilm" and body["escalated"] is True
    first, second = records("escalates-1")
    assert (first.status, first.model_slug) == ("escalated", "zero-shot-hesitant")
    assert first.confidence < 0.5 and "escalated: confidence" in first.routing_reason
    assert first.cost > 0 and first.completed_at is not None
    assert (second.status, second.model_slug, second.escalated_from_id) == ("ok", "zero-shot-minilm", first.id)
    assert second.routing_reason.startswith("escalated from zero-shot-hesitant")


def test_an_unconfident_last_candidate_answers_anyway(api, alice, hesitant):
    policy(alice.tenant, "zero-shot-hesitant", floor=0.9)
    response = post(api, "/v1/classify", SPORTS, alice, HTTP_X_REQUEST_ID="last-0001")
    assert response.status_code == 200 and response.json()["model"] == "zero-shot-hesitant"
    assert [r.status for r in records("last-0001")] == ["ok"]


def test_a_failing_candidate_falls_back_and_both_attempts_are_linked(api, alice, starter, settings, tmp_path):
    settings.MODELGATE_MODEL_ROOTS = [str(tmp_path)]
    ModelSpec.objects.create(slug="zero-shot-broken", display_name="broken", task="classification",
                             backend="zero-shot-embeddings", source_kind="path", source=str(tmp_path),
                             dependencies={"embeddings": "missing-embedder"})
    policy(alice.tenant, "zero-shot-broken", "zero-shot-minilm")
    response = post(api, "/v1/classify", SPORTS, alice, HTTP_X_REQUEST_ID="fallback-1")
    assert response.status_code == 200 and response.json()["model"] == "zero-shot-minilm"
    failed, answered = records("fallback-1")
    assert (failed.status, failed.error_code) == ("error", "model_unavailable")
    assert "missing-embedder" in failed.error_message
    assert answered.escalated_from_id == failed.id and answered.routing_reason.startswith("fallback after zero-shot-broken")


def test_when_every_candidate_fails_the_caller_gets_502_and_the_records_say_why(api, alice, starter, settings, tmp_path):
    settings.MODELGATE_MODEL_ROOTS = [str(tmp_path)]
    ModelSpec.objects.create(slug="embed-broken", display_name="b", task="embeddings", backend="sentence-transformers",
                             source_kind="path", source=str(tmp_path / "nothing"))
    ModelSpec.objects.filter(slug="minilm-l6").update(enabled=False)
    response = post(api, "/v1/embeddings", {"input": "hello"}, alice, HTTP_X_REQUEST_ID="all-fail-1")
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_failed"
    # The client learns which model failed and how; the runtime's text (a server path here) stays in the record.
    message = response.json()["error"]["message"]
    assert "embed-broken (model_load_failed)" in message and str(tmp_path) not in message, message
    [record] = records("all-fail-1")
    assert record.status == "error" and "weights not found" in record.error_message


def test_a_pinned_model_is_honoured_even_when_unconfident(api, alice, hesitant):
    policy(alice.tenant, "zero-shot-minilm", "zero-shot-hesitant", floor=0.9)
    response = post(api, "/v1/classify", {**SPORTS, "model": "zero-shot-hesitant"}, alice, HTTP_X_REQUEST_ID="pinned-1")
    assert response.json()["model"] == "zero-shot-hesitant"
    [record] = records("pinned-1")
    assert record.routing_reason == "pinned by the request to zero-shot-hesitant"


def test_a_key_limited_to_some_models_cannot_pin_others(api, alice, starter):
    alice.key.allowed_models = ["lid-176"]
    alice.key.save()
    response = post(api, "/v1/classify", {**SPORTS, "model": "zero-shot-minilm"}, alice)
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"
    response = post(api, "/v1/classify", SPORTS, alice)
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_model_available"


def test_the_result_cache_answers_repeats_at_no_cost(api, alice, starter):
    policy(alice.tenant, "zero-shot-minilm", cache_enabled=True)
    first = post(api, "/v1/classify", SPORTS, alice, HTTP_X_REQUEST_ID="cache-0001").json()
    second = post(api, "/v1/classify", SPORTS, alice, HTTP_X_REQUEST_ID="cache-0002").json()
    assert second["results"] == first["results"] and second["cached"] is True and first["cached"] is False
    [hit] = records("cache-0002")
    assert hit.cached and hit.cost == 0 and hit.compute_ms == 0 and hit.routing_reason == "result cache hit"


def test_the_cache_is_per_tenant(api, alice, bob, starter):
    for caller in (alice, bob):
        policy(caller.tenant, "zero-shot-minilm", cache_enabled=True)
    post(api, "/v1/classify", SPORTS, alice)
    assert post(api, "/v1/classify", SPORTS, bob).json()["cached"] is False


def test_a_global_policy_applies_until_a_tenant_has_its_own(api, alice, hesitant):
    RoutingPolicy.objects.create(tenant=None, task="classification", candidates=["zero-shot-hesitant"])
    assert post(api, "/v1/classify", SPORTS, alice).json()["model"] == "zero-shot-hesitant"
    policy(alice.tenant, "zero-shot-minilm")
    assert post(api, "/v1/classify", SPORTS, alice).json()["model"] == "zero-shot-minilm"


def test_input_the_model_refuses_is_a_400_with_a_rejected_record(api, alice, starter):
    from tests.routing.conftest import audio_file

    response = api.post("/v1/audio/transcriptions", {"file": audio_file("search_en.flac"), "language": "fr",
                                                     "model": "whisper-tiny-en"}, format="multipart", **alice.auth,
                        HTTP_X_REQUEST_ID="rejected-1")
    assert response.status_code == 400 and "English" in response.json()["error"]["message"]
    [record] = records("rejected-1")
    assert record.status == InferenceRecord.Status.REJECTED and record.error_code == "invalid_input"
