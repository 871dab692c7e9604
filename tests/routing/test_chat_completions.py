"""POST /v1/chat/completions with a tiny local chat model: OpenAI's body, headers, SSE streaming, limits."""
from __future__ import annotations

import json

import pytest

from tests.routing.conftest import post, records

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_a_completion_in_openai_format_with_usage_and_headers(api, alice, chat_model):
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 16, "temperature": 0}, alice,
                    HTTP_X_REQUEST_ID="chat-000001")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-chat"
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Paris is the capital of France."}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] > 0
    assert response["x-modelgate-model"] == "tiny-chat" and float(response["x-modelgate-cost"]) > 0
    [record] = records("chat-000001")
    assert record.status == "ok" and record.units_out == usage["completion_tokens"]
    assert record.complexity is not None and "complexity" in record.routing_reason


def test_max_tokens_cuts_the_answer_with_finish_reason_length(api, alice, chat_model):
    body = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 2, "temperature": 0}, alice).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2


def test_streaming_sends_openai_chunks_and_records_the_usage(api, alice, chat_model):
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 16, "temperature": 0, "stream": True,
                                                  "stream_options": {"include_usage": True}}, alice,
                    HTTP_X_REQUEST_ID="chat-stream-1")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    assert response["x-modelgate-model"] == "tiny-chat"
    lines = [line for line in b"".join(response.streaming_content).decode().split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Paris is the capital of France."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    usage = chunks[-1]["usage"]
    [record] = records("chat-stream-1")
    assert record.status == "ok" and record.units_out == usage["completion_tokens"] and record.cost > 0


@pytest.mark.parametrize(
    "body, message",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": ""}]}, "content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "text content"),
        ({"messages": FRANCE, "max_tokens": 0}, "max_tokens"),
        ({"messages": FRANCE, "max_tokens": 100_000}, "At most"),
        ({"messages": FRANCE, "temperature": 3}, "temperature"),
        ({"messages": FRANCE, "n": 2}, "n"),
        ({"messages": FRANCE, "stop": ["a", "b", "c", "d", "e"]}, "up to 4"),
        ({"messages": FRANCE, "model": "lid-176"}, "No enabled generation model"),
    ],
)
def test_bad_requests_are_refused_before_anything_runs(api, alice, chat_model, body, message):
    response = post(api, "/v1/chat/completions", body, alice)
    assert response.status_code == 400, response.content
    assert message in json.dumps(response.json()["error"])


def test_a_request_the_model_cannot_take_is_rejected_and_recorded(api, alice, chat_model):
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 41}, alice, HTTP_X_REQUEST_ID="chat-reject-1")
    assert response.status_code == 400
    assert [r.status for r in records("chat-reject-1")] == ["rejected"]
