"""A premium provider that fails — 429, 500, malformed JSON, too slow, never answering — through every
surface that reaches it (plain chat, streamed chat, a prompted task: translate), driven through the
official SDKs against a real fake provider on 127.0.0.1. Each case pins what the client sees (status
and the one error shape), the record (completed, with the failure's code), the money (the hold
released, nothing charged) and how many calls reached the provider (the SDK retries only what
retrying can fix)."""
from __future__ import annotations

import json

import pytest

from billing.models import Budget
from routing.models import InferenceRecord
from tests.routing.conftest import post, records
from tests.routing.test_chat_completions import FRANCE
from tests.routing.test_premium_routing import chat_policy, premium

TIMEOUT = 1  # seconds the provider has per HTTP attempt; max_retries is 1: two attempts at most


def fault(server, name: str) -> None:
    {
        "429": lambda: server.status(429, times=10),
        "500": lambda: server.status(500, times=10),
        "malformed": lambda: server.malformed(),
        "slow": lambda: server.slow(TIMEOUT + 1.5),
        "never": lambda: server.hang(),
    }[name]()


# fault: (record error code, calls that reach the provider: 2 when the SDK retries)
FAULTS = {
    "429": ("provider_rate_limited", 2),
    "500": ("provider_unavailable", 2),
    "malformed": ("provider_bad_output", 1),  # a 200 whose body is broken: the same call would break alike
    "slow": ("provider_timeout", 2),
    "never": ("provider_timeout", 2),
}


def assert_client_error(response, name: str, request_id: str, slug: str, code: str | None = None) -> None:
    """A provider's rate limit is a 503 to retry after its hint; any other failure a 502. Either names the
    model that failed and its code, never the provider's own text or key."""
    if name == "429":
        error = assert_error_shape(response, 503, "upstream_rate_limited", request_id)
        assert response["Retry-After"] == "1"  # the fake's hint (5 ms), rounded up to HTTP's whole seconds
    else:
        error = assert_error_shape(response, 502, "upstream_failed", request_id)
    assert f"The last to fail was {slug} ({code or FAULTS[name][0]})." in error["message"], error
    assert "sk-operator" not in error["message"] and "Error code" not in error["message"]


def assert_error_shape(response, status: int, code: str, request_id: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"code", "message", "request_id"}
    assert body["error"]["code"] == code and body["error"]["request_id"] == request_id
    return body["error"]


def assert_failed_and_released(request_id: str, code: str, budget: Budget) -> InferenceRecord:
    [record] = records(request_id)
    assert (record.status, record.error_code) == ("error", code)
    assert record.completed_at is not None and record.cost == 0
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == 0
    return record


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_plain_chat_to_a_failing_provider_is_an_error_with_the_record_closed(api, alice, budget, fake_providers, name):
    premium("gpt-fake", "generation", fake_providers, options={"timeout": TIMEOUT})
    fault(fake_providers, name)
    request_id = f"fault-chat-{name}"

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "gpt-fake", "max_tokens": 16}, alice,
                    HTTP_X_REQUEST_ID=request_id)

    code, calls = FAULTS[name]
    assert_client_error(response, name, request_id, "gpt-fake")
    assert_failed_and_released(request_id, code, budget)
    assert len(fake_providers.requests_to("/v1/chat/completions")) == calls


