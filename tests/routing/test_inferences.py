"""GET /v1/inferences/{id}, POST /v1/feedback and GET /v1/models: each tenant sees only its own."""
from __future__ import annotations

import uuid

from routing.models import InferenceRecord
from tests.routing.conftest import post, records


def detect(api, caller, request_id):
    response = post(api, "/v1/detect-language", {"text": "Ceci est une phrase en français."}, caller, HTTP_X_REQUEST_ID=request_id)
    assert response.status_code == 200
    return response.json()


def test_a_tenant_reads_its_own_record(api, alice, starter):
    body = detect(api, alice, "own-record-01")
    response = api.get(f"/v1/inferences/{body['inference_id']}", **alice.auth)
    assert response.status_code == 200
    record = response.json()
    assert record["request_id"] == "own-record-01" and record["model"] == "lid-176" and record["status"] == "ok"
    assert record["task"] == "language_id" and record["output_preview"].startswith("fr")


def test_another_tenants_record_is_as_missing_as_a_record_that_never_existed(api, alice, bob, starter):
    body = detect(api, alice, "foreign-rec-01")
    foreign = api.get(f"/v1/inferences/{body['inference_id']}", **bob.auth)
    missing = api.get(f"/v1/inferences/{uuid.uuid4()}", **bob.auth)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["message"] == missing.json()["error"]["message"]


def test_feedback_joins_the_answered_record(api, alice, starter):
    detect(api, alice, "feedback-0001")
    response = post(api, "/v1/feedback", {"request_id": "feedback-0001", "score": -1, "comment": "wrong language"}, alice)
    assert response.status_code == 200
    [record] = records("feedback-0001")
    assert (record.feedback_score, record.feedback_comment) == (-1, "wrong language") and record.feedback_at


def test_feedback_on_another_tenants_request_is_not_found_and_changes_nothing(api, alice, bob, starter):
    detect(api, alice, "feedback-0002")
    response = post(api, "/v1/feedback", {"request_id": "feedback-0002", "score": 1}, bob)
    assert response.status_code == 404
    assert InferenceRecord.objects.get(request_id="feedback-0002").feedback_score is None


def test_feedback_input_is_checked(api, alice, starter):
    response = post(api, "/v1/feedback", {"request_id": "x" * 8, "score": 5}, alice)
    assert response.status_code == 400 and "score" in response.json()["error"]["message"]


def test_inferences_need_their_scope(api, alice_limited, starter):
    assert api.get(f"/v1/inferences/{uuid.uuid4()}", **alice_limited.auth).status_code == 403


def test_models_lists_what_the_key_may_use_with_task_tier_and_prices(api, alice, alice_limited, starter):
    listing = api.get("/v1/models", **alice.auth).json()
    ids = {m["id"] for m in listing["data"]}
    assert {"lid-176", "minilm-l6", "smollm2-135m-instruct"} <= ids
    lid = next(m for m in listing["data"] if m["id"] == "lid-176")
    assert (lid["object"], lid["task"], lid["tier"]) == ("model", "language_id", "local")
    assert float(lid["pricing"]["per_compute_second"]) > 0
    alice.key.allowed_models = ["lid-176"]
    alice.key.save()
    assert [m["id"] for m in api.get("/v1/models", **alice.auth).json()["data"]] == ["lid-176"]
    assert api.get("/v1/models").status_code == 401
