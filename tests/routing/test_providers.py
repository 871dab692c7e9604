"""Premium providers through the official SDKs against a real fake server: answers, usage, streaming,
embeddings, transcription, retries, error mapping, timeouts and the circuit breaker (the prompted tasks
are tests/routing/test_prompts.py)."""
from __future__ import annotations

import hashlib
import io
import itertools
import threading
import time
import traceback

import numpy as np
import pytest
import soundfile

from inference.errors import InvalidInput
from inference.payloads import AudioInput, ChatMessage, GenerationInput
from inference.breaker import CircuitBreaker, CircuitOpen
from routing.providers import (
    AnthropicProvider,
    OpenAIProvider,
    Provider,
    ProviderBadOutput,
    ProviderConfig,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnsupported,
    provider_for,
)
from tests.routing.fake_providers import DEFAULT_TRANSCRIPT, HANG_LIMIT, JOIN_LIMIT, FakeProviderServer, UploadedFile, fake_vector

KEY = "sk-fake-0123456789abcdef-secret"
KINDS = ("openai", "anthropic")
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
_names = itertools.count()

HELLO = GenerationInput(
    messages=(ChatMessage("system", "You are terse."), ChatMessage("user", "Say hello to the test suite")), max_tokens=64
)


def provider(server: FakeProviderServer, kind: str = "openai", **settings: object) -> Provider:
    """A provider on the fake server, with a breaker of its own (ports, and so default names, get reused)."""
    base_url = server.anthropic_base_url if kind == "anthropic" else server.openai_base_url
    options: dict[str, object] = {"api_key": KEY, "timeout": 5.0, "name": f"test-{kind}-{next(_names)}", **settings}
    return provider_for(ProviderConfig(kind=kind, base_url=base_url, **options))


def tone(seconds: float = 1.5, *, amplitude: float = 0.3) -> np.ndarray:
    """A 440 Hz tone, mono float32 at 16 kHz: audio that is not silent."""
    t = np.arange(int(seconds * 16_000), dtype=np.float32) / 16_000
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- chat ----------------------------------------------------------------------------------------
def test_openai_chat_returns_the_text_with_the_reported_usage(fake_providers):
    generation = provider(fake_providers).chat(model="gpt-test", request=HELLO)

    assert generation.text == "Hello from the fake provider."
    assert (generation.tokens_in, generation.tokens_out, generation.finish_reason) == (3 + 6, 5, "stop")
    [request] = fake_providers.requests_to("/v1/chat/completions")
    assert request.body["model"] == "gpt-test"
    assert request.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello to the test suite"},
    ]
    assert request.body["max_completion_tokens"] == 64 and "max_tokens" not in request.body
    assert request.credential == hashlib.sha256(KEY.encode()).hexdigest()
    assert "authorization" not in request.headers


@pytest.mark.parametrize("kind", ["openai", "openai-compatible"])
def test_openai_chat_sends_exactly_what_the_sdks_create_would_send(fake_providers, kind):
    """chat() posts through the SDK's client without create()'s transform of its parameters."""
    request = GenerationInput(
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Name a colour"), ChatMessage("assistant", "Red."),
                  ChatMessage("user", "Another")),
        max_tokens=32, temperature=0.3, stop=("END", "\n\n"),
    )
    chosen = provider(fake_providers, kind)

    chosen.chat(model="gpt-test", request=request)
    chosen.client.chat.completions.create(model="gpt-test", timeout=5.0, **chosen._params(request))

    ours, sdks = fake_providers.requests_to("/v1/chat/completions")
    assert (ours.method, ours.path, ours.body, ours.headers) == (sdks.method, sdks.path, sdks.body, sdks.headers)


def test_anthropic_chat_sends_system_messages_as_the_system_parameter(fake_providers):
    generation = provider(fake_providers, "anthropic").chat(model="claude-test", request=HELLO)

    assert generation.text == "Hello from the fake provider."
    assert (generation.tokens_in, generation.tokens_out, generation.finish_reason) == (3 + 6, 5, "stop")
    [request] = fake_providers.requests_to("/v1/messages")
    assert request.body["system"] == "You are terse."
    assert request.body["messages"] == [{"role": "user", "content": "Say hello to the test suite"}]
    assert request.body["max_tokens"] == 64
    assert "temperature" not in request.body  # API version 2026-10-21 refuses it
    assert request.credential == hashlib.sha256(KEY.encode()).hexdigest()


