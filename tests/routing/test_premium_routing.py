"""Premium models in the chain, through the official SDKs against a fake provider on 127.0.0.1:
complexity routing, escalation, fallback, open circuits, bring-your-own keys, streaming, and every task
a local model answers (language ID, speech, intent) answered by a premium model."""
from __future__ import annotations

import hashlib
import io
import json
from decimal import Decimal

import numpy as np
import pytest
import soundfile

from inference.intent import DEFAULT_INTENTS
from inference.payloads import AudioInput, ChatMessage, GenerationInput, LanguageIdInput
from registry.models import ModelSpec
from routing import prompts
from routing.models import ProviderCredential, RoutingPolicy
from inference.breaker import breaker_for
from routing.premium import MissingOption, judge_chat, run_premium
from routing.providers import ProviderBadOutput, ProviderUnsupported
from tests.routing.conftest import post, records
from tests.routing.fake_providers import words
from tests.routing.test_chat_completions import FRANCE
from tests.routing.test_providers import tone
from tests.routing.test_router import SPORTS

OPERATOR_KEY = "sk-operator-key-for-tests"


def premium(slug: str, task: str, server, *, kind: str = "openai", options: dict | None = None, **prices) -> ModelSpec:
    base_url = server.openai_base_url if kind == "openai" else server.anthropic_base_url
    ProviderCredential.objects.get_or_create(tenant=None, kind=kind, base_url=base_url,
                                             defaults={"encrypted_api_key": ""})
    credential = ProviderCredential.objects.get(tenant=None, kind=kind, base_url=base_url)
    credential.set_api_key(OPERATOR_KEY)
    credential.save()
    breaker_for(f"{kind}:{base_url}").reset()
    return ModelSpec.objects.create(
        slug=slug, display_name=slug, task=task, backend=kind, source_kind="provider", source=f"{slug}-upstream",
        tier="premium", options={"base_url": base_url, "timeout": 2, "max_retries": 1, "breaker_threshold": 2, **(options or {})},
        price_input_per_1k_tokens=prices.get("input", "0.5"), price_output_per_1k_tokens=prices.get("output", "1.5"),
        price_per_audio_minute=prices.get("audio_minute", "0"),
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


# --- every local task, answered by a premium model -----------------------------------------------
def prompt_tokens(request) -> int:
    """What the fake bills for a chat request's prompt: the words of every message, system included."""
    return sum(words(message["content"]) for message in request.body["messages"])


def classified(label: str, labels) -> str:
    """A classifier's JSON answer giving `label` 0.65 and the rest of the probability to the others."""
    others = [name for name in labels if name != label]
    return json.dumps({"label": label, "scores": {label: 0.65, **{name: 0.35 / len(others) for name in others}}})


def wav_upload(samples: np.ndarray, name: str = "clip.wav") -> io.BytesIO:
    upload = io.BytesIO()
    soundfile.write(upload, samples, 16_000, format="WAV", subtype="PCM_16")
    upload.seek(0)
    upload.name = name
    return upload


def test_run_premium_identifies_languages_and_sums_the_tokens_of_every_item(db, fake_providers):
    spec = premium("lid-fake", "language_id", fake_providers)
    fake_providers.replies('{"language": "fr"}', '{"language": "eng"}')

    outcome = run_premium(spec=spec, task="language_id", items=[LanguageIdInput("Bonjour à tous"),
                                                                   LanguageIdInput("Good morning", top_k=3)])

    assert [[guess.language for guess in guesses] for guesses in outcome.values] == [["fr"], ["en"]]  # one guess each
    assert all(guesses[0].probability is None for guesses in outcome.values)
    sent = fake_providers.requests_to("/v1/chat/completions")
    assert [request.body["model"] for request in sent] == ["lid-fake-upstream"] * 2
    assert outcome.tokens_in == sum(prompt_tokens(request) for request in sent) and outcome.tokens_out == 4


def test_run_premium_transcribes_and_reports_no_tokens_so_the_audio_minutes_price_it(db, fake_providers):
    spec = premium("whisper-fake", "speech", fake_providers)
    fake_providers.transcript("Where is my parcel")

    outcome = run_premium(spec=spec, task="speech", items=[AudioInput(samples=tone(2.0), language="en")])

    [transcription] = outcome.values
    assert (transcription.text, transcription.language, transcription.duration) == ("Where is my parcel", "en", 2.0)
    assert transcription.avg_logprob is None  # no confidence claimed
    assert outcome.tokens_in is None and outcome.tokens_out is None
    [request] = fake_providers.requests_to("/v1/audio/transcriptions")
    assert (request.body["model"], request.body["language"]) == ("whisper-fake-upstream", "en")


def test_anthropic_cannot_serve_speech(db, fake_providers):
    spec = premium("claude-ears", "speech", fake_providers, kind="anthropic")
    with pytest.raises(ProviderUnsupported, match="does not transcribe") as caught:
        run_premium(spec=spec, task="speech", items=[AudioInput(samples=tone())])
    assert not caught.value.retryable and fake_providers.requests == []


def test_run_premium_classifies_the_transcript_into_an_intent(db, fake_providers):
    spec = premium("intent-fake", "intent", fake_providers, options={"chat_model": "gpt-small", "top_k": 2})
    fake_providers.transcript("I want to pay for everything in my basket")
    fake_providers.reply(classified("checkout", DEFAULT_INTENTS))

    outcome = run_premium(spec=spec, task="intent", items=[AudioInput(samples=tone())])

    [intent] = outcome.values
    assert (intent.intent, intent.confidence) == ("checkout", pytest.approx(0.65))
    assert [score.label for score in intent.top_k][0] == "checkout" and len(intent.top_k) == 2
    assert intent.transcription.text == "I want to pay for everything in my basket"
    [heard] = fake_providers.requests_to("/v1/audio/transcriptions")
    [asked] = fake_providers.requests_to("/v1/chat/completions")
    assert heard.body["model"] == "intent-fake-upstream" and asked.body["model"] == "gpt-small"
    assert json.dumps(list(DEFAULT_INTENTS)) in asked.body["messages"][0]["content"]
    assert asked.body["messages"][1]["content"] == "I want to pay for everything in my basket"
    assert outcome.tokens_in == prompt_tokens(asked) and outcome.tokens_out == words(classified("checkout", DEFAULT_INTENTS))


def test_a_premium_intent_model_takes_its_labels_from_the_intents_option(db, fake_providers):
    intents = {"refund": "give me my money back", "greeting": ["hello", "hi there"]}
    spec = premium("intent-fake", "intent", fake_providers, options={"chat_model": "gpt-small", "intents": intents})
    fake_providers.reply(classified("refund", intents))

    [intent] = run_premium(spec=spec, task="intent", items=[AudioInput(samples=tone())]).values

    assert intent.intent == "refund" and [score.label for score in intent.top_k] == ["refund", "greeting"]
    assert '["refund", "greeting"]' in fake_providers.requests_to("/v1/chat/completions")[0].body["messages"][0]["content"]


def test_an_empty_transcript_of_sound_claims_no_intent_confidence(db, fake_providers):
    spec = premium("intent-fake", "intent", fake_providers, options={"chat_model": "gpt-small"})
    fake_providers.transcript("")

    [intent] = run_premium(spec=spec, task="intent", items=[AudioInput(samples=tone())]).values

    # Not the local backend's sure "other" for silence: the router's floor sees a doubt.
    assert (intent.intent, intent.confidence, intent.top_k, intent.transcription.text) == ("other", 0.0, [], "")
    assert fake_providers.requests_to("/v1/chat/completions") == []


def test_an_intent_model_without_a_chat_model_fails_before_sending_the_audio(db, fake_providers):
    spec = premium("intent-fake", "intent", fake_providers)
    with pytest.raises(MissingOption, match="chat_model") as caught:
        run_premium(spec=spec, task="intent", items=[AudioInput(samples=tone())])
    assert caught.value.code == "provider_not_configured" and fake_providers.requests == []


def test_judge_chat_grades_a_local_answer_with_the_teacher_model(db, fake_providers):
    spec = premium("gpt-teacher", "generation", fake_providers)
    question = GenerationInput(messages=(ChatMessage("user", "What is the capital of France?"),), max_tokens=16)
    fake_providers.reply('{"agreement": 0.9}')

    verdict = judge_chat(spec=spec, item=question, candidate="Paris, I think.", reference="Paris.")

    assert verdict.value == 0.9 and verdict.tokens_out == 2
    [request] = fake_providers.requests_to("/v1/chat/completions")
    assert request.body["model"] == "gpt-teacher-upstream" and verdict.tokens_in == prompt_tokens(request)
    fake_providers.reply('{"agreement": 2}')
    with pytest.raises(ProviderBadOutput, match="between 0 and 1") as caught:
        judge_chat(spec=spec, item=question, candidate="Lyon.", reference="Paris.")
    refused = fake_providers.requests_to("/v1/chat/completions")[-1]
    assert caught.value.tokens_in == prompt_tokens(refused) and caught.value.tokens_out == 2  # billed all the same


def test_detect_language_through_a_premium_model(api, alice, fake_providers):
    premium("lid-fake", "language_id", fake_providers)
    fake_providers.reply('{"language": "fr"}')

    response = post(api, "/v1/detect-language", {"texts": ["Bonjour à tous"], "model": "lid-fake"}, alice,
                     HTTP_X_REQUEST_ID="premium-lid-01")

    assert response.status_code == 200, response.content
    [result] = response.json()["results"]
    assert (result["language"], result["probability"]) == ("fr", None)  # no probability claimed
    [record] = records("premium-lid-01")
    assert record.status == "ok" and record.tier == "premium" and record.output_preview == "fr"
    assert record.unit == "tokens" and record.cost > 0


def test_a_premium_transcription_is_priced_by_the_audio_minute(api, alice, fake_providers):
    premium("whisper-fake", "speech", fake_providers, audio_minute="0.006")
    fake_providers.transcript("Add two apples to my cart")

    response = api.post("/v1/audio/transcriptions", {"file": wav_upload(tone(3.0)), "model": "whisper-fake"},
                        format="multipart", **alice.auth, HTTP_X_REQUEST_ID="premium-asr-01")

    assert response.status_code == 200, response.content
    assert response.json() == {"text": "Add two apples to my cart"}
    assert response["x-modelgate-model"] == "whisper-fake" and response["x-modelgate-tier"] == "premium"
    [record] = records("premium-asr-01")
    assert (record.status, record.unit, record.units_in) == ("ok", "seconds", pytest.approx(3.0))
    assert record.cost == Decimal("0.006") * Decimal(str(record.units_in)) / 60


def test_intent_through_a_premium_model(api, alice, fake_providers):
    premium("intent-fake", "intent", fake_providers, options={"chat_model": "gpt-small"})
    fake_providers.transcript("Where is my order")
    fake_providers.reply(classified("track_order", DEFAULT_INTENTS))

    response = api.post("/v1/intent", {"file": wav_upload(tone()), "model": "intent-fake", "top_k": 2},
                        format="multipart", **alice.auth, HTTP_X_REQUEST_ID="premium-int-01")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["intent"], body["confidence"], body["transcription"]["text"]) == ("track_order", 0.65, "Where is my order")
    assert [entry["intent"] for entry in body["top_k"]][0] == "track_order"
    assert records("premium-int-01")[0].tier == "premium"
