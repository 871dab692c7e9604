"""Premium models in the chain, through the official SDKs against a fake provider on 127.0.0.1:
complexity routing, escalation, fallback, open circuits, bring-your-own keys, streaming."""
from __future__ import annotations

import hashlib
import json

import pytest

from registry.models import ModelSpec
from routing.models import ProviderCredential, RoutingPolicy
from routing.breaker import breaker_for
from tests.routing.conftest import post, records
from tests.routing.test_chat_completions import FRANCE
from tests.routing.test_router import SPORTS

OPERATOR_KEY = "sk-operator-key-for-tests"


def premium(slug: str, task: str, server, *, kind: str = "openai", **prices) -> ModelSpec:
    base_url = server.openai_base_url if kind == "openai" else server.anthropic_base_url
    ProviderCredential.objects.get_or_create(tenant=None, kind=kind, base_url=base_url,
                                             defaults={"encrypted_api_key": ""})
    credential = ProviderCredential.objects.get(tenant=None, kind=kind, base_url=base_url)
    credential.set_api_key(OPERATOR_KEY)
    credential.save()
    breaker_for(f"{kind}:{base_url}").reset()
    return ModelSpec.objects.create(
        slug=slug, display_name=slug, task=task, backend=kind, source_kind="provider", source=f"{slug}-upstream",
        tier="premium", options={"base_url": base_url, "timeout": 2, "max_retries": 1, "breaker_threshold": 2},
        price_input_per_1k_tokens=prices.get("input", "0.5"), price_output_per_1k_tokens=prices.get("output", "1.5"),
    )


def chat_policy(tenant, *candidates, threshold=0.6):
    return RoutingPolicy.objects.create(tenant=tenant, task="generation", candidates=list(candidates),
                                        complexity_threshold=threshold)


HARD = [{"role": "user", "content": "Explain step by step why this recursive function overflows:\n```python\ndef f(n):\n    return f(n + 1)\n```"}]


def test_a_simple_chat_stays_local_and_a_complex_one_goes_premium(api, alice, chat_model, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    chat_policy(alice.tenant, "tiny-chat", "gpt-fake", threshold=0.5)
    simple = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 16, "temperature": 0}, alice)
    assert simple["x-modelgate-model"] == "tiny-chat" and simple["x-modelgate-tier"] == "local"
    hard = post(api, "/v1/chat/completions", {"messages": HARD, "max_tokens": 16}, alice, HTTP_X_REQUEST_ID="hard-chat-01")
    assert hard.status_code == 200, hard.content
    assert hard["x-modelgate-model"] == "gpt-fake" and hard["x-modelgate-tier"] == "premium"
    [record] = records("hard-chat-01")
    assert record.complexity > 0.5 and "contains code" in record.routing_reason and "local models skipped" in record.routing_reason
    usage = hard.json()["usage"]
    assert record.unit == "tokens" and record.units_in == usage["prompt_tokens"] and record.units_out == usage["completion_tokens"]
    expected = (usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 1.5) / 1000
    assert float(record.cost) == pytest.approx(expected)
    sent = fake_providers.requests_to("/v1/chat/completions")[-1]
    assert sent.credential == hashlib.sha256(OPERATOR_KEY.encode()).hexdigest()


def test_a_low_confidence_local_answer_escalates_to_premium(api, alice, hesitant, fake_providers):
    premium("classifier-fake", "classification", fake_providers)
    RoutingPolicy.objects.create(tenant=alice.tenant, task="classification",
                                 candidates=["zero-shot-hesitant", "classifier-fake"], confidence_floor=0.5)
    fake_providers.reply(json.dumps({"label": "sports", "scores": {"sports": 0.9, "finance": 0.05, "cooking": 0.05}}))
    response = post(api, "/v1/classify", SPORTS, alice, HTTP_X_REQUEST_ID="escalate-p-01")
    assert response.status_code == 200, response.content
    assert response.json()["model"] == "classifier-fake" and response.json()["results"][0]["predicted"] == ["sports"]
    local, remote = records("escalate-p-01")
    assert (local.status, remote.status, remote.escalated_from_id) == ("escalated", "ok", local.id)
    assert remote.tier == "premium" and remote.cost > 0


def test_a_provider_error_falls_back_to_the_next_candidate(api, alice, chat_model, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    chat_policy(alice.tenant, "gpt-fake", "tiny-chat")
    fake_providers.status(500, times=10)
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 16, "temperature": 0}, alice,
                    HTTP_X_REQUEST_ID="fallback-p-01")
    assert response.status_code == 200 and response["x-modelgate-model"] == "tiny-chat"
    failed, answered = records("fallback-p-01")
    assert failed.status == "error" and failed.error_code == "provider_unavailable"
    assert answered.escalated_from_id == failed.id
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 2  # one retry, then fall back