def test_an_openai_compatible_server_gets_max_tokens_and_never_a_key_from_the_environment(fake_providers, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    config = ProviderConfig(kind="openai-compatible", base_url=fake_providers.openai_base_url, name=f"test-compat-{next(_names)}")

    provider_for(config).chat(model="llama", request=HELLO)

    [request] = fake_providers.requests
    assert request.body["max_tokens"] == 64 and "max_completion_tokens" not in request.body
    assert request.credential != hashlib.sha256(b"sk-from-the-environment").hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_a_stop_string_ends_the_answer_with_stop(fake_providers, kind):
    fake_providers.reply("one two three END four five")
    request = GenerationInput(messages=(ChatMessage("user", "count"),), max_tokens=50, stop=("END",))

    generation = provider(fake_providers, kind).chat(model="m", request=request)

    assert (generation.text, generation.finish_reason, generation.tokens_out) == ("one two three ", "stop", 3)
    body = fake_providers.requests[0].body
    assert body.get("stop", body.get("stop_sequences")) == ["END"]


@pytest.mark.parametrize("kind", KINDS)
def test_running_into_max_tokens_ends_the_answer_with_length(fake_providers, kind):
    fake_providers.reply("one two three four five six")
    request = GenerationInput(messages=(ChatMessage("user", "count"),), max_tokens=4)

    generation = provider(fake_providers, kind).chat(model="m", request=request)

    assert (generation.text, generation.finish_reason, generation.tokens_out) == ("one two three four", "length", 4)


def test_invalid_requests_are_refused_before_any_call(fake_providers):
    only_system = GenerationInput(messages=(ChatMessage("system", "rules"),))
    with pytest.raises(InvalidInput, match="besides the system prompt"):
        provider(fake_providers, "anthropic").chat(model="m", request=only_system)
    with pytest.raises(InvalidInput, match="max_tokens"):
        provider(fake_providers).chat(model="m", request=GenerationInput(messages=HELLO.messages, max_tokens=0))
    assert fake_providers.requests == []


# --- streaming -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_joins_to_the_full_text_and_ends_with_the_reported_usage(fake_providers, kind):
    fake_providers.reply("Streaming works one piece at a time.")
    stream = provider(fake_providers, kind).chat_stream(model="m", request=HELLO)

    pieces = list(stream)

    assert len(pieces) == 7
    assert "".join(pieces) == "Streaming works one piece at a time."
    assert stream.result is not None
    assert stream.result.text == "".join(pieces)
    assert (stream.result.tokens_in, stream.result.tokens_out, stream.result.finish_reason) == (9, 7, "stop")
    body = fake_providers.requests[0].body
    assert body["stream"] is True
    if kind == "openai":
        assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_reports_length_when_cut_at_max_tokens(fake_providers, kind):
    fake_providers.reply("one two three four five six")
    stream = provider(fake_providers, kind).chat_stream(
        model="m", request=GenerationInput(messages=(ChatMessage("user", "count"),), max_tokens=2)
    )

    assert "".join(stream) == "one two"
    assert stream.result is not None and stream.result.finish_reason == "length"


def test_closing_a_stream_early_leaves_no_result_and_does_not_count_as_a_failure(fake_providers):
    chosen = provider(fake_providers, breaker_threshold=1)
    with chosen.chat_stream(model="m", request=HELLO) as stream:
        first = next(stream)

    assert first == "Hello"
    assert stream.result is None
    assert chosen.breaker.state == CircuitBreaker.CLOSED
    chosen.chat(model="m", request=HELLO)  # the pool still works after the early close


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_stream_raises_before_any_text(fake_providers, kind):
    fake_providers.status(400)
    with pytest.raises(ProviderRejected):
        provider(fake_providers, kind).chat_stream(model="m", request=HELLO)
    assert len(fake_providers.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_stream_raises_bad_output(fake_providers, kind):
    fake_providers.malformed()
    stream = provider(fake_providers, kind).chat_stream(model="m", request=HELLO)
    with pytest.raises(ProviderBadOutput, match="not valid JSON") as caught:
        list(stream)
    assert caught.value.retryable
    assert stream.result is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_that_breaks_off_mid_answer_is_unavailable_and_counts_as_a_failure(fake_providers, kind):
    fake_providers.cut()
    chosen = provider(fake_providers, kind)
    stream = chosen.chat_stream(model="m", request=HELLO)

    with pytest.raises(ProviderUnavailable, match="ended before the answer was finished"):
        list(stream)

    assert stream.result is None
    assert chosen.breaker.failures == 1


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_event_mid_stream_is_unavailable(fake_providers, kind):
    fake_providers.stream_error()
    chosen = provider(fake_providers, kind)
    stream = chosen.chat_stream(model="m", request=HELLO)

    with pytest.raises(ProviderUnavailable, match="Overloaded") as caught:
        list(stream)

    assert caught.value.retryable
    assert chosen.breaker.failures == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_that_stalls_mid_answer_times_out(fake_providers, kind):
    fake_providers.stall()
    stream = provider(fake_providers, kind, timeout=0.3).chat_stream(model="m", request=HELLO)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout):
        list(stream)

    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_that_breaks_off_is_retried(fake_providers, kind):
    fake_providers.cut(times=1)

    provider(fake_providers, kind).chat(model="m", request=HELLO)

    assert len(fake_providers.requests) == 2


# --- embeddings ----------------------------------------------------------------------------------
def test_embeddings_are_normalised_and_their_tokens_add_up_to_the_reported_usage(fake_providers):
    texts = ["a short one", "a much longer text with quite a few more words in it", "x"]

    result = provider(fake_providers).embed(model="text-embedding-test", texts=texts)

    assert len(result.value) == 3
    for text, embedding in zip(texts, result.value):
        assert embedding.vector.dtype == np.float32 and embedding.vector.shape == (8,)
        assert np.linalg.norm(embedding.vector) == pytest.approx(1.0, abs=1e-6)
        expected = fake_vector(text) / np.linalg.norm(fake_vector(text))
        np.testing.assert_allclose(embedding.vector, expected, rtol=1e-5)
    reported = 3 + 12 + 1  # the fake counts words
    assert result.tokens_in == reported and result.tokens_out == 0
    assert sum(embedding.tokens for embedding in result.value) == reported
    assert result.value[1].tokens > result.value[0].tokens > result.value[2].tokens  # in proportion to length
    [request] = fake_providers.requests_to("/v1/embeddings")
    assert request.body["input"] == texts and request.body["encoding_format"] == "float"


def test_anthropic_has_no_embeddings(fake_providers):
    with pytest.raises(ProviderUnsupported, match="does not compute embeddings"):
        provider(fake_providers, "anthropic").embed(model="m", texts=["hello"])
    assert fake_providers.requests == []


# --- transcription -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["openai", "openai-compatible"])
def test_transcribe_uploads_a_wav_of_the_samples_and_returns_the_transcript(fake_providers, kind):
    fake_providers.transcript("  I would like to check out now  ")
    samples = tone(1.5)

    result = provider(fake_providers, kind).transcribe(model="whisper-1", audio=AudioInput(samples=samples, language="en-US"))

    transcription = result.value
    assert transcription.text == "I would like to check out now"
    assert (transcription.language, transcription.duration, transcription.segments) == ("en", 1.5, [])
    assert (result.tokens_in, result.tokens_out) == (0, 0)  # priced by the audio minute
    [request] = fake_providers.requests_to("/v1/audio/transcriptions")
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert (request.body["model"], request.body["language"], request.body["response_format"]) == ("whisper-1", "en", "json")
    upload = request.body["file"]
    assert isinstance(upload, UploadedFile) and (upload.filename, upload.content_type) == ("audio.wav", "audio/wav")
    info = soundfile.info(io.BytesIO(upload.data))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == ("WAV", "PCM_16", 16_000, 1, samples.size)
    sent, _ = soundfile.read(io.BytesIO(upload.data), dtype="float32")
    np.testing.assert_allclose(sent, samples, atol=1 / 32_768)


def test_a_premium_transcript_claims_no_confidence(fake_providers):
    transcription = provider(fake_providers).transcribe(model="whisper-1", audio=AudioInput(samples=tone())).value

    assert transcription.avg_logprob is None and transcription.language_probability is None
    assert transcription.language is None  # none requested, and the plain JSON answer does not name it
    assert "language" not in fake_providers.requests[0].body
    assert transcription.text == DEFAULT_TRANSCRIPT


def test_silence_comes_back_as_an_empty_transcript_not_an_error(fake_providers):
    result = provider(fake_providers).transcribe(model="whisper-1", audio=AudioInput(samples=np.zeros(16_000, np.float32)))

    assert result.value.text == "" and result.value.duration == 1.0


def test_samples_beyond_full_scale_are_clipped_not_wrapped(fake_providers):
    provider(fake_providers).transcribe(model="whisper-1", audio=AudioInput(samples=tone(amplitude=1.5)))

    sent, _ = soundfile.read(io.BytesIO(fake_providers.requests[0].body["file"].data), dtype="float32")
    assert sent.max() == pytest.approx(1.0, abs=1e-4) and sent.min() == pytest.approx(-1.0, abs=1e-4)


def test_anthropic_has_no_transcription(fake_providers):
    with pytest.raises(ProviderUnsupported, match="does not transcribe audio") as caught:
        provider(fake_providers, "anthropic").transcribe(model="m", audio=AudioInput(samples=tone()))

    assert not caught.value.retryable
    assert fake_providers.requests == []


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (AudioInput(samples=np.zeros(0, np.float32)), "empty"),
        (AudioInput(samples=np.zeros(16_000, np.float64)), "float32"),
        (AudioInput(samples=tone(), language="english please"), "code such as 'en'"),
    ],
)
def test_unusable_audio_is_refused_before_any_call(fake_providers, audio, message):
    with pytest.raises(InvalidInput, match=message):
        provider(fake_providers).transcribe(model="whisper-1", audio=audio)
    assert fake_providers.requests == []