@pytest.mark.parametrize("name", ["429", "500", "slow", "never"])
def test_a_stream_the_provider_refuses_before_any_text_is_a_plain_http_error(api, alice, budget, fake_providers, name):
    premium("gpt-fake", "generation", fake_providers, options={"timeout": TIMEOUT})
    fault(fake_providers, name)
    request_id = f"fault-stream-{name}"

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "gpt-fake", "max_tokens": 16, "stream": True},
                    alice, HTTP_X_REQUEST_ID=request_id)

    code, calls = FAULTS[name]
    assert not response.streaming  # the error comes before the response starts: a status the client can act on
    assert_client_error(response, name, request_id, "gpt-fake")
    assert_failed_and_released(request_id, code, budget)
    assert len(fake_providers.requests_to("/v1/chat/completions")) == calls


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_stream_that_turns_malformed_ends_with_an_error_event_and_the_hold_released(api, alice, budget, fake_providers, kind):
    premium("chat-fake", "generation", fake_providers, kind=kind, options={"timeout": TIMEOUT})
    fake_providers.malformed()
    request_id = f"fault-stream-malformed-{kind}"

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "chat-fake", "max_tokens": 16, "stream": True},
                    alice, HTTP_X_REQUEST_ID=request_id)

    assert response.status_code == 200  # the stream had started: the error travels inside it
    events = [event.removeprefix("data: ") for event in b"".join(response.streaming_content).decode().split("\n\n") if event]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["request_id"]) == ("provider_bad_output", request_id)
    assert_failed_and_released(request_id, "provider_bad_output", budget)
    path = "/v1/messages" if kind == "anthropic" else "/v1/chat/completions"
    assert len(fake_providers.requests_to(path)) == 1


def test_a_stream_whose_provider_is_rate_limited_falls_back_to_the_local_model(api, alice, budget, chat_model, fake_providers):
    premium("gpt-fake", "generation", fake_providers, options={"timeout": TIMEOUT})
    chat_policy(alice.tenant, "gpt-fake", "tiny-chat")
    fake_providers.status(429, times=10)

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 8, "stream": True, "temperature": 0},
                    alice, HTTP_X_REQUEST_ID="fault-stream-fallback")

    assert response.status_code == 200, [(r.model_slug, r.error_code, r.error_message) for r in records("fault-stream-fallback")]
    assert response["x-modelgate-model"] == "tiny-chat"
    assert b"".join(response.streaming_content).endswith(b"data: [DONE]\n\n")
    refused, answered = records("fault-stream-fallback")
    assert (refused.status, refused.error_code, refused.cost) == ("error", "provider_rate_limited", 0)
    assert (answered.status, answered.escalated_from_id, answered.escalation_cause) == ("ok", refused.id, "error")
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == answered.cost


@pytest.mark.parametrize("name", list(FAULTS))
def test_translate_through_a_failing_premium_model_is_an_error_with_the_record_closed(api, alice, budget, fake_providers, name):
    premium("translate-fake", "translation", fake_providers, options={"timeout": TIMEOUT})
    fault(fake_providers, name)
    request_id = f"fault-translate-{name}"

    response = post(api, "/v1/translate", {"text": "Good morning", "source": "en", "target": "fr", "model": "translate-fake"},
                    alice, HTTP_X_REQUEST_ID=request_id)

    code, calls = FAULTS[name]
    assert_client_error(response, name, request_id, "translate-fake")
    assert_failed_and_released(request_id, code, budget)
    assert len(fake_providers.requests_to("/v1/chat/completions")) == calls


def test_a_prompted_answer_that_does_not_parse_is_not_retried_and_its_tokens_are_not_charged_twice(api, alice, budget, fake_providers):
    premium("translate-fake", "translation", fake_providers)
    fake_providers.reply("Bonjour")  # the model answered, but not the JSON the prompt asked for

    response = post(api, "/v1/translate", {"text": "Good morning", "source": "en", "target": "fr", "model": "translate-fake"},
                    alice, HTTP_X_REQUEST_ID="fault-translate-unparsed")

    assert_client_error(response, "unparsed", "fault-translate-unparsed", "translate-fake", "provider_bad_output")
    assert_failed_and_released("fault-translate-unparsed", "provider_bad_output", budget)
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 1


def test_a_rate_limited_provider_recovers_on_the_next_request_without_an_open_circuit(api, alice, budget, fake_providers):
    premium("gpt-fake", "generation", fake_providers, options={"timeout": TIMEOUT, "breaker_threshold": 5})
    fake_providers.status(429, times=1)  # one 429, then answers: the SDK's retry absorbs it

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "gpt-fake", "max_tokens": 16}, alice,
                    HTTP_X_REQUEST_ID="fault-chat-retried")

    assert response.status_code == 200, response.content
    [record] = records("fault-chat-retried")
    assert record.status == "ok" and record.cost > 0
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == record.cost
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 2
