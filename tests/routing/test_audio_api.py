"""POST /v1/audio/transcriptions and /v1/intent with the packaged Whisper tiny.en and MiniLM."""
from __future__ import annotations

import io

import pytest

from routing.models import InferenceRecord
from tests.routing.conftest import audio_file, records


def upload(api, path, caller, **fields):
    return api.post(path, fields, format="multipart", **caller.auth)


def test_transcription_in_openai_json_with_headers_and_a_record(api, alice, starter):
    response = api.post("/v1/audio/transcriptions", {"file": audio_file("add_to_cart_en.flac"), "model": "whisper-tiny-en"},
                        format="multipart", **alice.auth, HTTP_X_REQUEST_ID="speech-00001")
    assert response.status_code == 200, response.content
    assert "apples" in response.json()["text"].lower()
    assert response["x-modelgate-model"] == "whisper-tiny-en"
    [record] = records("speech-00001")
    assert record.unit == "seconds" and 1 < record.units_in < 10 and record.confidence > 0


def test_transcription_as_text_and_verbose_json(api, alice, starter):
    text = upload(api, "/v1/audio/transcriptions", alice, file=audio_file("search_en.flac"), response_format="text")
    assert text["Content-Type"].startswith("text/plain") and "shoes" in text.content.decode().lower()
    verbose = upload(api, "/v1/audio/transcriptions", alice, file=audio_file("search_en.flac"), response_format="verbose_json").json()
    assert verbose["language"] == "en" and verbose["duration"] > 1 and verbose["segments"]


def test_intent_gives_the_intent_confidence_and_top_k(api, alice, starter):
    response = upload(api, "/v1/intent", alice, file=audio_file("checkout_en.flac"), top_k=2)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["intent"] == "checkout" and 0 < body["confidence"] <= 1
    assert len(body["top_k"]) == 2 and body["top_k"][0]["intent"] == "checkout"
    assert "check" in body["transcription"]["text"].lower() and body["model"] == "intent-tiny-en"


@pytest.mark.parametrize("payload", [b"", b"this is not audio at all" * 20, b"RIFF\x00\x00"])
def test_bad_audio_is_a_400_and_nothing_is_admitted(api, alice, starter, payload):
    file = io.BytesIO(payload)
    file.name = "clip.wav"
    response = upload(api, "/v1/audio/transcriptions", alice, file=file)
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"invalid_audio", "invalid_request"}
    assert not InferenceRecord.objects.exists()


def test_a_missing_file_is_named(api, alice, starter):
    response = upload(api, "/v1/intent", alice, top_k=2)
    assert response.status_code == 400 and "file" in response.json()["error"]["message"]


def test_audio_needs_its_scope(api, alice_limited, starter):
    assert upload(api, "/v1/intent", alice_limited, file=audio_file("checkout_en.flac")).status_code == 403