def test_a_failed_transcription_is_retried_and_mapped_like_any_call(fake_providers):
    fake_providers.status(500, times=1)
    assert provider(fake_providers).transcribe(model="whisper-1", audio=AudioInput(samples=tone())).value.text == DEFAULT_TRANSCRIPT
    assert len(fake_providers.requests) == 2  # the upload was sent again

    fake_providers.malformed(times=1)
    with pytest.raises(ProviderBadOutput, match="not valid JSON"):
        provider(fake_providers, max_retries=0).transcribe(model="whisper-1", audio=AudioInput(samples=tone()))


# --- retries and errors --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_rate_limits_are_retried_as_the_server_asks(fake_providers, kind):
    fake_providers.status(429, times=2)  # with retry-after-ms: 5
    started = time.monotonic()

    generation = provider(fake_providers, kind).chat(model="m", request=HELLO)

    assert generation.text == "Hello from the fake provider."
    assert len(fake_providers.requests) == 3
    assert time.monotonic() - started < 1.0  # the SDK waited 5 ms, not its own 0.5 s backoff


def test_a_rate_limit_that_outlasts_the_retries_is_reported_with_the_servers_hint(fake_providers):
    fake_providers.status(429, times=10)
    with pytest.raises(ProviderRateLimited) as caught:
        provider(fake_providers).chat(model="m", request=HELLO)
    assert (caught.value.status, caught.value.retry_after, caught.value.retryable) == (429, 0.005, True)
    assert len(fake_providers.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_server_errors_are_retried_with_backoff(fake_providers, kind):
    fake_providers.status(500, times=1)  # no retry-after: the SDK's own exponential backoff

    provider(fake_providers, kind).chat(model="m", request=HELLO)

    assert len(fake_providers.requests) == 2


def test_a_provider_that_stays_down_is_unavailable_after_the_retries(fake_providers):
    fake_providers.status(503, times=10, retry_after_ms=5)
    with pytest.raises(ProviderUnavailable) as caught:
        provider(fake_providers, "anthropic").chat(model="m", request=HELLO)
    assert (caught.value.status, caught.value.retryable, caught.value.code) == (503, True, "provider_unavailable")
    assert len(fake_providers.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_are_not_retried_and_never_show_the_key(fake_providers, kind, status):
    fake_providers.status(status, times=10)  # a 401 echoes the key it was given

    with pytest.raises(ProviderRejected) as caught:
        provider(fake_providers, kind).chat(model="m", request=HELLO)

    assert len(fake_providers.requests) == 1
    error = caught.value
    assert (error.status, error.retryable) == (status, False)
    everything = str(error) + repr(error) + "".join(traceback.format_exception(error))
    assert KEY not in everything
    if status == 401:
        assert "Incorrect API key provided: [redacted]" in str(error)


def test_the_config_never_shows_the_key():
    config = ProviderConfig(kind="openai", api_key=KEY)
    assert KEY not in repr(config)
    assert config.name == "openai"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "mistral"}, "Unknown provider kind"),
        ({"kind": "openai"}, "needs an api_key"),
        ({"kind": "openai-compatible"}, "needs a base_url"),
        ({"kind": "openai", "api_key": KEY, "timeout": 0}, "timeout"),
        ({"kind": "anthropic", "api_key": KEY, "breaker_threshold": 0}, "breaker_threshold"),
    ],
)
def test_a_config_that_cannot_work_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ProviderConfig(**settings)


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_response_is_bad_output(fake_providers, kind):
    fake_providers.malformed()
    with pytest.raises(ProviderBadOutput, match="not valid JSON") as caught:
        provider(fake_providers, kind).chat(model="m", request=HELLO)
    assert caught.value.retryable
    assert len(fake_providers.requests) == 1  # the SDK retries statuses, not bodies


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_provider_times_out_after_its_retries(fake_providers, kind):
    fake_providers.slow(2.0)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as caught:
        provider(fake_providers, kind, timeout=0.25).chat(model="m", request=HELLO)

    assert caught.value.retryable
    assert len(fake_providers.requests) == 3  # timeouts are retried too
    assert time.monotonic() - started < 4.0  # 3 × 0.25 s plus the SDK's backoff (≈ 0.4 + 0.8 s)