def test_an_open_circuit_is_skipped_without_calling_the_provider(api, alice, chat_model, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    chat_policy(alice.tenant, "gpt-fake", "tiny-chat")
    fake_providers.status(503, times=100)
    for _ in range(2):  # threshold 2: the circuit opens
        post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 16}, alice)
    calls = len(fake_providers.requests)
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 16, "temperature": 0}, alice,
                    HTTP_X_REQUEST_ID="circuit-p-01")
    assert response.status_code == 200 and response["x-modelgate-model"] == "tiny-chat"
    assert len(fake_providers.requests) == calls
    assert records("circuit-p-01")[0].error_code == "circuit_open"


def test_a_tenants_own_key_is_used_for_its_requests(api, alice, bob, chat_model, fake_providers):
    spec = premium("gpt-fake", "generation", fake_providers)
    own = ProviderCredential(tenant=alice.tenant, kind="openai", base_url=spec.options["base_url"])
    own.set_api_key("sk-alice-own-key")
    own.save()
    for caller in (alice, bob):
        post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "gpt-fake", "max_tokens": 8}, caller)
    alice_call, bob_call = fake_providers.requests_to("/v1/chat/completions")
    assert alice_call.credential == hashlib.sha256(b"sk-alice-own-key").hexdigest()
    assert bob_call.credential == hashlib.sha256(OPERATOR_KEY.encode()).hexdigest()
    assert "sk-alice-own-key" not in ProviderCredential.objects.get(tenant=alice.tenant).encrypted_api_key


def test_premium_streaming_through_anthropic_is_recorded_with_its_usage(api, alice, starter, fake_providers):
    premium("claude-fake", "generation", fake_providers, kind="anthropic")
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "claude-fake", "max_tokens": 32, "stream": True,
                                                  "stream_options": {"include_usage": True}}, alice,
                    HTTP_X_REQUEST_ID="stream-p-001")
    assert response.status_code == 200
    lines = [line for line in b"".join(response.streaming_content).decode().split("\n\n") if line]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text and chunks[-1]["usage"]["completion_tokens"] > 0
    [record] = records("stream-p-001")
    assert record.status == "ok" and record.tier == "premium" and record.cost > 0
    assert record.units_out == chunks[-1]["usage"]["completion_tokens"]


def test_without_any_credential_the_premium_model_is_an_error_and_the_chain_goes_on(api, alice, chat_model, fake_providers, settings):
    settings.OPENAI_API_KEY = None
    ModelSpec.objects.create(slug="gpt-nokey", display_name="x", task="generation", backend="openai", source_kind="provider",
                             source="gpt", tier="premium", options={"base_url": "http://127.0.0.1:9/v1"})
    chat_policy(alice.tenant, "gpt-nokey", "tiny-chat")
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 16}, alice, HTTP_X_REQUEST_ID="nokey-p-001")
    assert response["x-modelgate-model"] == "tiny-chat"
    assert records("nokey-p-001")[0].error_code == "provider_not_configured"


def test_a_prompt_too_long_for_the_local_model_goes_to_the_next_candidate(api, alice, chat_model, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    chat_policy(alice.tenant, "tiny-chat", "gpt-fake", threshold=0.99)
    long_question = [{"role": "user", "content": "Tell me about " + "the sea " * 60}]
    response = post(api, "/v1/chat/completions", {"messages": long_question, "max_tokens": 16}, alice, HTTP_X_REQUEST_ID="toolong-p-01")
    assert response.status_code == 200 and response["x-modelgate-model"] == "gpt-fake"
    refused, answered = records("toolong-p-01")
    assert refused.status == "rejected" and "at most 64" in refused.error_message
    assert answered.routing_reason.startswith("fallback after tiny-chat refused the input")


def test_a_premium_chat_costs_two_queries_once_the_key_is_known(api, alice, fake_providers, key_cache, django_assert_num_queries):
    premium("gpt-fake", "generation", fake_providers)
    body = {"model": "gpt-fake", "messages": FRANCE, "max_tokens": 16}
    assert post(api, "/v1/chat/completions", body, alice).status_code == 200  # key, model and credential now cached
    # The record, written pending before the call and completed after (only the fields completion sets).
    with django_assert_num_queries(2):
        response = post(api, "/v1/chat/completions", body, alice)
    assert response.status_code == 200 and response["x-modelgate-model"] == "gpt-fake"
