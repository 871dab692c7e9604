"""The official `openai` SDK pointed at Modelgate as its base URL: embeddings, chat, streaming, transcriptions."""
from __future__ import annotations

import openai
import pytest

from tests.routing.conftest import FIXTURES
from tests.routing.test_chat_completions import FRANCE


@pytest.fixture
def client(live_server, alice, starter):
    sdk = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=alice.secret, max_retries=0, timeout=120)
    yield sdk
    # Closing ends the keep-alive connections, and with them the server threads and their database sessions.
    sdk.close()


@pytest.mark.django_db(transaction=True)
def test_embeddings_through_the_sdk(client):
    result = client.embeddings.create(model="minilm-l6", input=["a cat", "a dog"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens > 0 and result.model == "minilm-l6"


@pytest.mark.django_db(transaction=True)
def test_chat_and_streaming_through_the_sdk(client, chat_model):
    completion = client.chat.completions.create(model="auto", messages=FRANCE, max_tokens=16, temperature=0)
    assert completion.choices[0].message.content == "Paris is the capital of France."
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=FRANCE, max_tokens=16, temperature=0)
    assert raw.headers["x-modelgate-model"] == "tiny-chat"
    pieces = []
    usage = None
    for chunk in client.chat.completions.create(model="auto", messages=FRANCE, max_tokens=16, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == "Paris is the capital of France."
    assert usage.completion_tokens == completion.usage.completion_tokens


@pytest.mark.django_db(transaction=True)
def test_transcriptions_through_the_sdk(client):
    with open(FIXTURES / "search_en.flac", "rb") as audio:
        result = client.audio.transcriptions.create(model="whisper-tiny-en", file=audio)
    assert "shoes" in result.text.lower()


@pytest.mark.django_db(transaction=True)
def test_sdk_errors_carry_our_error_shape(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="no-such-model", input="x")
    assert caught.value.body["code"] == "unknown_model"