def test_a_per_call_timeout_overrides_the_configured_one(fake_providers):
    fake_providers.slow(2.0)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        provider(fake_providers, max_retries=0).chat(model="m", request=HELLO, timeout=0.2)
    assert time.monotonic() - started < 1.5


def test_a_hanging_provider_times_out_and_its_server_thread_ends_on_close():
    server = FakeProviderServer().start()
    try:
        server.hang()
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            provider(server, "anthropic", timeout=0.3, max_retries=0).chat(model="m", request=HELLO)
        assert time.monotonic() - started < 2.0
        assert server.live_handlers == 1  # still hanging
    finally:
        started = time.monotonic()
        server.close()
    assert time.monotonic() - started < JOIN_LIMIT < HANG_LIMIT
    assert server.live_handlers == 0


def test_requests_reuse_the_pooled_connection(fake_providers):
    config = ProviderConfig(kind="openai", api_key=KEY, base_url=fake_providers.openai_base_url, name=f"test-pool-{next(_names)}")

    provider_for(config).chat(model="m", request=HELLO)
    provider_for(config).chat(model="m", request=HELLO)

    assert provider_for(config).client is provider_for(config).client
    first, second = fake_providers.requests
    assert first.connection == second.connection
    other_key = ProviderConfig(kind="openai", api_key=KEY + "2", base_url=fake_providers.openai_base_url)
    assert provider_for(other_key).client is not provider_for(config).client


