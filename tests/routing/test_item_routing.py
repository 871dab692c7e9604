"""Items are routed one by one: only the unsure ones escalate, in one premium attempt carrying just them,
answered in the request's order; every record keeps what its decision was made with; premium answers
carry no invented confidence; plain and streamed chat fall back alike."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from routing.models import InferenceRecord, QualitySignal, RoutingPolicy
from tests.routing.conftest import post, records
from tests.routing.test_premium_routing import chat_policy, premium

LABELS = ["sports", "finance", "cooking"]
# zero-shot-minilm's top scores for these (measured): 0.81, 0.47, 0.99, 0.62, 1.00. A floor of 0.7 keeps
# three and escalates the second and the fourth.
TEXTS = [
    "The striker scored twice in the final minutes of the match",
    "ok then",
    "Stocks fell sharply as the central bank raised interest rates",
    "whatever you think",
    "Simmer the onions in butter until golden",
]


def answer(label: str) -> str:
    return json.dumps({"label": label, "scores": {name: (0.9 if name == label else 0.05) for name in LABELS}})


@pytest.fixture
def split_policy(alice, starter, fake_providers) -> RoutingPolicy:
    premium("gpt-classify", "classification", fake_providers)
    return RoutingPolicy.objects.create(tenant=alice.tenant, task="classification",
                                        candidates=["zero-shot-minilm", "gpt-classify"], confidence_floor=0.7)


def test_only_the_unsure_items_escalate_and_answers_keep_the_request_order(api, alice, split_policy, fake_providers):
    fake_providers.replies(answer("finance"), answer("sports"))
    response = post(api, "/v1/classify", {"texts": TEXTS, "labels": LABELS}, alice, HTTP_X_REQUEST_ID="split-0001")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["model"] for r in body["results"]] == ["zero-shot-minilm", "gpt-classify", "zero-shot-minilm",
                                                     "gpt-classify", "zero-shot-minilm"]
    assert [r["predicted"][0] for r in body["results"]] == ["sports", "finance", "finance", "sports", "cooking"]
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 2  # the two unsure items, nothing else

    local, escalation = records("split-0001")
    assert (local.model_slug, local.status, local.items, local.items_escalated) == ("zero-shot-minilm", "ok", 5, 2)
    assert (escalation.model_slug, escalation.status, escalation.items) == ("gpt-classify", "ok", 2)
    assert escalation.escalated_from_id == local.id and escalation.escalation_cause == "low_confidence"
    # The escalation is held, recorded and charged for its own two texts only.
    assert escalation.units_in > 0 and escalation.input_preview == "ok then\nwhatever you think"
    assert escalation.cost > 0 and Decimal(body["cost"]) == local.cost + escalation.cost
    assert "escalated (2 of 5 items)" in local.routing_reason


def test_records_keep_the_policy_the_floor_and_what_the_learned_router_reads(api, alice, split_policy, fake_providers):
    fake_providers.replies(answer("finance"), answer("sports"))
    post(api, "/v1/classify", {"texts": TEXTS, "labels": LABELS}, alice, HTTP_X_REQUEST_ID="split-0002")
    local, escalation = records("split-0002")
    assert local.policy_id == split_policy.pk and local.floor == 0.7 and local.escalation_cause == ""
    assert local.confidence == pytest.approx(0.4728, abs=0.02) and local.score == local.confidence  # the weakest item
    # What the learned router reads, of the weakest item ("ok then"): the one this record's routing turned on.
    assert local.features["label"] == "sports" and local.features["top1"] == pytest.approx(local.confidence)
    assert local.features["script"] == "Latin" and local.features["length"] == len("ok then")
    # A premium answer has no calibrated confidence: none is recorded, and no floor applied to it.
    assert escalation.confidence is None and escalation.score is None and escalation.floor is None
    assert escalation.features is None and escalation.policy_id == split_policy.pk


def test_an_escalation_pair_labels_the_local_attempt_with_its_agreement(api, alice, split_policy, fake_providers):
    fake_providers.replies(answer("finance"), answer("sports"))  # local said sports for both
    post(api, "/v1/classify", {"texts": TEXTS, "labels": LABELS}, alice, HTTP_X_REQUEST_ID="split-0003")
    local, escalation = records("split-0003")
    [signal] = QualitySignal.objects.filter(record=local)
    assert (signal.source, signal.teacher_id, signal.agreement) == ("escalation", escalation.id, 0.5)


def test_a_confident_batch_makes_no_premium_call(api, alice, split_policy, fake_providers):
    texts = [TEXTS[0], TEXTS[2], TEXTS[4]]
    response = post(api, "/v1/classify", {"texts": texts, "labels": LABELS}, alice, HTTP_X_REQUEST_ID="split-0004")
    assert [r["model"] for r in response.json()["results"]] == ["zero-shot-minilm"] * 3
    [local] = records("split-0004")
    assert local.items_escalated == 0 and not fake_providers.requests_to("/v1/chat/completions")
    assert not QualitySignal.objects.exists()


def test_when_every_item_escalates_the_local_attempt_is_marked_escalated(api, alice, split_policy, fake_providers):
    fake_providers.replies(answer("finance"), answer("cooking"))
    response = post(api, "/v1/classify", {"texts": [TEXTS[1], TEXTS[3]], "labels": LABELS}, alice,
                    HTTP_X_REQUEST_ID="split-0005")
    assert [r["model"] for r in response.json()["results"]] == ["gpt-classify"] * 2
    local, escalation = records("split-0005")
    assert (local.status, local.items_escalated, escalation.items) == ("escalated", 2, 2)
    assert response.json()["model"] == "gpt-classify" and response.json()["escalated"] is True


LONG = [{"role": "user", "content": " ".join(["tell me about the weather in the mountains today"] * 20)}]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_prompt_too_long_for_the_local_model_falls_back_alike_with_and_without_streaming(
    api, alice, chat_model, fake_providers, stream
):
    premium("gpt-fake", "generation", fake_providers)
    chat_policy(alice.tenant, "tiny-chat", "gpt-fake", threshold=0.99)
    fake_providers.reply("Sunny with a light breeze.")
    response = post(api, "/v1/chat/completions", {"messages": LONG, "max_tokens": 16, "stream": stream}, alice,
                    HTTP_X_REQUEST_ID=f"long-{stream}")
    assert response.status_code == 200, response.content
    assert response["x-modelgate-model"] == "gpt-fake"
    if stream:
        assert b"Sunny" in b"".join(response.streaming_content)
    refused, answered = records(f"long-{stream}")
    assert (refused.model_slug, refused.status) == ("tiny-chat", InferenceRecord.Status.REJECTED)
    assert answered.escalated_from_id == refused.id and answered.escalation_cause == "validation"
    assert answered.routing_reason.startswith("fallback after tiny-chat refused the input")
    assert answered.threshold == 0.99 and answered.floor is None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_prompt_too_long_for_every_candidate_is_a_400_alike(api, alice, chat_model, stream):
    chat_policy(alice.tenant, "tiny-chat", threshold=0.99)
    response = post(api, "/v1/chat/completions", {"messages": LONG, "max_tokens": 16, "stream": stream}, alice)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"


def test_a_complex_prompt_records_the_complexity_cause(api, alice, chat_model, fake_providers):
    from tests.routing.test_premium_routing import HARD

    premium("gpt-fake", "generation", fake_providers)
    chat_policy(alice.tenant, "tiny-chat", "gpt-fake", threshold=0.5)
    post(api, "/v1/chat/completions", {"messages": HARD, "max_tokens": 16}, alice, HTTP_X_REQUEST_ID="hard-cause-1")
    [record] = records("hard-cause-1")
    assert record.escalation_cause == "complexity" and record.threshold == 0.5


def test_a_cached_split_answer_still_says_who_answered_each_item(api, alice, split_policy, fake_providers):
    RoutingPolicy.objects.filter(pk=split_policy.pk).update(cache_enabled=True)
    from core.recent import configuration

    configuration.forget()
    fake_providers.replies(answer("finance"), answer("sports"))
    first = post(api, "/v1/classify", {"texts": TEXTS, "labels": LABELS}, alice).json()
    again = post(api, "/v1/classify", {"texts": TEXTS, "labels": LABELS}, alice, HTTP_X_REQUEST_ID="split-cached").json()
    assert again["cached"] is True and again["results"] == first["results"]
    assert [r["model"] for r in again["results"]][:2] == ["zero-shot-minilm", "gpt-classify"]
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 2  # the repeat cost nothing


def test_when_the_escalation_fails_the_local_answers_under_the_floor_serve_and_the_record_says_so(
    api, alice, split_policy, fake_providers
):
    from core.metrics import REGISTRY

    def served_below_floor() -> float:
        labels = {"task": "classification", "model": "zero-shot-minilm"}
        return REGISTRY.get_sample_value("modelgate_served_below_floor_total", labels) or 0.0

    before = served_below_floor()
    fake_providers.status(400, times=10)  # a client error: not retried, the premium attempt fails at once
    response = post(api, "/v1/classify", {"texts": TEXTS, "labels": LABELS}, alice, HTTP_X_REQUEST_ID="split-0006")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["model"] for r in body["results"]] == ["zero-shot-minilm"] * 5
    local, escalation = records("split-0006")
    assert (local.status, local.items_escalated) == ("ok", 2)
    assert "served below the floor: every escalation failed" in local.routing_reason
    assert (escalation.status, escalation.cost) == ("error", 0)
    assert Decimal(body["cost"]) == local.cost  # nothing charged for the failed premium attempt
    assert served_below_floor() == before + 1  # operators see it in /metrics too


def test_an_answer_that_failed_validation_is_never_served_when_the_escalation_fails(
    api, alice, split_policy, fake_providers, monkeypatch
):
    """An empty transcript or a cut translation is no answer: without a premium one the caller gets the error.
    The checks of those tasks are tested in test_quality; here one classification item is made to fail its check."""
    from routing import quality

    real = quality._CHECKS["classification"]
    monkeypatch.setitem(quality._CHECKS, "classification", lambda given, produced: (
        quality.Verdict(confidence=0.0, problem="the answer failed its check") if given.text == TEXTS[1] else real(given, produced)))
    fake_providers.status(400, times=10)
    response = post(api, "/v1/classify", {"texts": TEXTS, "labels": LABELS}, alice, HTTP_X_REQUEST_ID="split-0007")
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_failed"
    local, escalation = records("split-0007")
    assert local.escalation_cause == "" and "served below the floor" not in local.routing_reason
    assert escalation.status == "error" and escalation.escalation_cause == "validation"