# --- the circuit breaker against the server ------------------------------------------------------
def breaking_provider(server: FakeProviderServer, clock: Clock, kind: str = "openai") -> Provider:
    """A provider that opens after 2 failed calls and retries nothing, so each call is one request."""
    base_url = server.anthropic_base_url if kind == "anthropic" else server.openai_base_url
    config = ProviderConfig(kind=kind, api_key=KEY, base_url=base_url, max_retries=0, timeout=5.0, name=f"test-breaker-{next(_names)}")
    breaker = CircuitBreaker(name=config.name, threshold=2, cooldown=30.0, clock=clock)
    cls = AnthropicProvider if kind == "anthropic" else OpenAIProvider
    return cls(config=config, breaker=breaker)


@pytest.mark.parametrize("kind", KINDS)
def test_the_breaker_opens_refuses_then_lets_one_probe_through_and_closes(fake_providers, kind):
    clock = Clock()
    chosen = breaking_provider(fake_providers, clock, kind)
    fake_providers.status(500, times=2)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            chosen.chat(model="m", request=HELLO)
    assert chosen.breaker.state == CircuitBreaker.OPEN

    with pytest.raises(CircuitOpen, match=r"next attempt is allowed in 30\.0 s") as refused:
        chosen.chat(model="m", request=HELLO)
    with pytest.raises(CircuitOpen):
        chosen.chat_stream(model="m", request=HELLO)
    assert (refused.value.retry_after, refused.value.retryable) == (30.0, False)
    assert len(fake_providers.requests) == 2  # refused calls never reached the server

    clock.now += 30.0
    assert chosen.breaker.state == CircuitBreaker.HALF_OPEN
    assert chosen.chat(model="m", request=HELLO).text == "Hello from the fake provider."
    assert chosen.breaker.state == CircuitBreaker.CLOSED
    assert len(fake_providers.requests) == 3


def test_half_open_lets_exactly_one_probe_through_at_a_time(fake_providers):
    clock = Clock()
    chosen = breaking_provider(fake_providers, clock)
    fake_providers.status(503, times=2)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            chosen.chat(model="m", request=HELLO)
    clock.now += 30.0
    fake_providers.slow(0.5)
    outcomes: list[object] = []
    probe = threading.Thread(target=lambda: outcomes.append(chosen.chat(model="m", request=HELLO)))
    probe.start()
    deadline = time.monotonic() + 5
    while len(fake_providers.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)

    with pytest.raises(CircuitOpen, match="probe call is in flight"):
        chosen.chat(model="m", request=HELLO)
    probe.join(timeout=5)

    assert len(outcomes) == 1 and not probe.is_alive()
    assert len(fake_providers.requests) == 3
    assert chosen.breaker.state == CircuitBreaker.CLOSED


def test_a_failed_probe_opens_the_circuit_again(fake_providers):
    clock = Clock()
    chosen = breaking_provider(fake_providers, clock)
    fake_providers.status(500, times=3)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            chosen.chat(model="m", request=HELLO)
    clock.now += 30.0

    with pytest.raises(ProviderUnavailable):
        chosen.chat(model="m", request=HELLO)

    assert chosen.breaker.state == CircuitBreaker.OPEN
    with pytest.raises(CircuitOpen):
        chosen.chat(model="m", request=HELLO)
    assert len(fake_providers.requests) == 3


@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_do_not_trip_the_breaker(fake_providers, status):
    chosen = breaking_provider(fake_providers, Clock())
    fake_providers.status(status, times=5)
    for _ in range(5):
        with pytest.raises(ProviderRejected):
            chosen.chat(model="m", request=HELLO)
    assert chosen.breaker.state == CircuitBreaker.CLOSED
    assert len(fake_providers.requests) == 5


def test_timeouts_trip_the_breaker(fake_providers):
    chosen = breaking_provider(fake_providers, Clock())
    fake_providers.hang()
    for _ in range(2):
        with pytest.raises(ProviderTimeout):
            chosen.chat(model="m", request=HELLO, timeout=0.2)
    assert chosen.breaker.state == CircuitBreaker.OPEN
