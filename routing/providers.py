"""Premium providers (OpenAI, Anthropic, any OpenAI-compatible server) behind one interface (chat, streamed chat,
embeddings, transcription), each guarded by a circuit breaker (inference.breaker). The tasks asked of a chat model
through a prompt are routing.prompts."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import httpx2
import numpy as np
import soundfile

from inference.audio import SAMPLE_RATE
from inference.errors import InferenceError, InvalidInput
from inference.payloads import (
    AudioInput, ChatMessage, Embedding, Generation, GenerationInput, GenerationStream, Transcription,
)
from inference.speech import check_audio
from inference.breaker import Call, CircuitBreaker, breaker_for

logger = logging.getLogger("modelgate.routing")

T = TypeVar("T")

OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com"
ROLES = ("system", "user", "assistant")
CLIENT_CACHE_SIZE = 64  # distinct (provider, key, settings) clients kept; each holds a connection pool
_SPOKEN_LANGUAGE = re.compile(r"[a-z]{2,3}")


class ProviderKind:
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai-compatible"  # vLLM, TGI, Ollama, another Modelgate…

    ALL = (OPENAI, ANTHROPIC, OPENAI_COMPATIBLE)


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """How to reach one provider. `base_url` is what the SDK expects: OpenAI-style URLs end in /v1
    ("http://vllm:8000/v1"), Anthropic's do not ("https://api.anthropic.com"). `name` identifies the
    circuit breaker; by default the kind, plus the base URL when one is given."""

    kind: str
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    timeout: float = 30.0  # seconds, per HTTP attempt
    max_retries: int = 2  # retries by the SDK on 408/409/429/5xx, timeouts and connection errors
    breaker_threshold: int = 5  # consecutive failed calls that open the circuit
    breaker_cooldown: float = 30.0  # seconds the circuit stays open before one probe call
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ProviderKind.ALL:
            raise ValueError(f"Unknown provider kind {self.kind!r}; expected one of {', '.join(ProviderKind.ALL)}.")
        if self.kind == ProviderKind.OPENAI_COMPATIBLE and not self.base_url:
            raise ValueError("An openai-compatible provider needs a base_url.")
        if self.kind != ProviderKind.OPENAI_COMPATIBLE and not self.api_key:
            raise ValueError(f"The {self.kind} provider needs an api_key.")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not 0 < self.timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout!r}.")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, not {self.max_retries!r}.")
        if isinstance(self.breaker_threshold, bool) or not isinstance(self.breaker_threshold, int) or self.breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be a positive integer, not {self.breaker_threshold!r}.")
        if not isinstance(self.breaker_cooldown, (int, float)) or not 0 <= self.breaker_cooldown < math.inf:
            raise ValueError(f"breaker_cooldown must be a non-negative number of seconds, not {self.breaker_cooldown!r}.")
        if not self.name:
            object.__setattr__(self, "name", f"{self.kind}:{self.base_url}" if self.base_url else self.kind)


@dataclass(frozen=True)
class ProviderResult(Generic[T]):
    """A result and the tokens the provider billed for it."""

    value: T
    tokens_in: int
    tokens_out: int


# --- errors ------------------------------------------------------------------------------------
class ProviderError(InferenceError):
    """A premium call failed. `retryable` tells whether the same call may succeed later (and whether
    it counts against the provider's circuit breaker); `tokens_in`/`tokens_out` are what the provider
    billed anyway (an answer that could not be parsed still cost its tokens)."""

    code = "provider_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ):
        super().__init__(message)
        self.provider = provider
        self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    retryable = True


class ProviderRateLimited(ProviderError):
    """HTTP 429 after the SDK's own retries. `retry_after` (seconds) is the provider's hint, when it gave one."""

    code = "provider_rate_limited"
    retryable = True

    def __init__(self, message: str, *, provider: str, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, provider=provider, **kwargs)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """5xx, a refused or dropped connection, or a stream that ended before the answer did."""

    code = "provider_unavailable"
    retryable = True


class ProviderRejected(ProviderError):
    """The provider refused the request itself (400, 401, 403, 404, 422…): retrying cannot help."""

    code = "provider_rejected"


class ProviderBadOutput(ProviderError):
    """The response could not be used: malformed JSON from the server (retryable), or prompted output
    that does not parse or validate (not retryable: the model answered, just not usably)."""

    code = "provider_bad_output"


class ProviderUnsupported(ProviderError):
    code = "provider_unsupported"


# --- streaming ---------------------------------------------------------------------------------
class ProviderStream(GenerationStream):
    """A `GenerationStream` of a provider's pieces: `result` carries the usage the provider reported.
    Closing also ends the HTTP call; errors during iteration are `ProviderError`s. One consumer at a
    time; usable as a context manager."""

    def __init__(self, pieces: Generator[str, None, Generation], *, on_close: Callable[[], None]):
        super().__init__(pieces)
        self._on_close = on_close

    def close(self) -> None:
        super().close()
        self._on_close()

    def __enter__(self) -> ProviderStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- providers ---------------------------------------------------------------------------------
class Provider(ABC):
    """One premium provider. Every method is a single billed call: the SDK retries it (backoff,
    `retry-after`), the breaker guards it, and SDK errors come out as `ProviderError`s."""

    supports_embeddings: ClassVar[bool] = False
    supports_transcription: ClassVar[bool] = False

    def __init__(self, *, config: ProviderConfig, client: Any = None, breaker: CircuitBreaker | None = None):
        self.config = config
        self.client = client if client is not None else _client_for(config)
        self.breaker = breaker or breaker_for(config.name, threshold=config.breaker_threshold, cooldown=config.breaker_cooldown)

    @property
    def name(self) -> str:
        return self.config.name

    # --- to implement ------------------------------------------------------------------------
    @abstractmethod
    def _params(self, request: GenerationInput) -> dict[str, Any]:
        """The SDK arguments for `request` (messages, limits, stop strings); raises InvalidInput."""

    @abstractmethod
    def _complete(self, *, model: str, params: dict[str, Any], request: GenerationInput, timeout: float) -> Generation:
        """One non-streamed chat call."""

    @abstractmethod
    def _open_stream(self, *, model: str, params: dict[str, Any], timeout: float) -> Any:
        """Start a streamed chat call; returns the SDK's stream (HTTP errors are raised here)."""

    @abstractmethod
    def _read_stream(self, opened: Any, request: GenerationInput) -> Generator[str, None, Generation]:
        """The text pieces of an opened stream, then the Generation with the reported usage."""

    def _embed(self, *, model: str, texts: list[str], timeout: float) -> tuple[list[np.ndarray], int | None]:
        """Vectors in input order and the reported prompt tokens (None when not reported)."""
        raise ProviderUnsupported(f"{self.name} does not compute embeddings.", provider=self.name)

    def _transcribe(self, *, model: str, wav: bytes, language: str | None, timeout: float) -> str:
        """The transcript of a WAV file."""
        raise ProviderUnsupported(f"{self.name} does not transcribe audio.", provider=self.name)

    # --- the contract ------------------------------------------------------------------------
    def chat(self, *, model: str, request: GenerationInput, timeout: float | None = None) -> Generation:
        _check_generation_input(request)
        params = self._params(request)
        seconds = self._timeout(timeout)
        return self._call(lambda: self._complete(model=model, params=params, request=request, timeout=seconds))

    def chat_stream(self, *, model: str, request: GenerationInput, timeout: float | None = None) -> ProviderStream:
        """Start a streamed answer. HTTP errors (after retries) are raised here, before any text."""
        _check_generation_input(request)
        params = self._params(request)
        seconds = self._timeout(timeout)
        outcome = Call(self.breaker)
        try:
            opened = self._open_stream(model=model, params=params, timeout=seconds)
        except Exception as exc:
            raise self._failed(exc, outcome)
        return ProviderStream(self._stream_pieces(opened, request, outcome), on_close=outcome.succeeded)

    def embed(self, *, model: str, texts: list[str], timeout: float | None = None) -> ProviderResult[list[Embedding]]:
        """L2-normalised float32 vectors, one per text, in order.

        Providers report one token count for the whole request, so it is split across the texts in
        proportion to their length in characters (largest remainders first): the items' tokens always
        add up to exactly the reported usage. `tokens_out` is 0.
        """
        if not self.supports_embeddings:
            raise ProviderUnsupported(f"{self.name} ({self.config.kind}) does not compute embeddings.", provider=self.name)
        if not isinstance(texts, list) or not texts:
            raise InvalidInput("texts must be a non-empty list of strings.")
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"texts[{index}] must be a non-empty string.")
        seconds = self._timeout(timeout)

        def run() -> tuple[list[np.ndarray], int]:
            vectors, reported = self._embed(model=model, texts=texts, timeout=seconds)
            if len(vectors) != len(texts):
                raise ProviderBadOutput(
                    f"{self.name}: {len(vectors)} embeddings came back for {len(texts)} texts.", provider=self.name, retryable=True
                )
            normalised = [_normalised(vector, provider=self.name) for vector in vectors]
            if len({vector.shape[0] for vector in normalised}) != 1:
                raise ProviderBadOutput(f"{self.name}: the embeddings have different dimensions.", provider=self.name, retryable=True)
            total = reported if reported is not None else _estimated_tokens(texts, provider=self.name)
            return normalised, total

        vectors, total = self._call(run)
        shares = _split_tokens(total, [len(text) for text in texts])
        embeddings = [Embedding(vector=vector, tokens=share) for vector, share in zip(vectors, shares)]
        return ProviderResult(value=embeddings, tokens_in=total, tokens_out=0)

    def transcribe(self, *, model: str, audio: AudioInput, timeout: float | None = None) -> ProviderResult[Transcription]:
        """A transcript of `audio` (mono float32 at 16 kHz), sent as a 16-bit WAV built in memory, in the
        language the request named (detected by the provider otherwise).

        Transcription APIs return text without a log-probability, segments or (in their plain JSON)
        the language they detected: `avg_logprob` is None (no confidence claimed), `segments` is empty,
        and `language` is the requested one or None. An empty transcript is returned as it came: whether
        it means silence is the router's judgement. Audio is priced by the minute: the usage is 0 tokens.
        """
        if not self.supports_transcription:
            raise ProviderUnsupported(f"{self.name} ({self.config.kind}) does not transcribe audio.", provider=self.name)
        item = check_audio(audio, max_seconds=math.inf)  # the request path enforces MODELGATE_AUDIO_MAX_SECONDS
        language = _spoken_language(item.language) if item.language else None
        wav = _wav(item.samples)
        seconds = self._timeout(timeout)
        text = self._call(lambda: self._transcribe(model=model, wav=wav, language=language, timeout=seconds))
        transcription = Transcription(
            text=text.strip(),
            language=language,
            language_probability=None,
            duration=item.samples.size / SAMPLE_RATE,
            avg_logprob=None,
            segments=[],
        )
        return ProviderResult(value=transcription, tokens_in=0, tokens_out=0)

    # --- shared machinery --------------------------------------------------------------------
    def _timeout(self, timeout: float | None) -> float:
        seconds = self.config.timeout if timeout is None else timeout
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
            raise InvalidInput(f"timeout must be a positive number of seconds, not {timeout!r}.")
        return float(seconds)

    def _call(self, run: Callable[[], T]) -> T:
        outcome = Call(self.breaker)
        try:
            value = run()
        except Exception as exc:
            raise self._failed(exc, outcome)
        outcome.succeeded()
        return value

    def _failed(self, exc: Exception, outcome: Call) -> Exception:
        error = _provider_error(exc, provider=self.name, secret=self.config.api_key)
        if isinstance(error, ProviderError):
            outcome.failed(retryable=error.retryable)
        return error

    def _stream_pieces(self, opened: Any, request: GenerationInput, outcome: Call) -> Generator[str, None, Generation]:
        pieces = self._read_stream(opened, request)
        try:
            result = yield from pieces
        except GeneratorExit:
            outcome.succeeded()  # the caller left; the provider was answering
            raise
        except Exception as exc:
            raise self._failed(exc, outcome)
        finally:
            pieces.close()
            opened.close()  # releases the connection even when the stream was not read to its end
        outcome.succeeded()
        return result


class OpenAIProvider(Provider):
    """The OpenAI API, or any server speaking it (vLLM, TGI, Ollama, another Modelgate) at `base_url`."""

    supports_embeddings = True
    supports_transcription = True

    def _params(self, request: GenerationInput) -> dict[str, Any]:
        params: dict[str, Any] = {
            "messages": [{"role": message.role, "content": message.content} for message in request.messages],
            "temperature": float(request.temperature),
        }
        # OpenAI's own reasoning models refuse `max_tokens`; many compatible servers only know it.
        limit = "max_completion_tokens" if self.config.kind == ProviderKind.OPENAI else "max_tokens"
        params[limit] = request.max_tokens
        if request.stop:
            params["stop"] = list(request.stop)
        return params

    def _complete(self, *, model: str, params: dict[str, Any], request: GenerationInput, timeout: float) -> Generation:
        # The SDK's own request path (retries, auth, errors), without create()'s two costliest steps: its
        # TypedDict transform of params that are plain JSON already (about 1 ms a call) and a model
        # object built from an answer of which four fields are read. The wire request is the same.
        response = self.client.post(
            "/chat/completions", body={"model": model, **params}, cast_to=httpx2.Response, options={"timeout": timeout}
        )
        answer = response.json()
        with _reading(self.name):
            choice = answer["choices"][0]
            message = choice["message"]
            if message.get("refusal"):
                raise ProviderBadOutput(f"{self.name}: the model refused to answer.", provider=self.name)
            text = _text(message.get("content"))
            finish = _finish_reason(choice.get("finish_reason") or "stop", provider=self.name)
            usage = answer.get("usage")
            return Generation(
                text=text,
                tokens_in=_tokens(None if usage is None else usage.get("prompt_tokens"), request.prompt, provider=self.name),
                tokens_out=_tokens(None if usage is None else usage.get("completion_tokens"), text, provider=self.name),
                finish_reason=finish,
            )

    def _open_stream(self, *, model: str, params: dict[str, Any], timeout: float) -> Any:
        return self.client.chat.completions.create(
            model=model, stream=True, stream_options={"include_usage": True}, timeout=timeout, **params
        )

    def _read_stream(self, opened: Any, request: GenerationInput) -> Generator[str, None, Generation]:
        parts: list[str] = []
        finish: str | None = None
        usage: Any = None
        for chunk in opened:
            with _reading(self.name):
                if chunk.usage is not None:
                    usage = chunk.usage  # the last chunk, with include_usage: no choices, only usage
                piece = ""
                for choice in chunk.choices or ():
                    if choice.index != 0:
                        continue
                    piece = _text(choice.delta.content if choice.delta is not None else None)
                    finish = choice.finish_reason or finish
            if piece:
                parts.append(piece)
                yield piece
        if finish is None:
            raise ProviderUnavailable(f"{self.name}: the stream ended before the answer was finished.", provider=self.name)
        text = "".join(parts)
        with _reading(self.name):
            return Generation(
                text=text,
                tokens_in=_tokens(None if usage is None else usage.prompt_tokens, request.prompt, provider=self.name),
                tokens_out=_tokens(None if usage is None else usage.completion_tokens, text, provider=self.name),
                finish_reason=_finish_reason(finish, provider=self.name),
            )

    def _embed(self, *, model: str, texts: list[str], timeout: float) -> tuple[list[np.ndarray], int | None]:
        # Floats, not the SDK's default base64: not every compatible server (TEI, Ollama) speaks base64.
        response = self.client.embeddings.create(model=model, input=texts, encoding_format="float", timeout=timeout)
        with _reading(self.name):
            items = sorted(response.data, key=lambda item: item.index)
            if [item.index for item in items] != list(range(len(items))):
                raise ValueError("the embeddings' indexes are not 0..n-1")
            vectors = [np.asarray(item.embedding, dtype=np.float64) for item in items]
            usage = response.usage
            reported = None if usage is None or usage.prompt_tokens is None else _count(usage.prompt_tokens)
            return vectors, reported

    def _transcribe(self, *, model: str, wav: bytes, language: str | None, timeout: float) -> str:
        # Plain JSON: the one format every transcription model (whisper-1, gpt-4o-transcribe) and compatible server speaks.
        response = self.client.audio.transcriptions.create(
            model=model,
            file=("audio.wav", wav, "audio/wav"),
            response_format="json",
            timeout=timeout,
            **({"language": language} if language else {}),
        )
        with _reading(self.name):
            return _text(response.text)


class AnthropicProvider(Provider):
    """Anthropic's Messages API. System messages go in `system`; there are no embeddings and no transcription."""

    def _params(self, request: GenerationInput) -> dict[str, Any]:
        system = "\n\n".join(message.content for message in request.messages if message.role == "system")
        messages = [{"role": message.role, "content": message.content} for message in request.messages if message.role != "system"]
        if not messages:
            raise InvalidInput("Anthropic needs at least one user or assistant message besides the system prompt.")
        # No temperature: API version 2026-10-21, the one this SDK speaks, refuses sampling parameters with a 400.
        params: dict[str, Any] = {"messages": messages, "max_tokens": request.max_tokens}
        if system:
            params["system"] = system
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        return params

    def _complete(self, *, model: str, params: dict[str, Any], request: GenerationInput, timeout: float) -> Generation:
        message = self.client.messages.create(model=model, timeout=timeout, **params)
        with _reading(self.name):
            text = "".join(_text(block.text) for block in message.content if block.type == "text")
            finish = _finish_reason(message.stop_reason or "end_turn", provider=self.name)
            return Generation(
                text=text,
                tokens_in=_anthropic_input_tokens(message.usage),
                tokens_out=_count(message.usage.output_tokens),
                finish_reason=finish,
            )

    def _open_stream(self, *, model: str, params: dict[str, Any], timeout: float) -> Any:
        return self.client.messages.create(model=model, stream=True, timeout=timeout, **params)

    def _read_stream(self, opened: Any, request: GenerationInput) -> Generator[str, None, Generation]:
        parts: list[str] = []
        finish: str | None = None
        tokens_in: int | None = None
        tokens_out: int | None = None
        for event in opened:
            piece = ""
            with _reading(self.name):
                if event.type == "message_start":
                    tokens_in = _anthropic_input_tokens(event.message.usage)
                    tokens_out = _count(event.message.usage.output_tokens)
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    piece = _text(event.delta.text)
                elif event.type == "message_delta":
                    finish = event.delta.stop_reason or finish
                    tokens_out = _count(event.usage.output_tokens)  # cumulative: the last one is the total
                    if event.usage.input_tokens is not None:
                        tokens_in = _anthropic_input_tokens(event.usage)
            if piece:
                parts.append(piece)
                yield piece
        if finish is None:
            raise ProviderUnavailable(f"{self.name}: the stream ended before the answer was finished.", provider=self.name)
        text = "".join(parts)
        with _reading(self.name):
            return Generation(
                text=text,
                tokens_in=_tokens(tokens_in, request.prompt, provider=self.name),
                tokens_out=_tokens(tokens_out, text, provider=self.name),
                finish_reason=_finish_reason(finish, provider=self.name),
            )


# --- clients -----------------------------------------------------------------------------------
_clients: OrderedDict[tuple[str, str, str, float, int], Any] = OrderedDict()
_clients_lock = threading.Lock()


def provider_for(config: ProviderConfig) -> Provider:
    """The provider for `config`: a cached SDK client (its connection pool is shared by every
    request with the same settings) and the process-wide breaker named `config.name`."""
    if config.kind == ProviderKind.ANTHROPIC:
        return AnthropicProvider(config=config)
    return OpenAIProvider(config=config)


def _client_for(config: ProviderConfig) -> Any:
    # The key holds a digest of the API key, not the key: cache keys end up in debuggers and dumps.
    fingerprint = hashlib.sha256(config.api_key.encode()).hexdigest() if config.api_key else ""
    key = (config.kind, config.base_url or "", fingerprint, float(config.timeout), config.max_retries)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            _clients.move_to_end(key)
            return client
        client = _clients[key] = _new_client(config)
        if len(_clients) > CLIENT_CACHE_SIZE:
            _clients.popitem(last=False)  # dropped, not closed: another thread may still be using it
        return client


def _new_client(config: ProviderConfig) -> Any:
    # The SDKs load with the first client (~70 MB and over a second of imports): a process that never
    # calls a provider (the model server, the supervisor) never pays for them. Web workers import them
    # in the background at start (config.gunicorn_conf).
    import anthropic
    import openai

    # Explicit base URLs and keys: the SDKs would otherwise fall back to OPENAI_* / ANTHROPIC_*
    # environment variables, and an OpenAI key must never be sent to some compatible server.
    if config.kind == ProviderKind.ANTHROPIC:
        return anthropic.Anthropic(
            api_key=config.api_key, base_url=config.base_url or ANTHROPIC_URL, timeout=config.timeout, max_retries=config.max_retries
        )
    return openai.OpenAI(
        api_key=config.api_key or "unused",  # servers without auth ignore it; the SDK insists on one
        base_url=config.base_url or OPENAI_URL,
        timeout=config.timeout,
        max_retries=config.max_retries,
    )


# --- reading responses -------------------------------------------------------------------------
_LENGTH_REASONS = {"length", "max_tokens", "model_context_window_exceeded"}
_WITHHELD_REASONS = {"content_filter", "refusal"}
_BEARER = re.compile(r"(?i)bearer\s+\S+")


@contextmanager
def _reading(provider: str) -> Iterator[None]:
    """The SDKs do not validate responses: a field that is missing or of the wrong type shows up as
    one of these errors when read, and means the server sent something we cannot use."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        raise ProviderBadOutput(
            f"{provider}: the response does not have the expected shape ({exc}).", provider=provider, retryable=True
        ) from exc


def _finish_reason(raw: str, *, provider: str) -> str:
    if raw in _LENGTH_REASONS:
        return "length"
    if raw in _WITHHELD_REASONS:
        raise ProviderBadOutput(f"{provider}: the provider withheld the answer ({raw}).", provider=provider)
    return "stop"  # stop, end_turn, stop_sequence, and reasons of features we never ask for


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"token count {value!r} is not a non-negative integer")
    return value


def _tokens(reported: Any, text: str, *, provider: str) -> int:
    """The reported token count; an estimate (4 characters a token) when a compatible server reports none."""
    if reported is None:
        logger.warning("provider reported no usage; estimating tokens", extra={"provider": provider})
        return math.ceil(len(text) / 4)
    return _count(reported)


def _estimated_tokens(texts: list[str], *, provider: str) -> int:
    return _tokens(None, "".join(texts), provider=provider)


def _anthropic_input_tokens(usage: Any) -> int:
    # Cache reads and writes are prompt tokens too (zero unless caching is asked for).
    return _count(usage.input_tokens) + _count(usage.cache_creation_input_tokens or 0) + _count(usage.cache_read_input_tokens or 0)


def _spoken_language(value: str) -> str:
    """The ISO 639-1 code transcription APIs take: 'en-US', 'EN' and 'en_GB' all mean 'en'. Not checked
    against inference.languages: speech models know languages translation does not (Latin, Hawaiian)."""
    code = value.strip().lower().replace("_", "-").split("-")[0]
    if not _SPOKEN_LANGUAGE.fullmatch(code):
        raise InvalidInput(f"The language must be a code such as 'en' or 'fr', not {value!r}.")
    return code


def _wav(samples: np.ndarray) -> bytes:
    """16-bit PCM, mono, 16 kHz: half the bytes of float32, so ten minutes stay under upload limits (25 MB at OpenAI)."""
    buffer = io.BytesIO()
    # Clipped first: libsndfile wraps samples beyond ±1 around instead of saturating them.
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _normalised(vector: np.ndarray, *, provider: str) -> np.ndarray:
    if vector.ndim != 1 or vector.size == 0 or not np.all(np.isfinite(vector)):
        raise ProviderBadOutput(f"{provider}: an embedding is empty or not finite.", provider=provider, retryable=True)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ProviderBadOutput(f"{provider}: an embedding is all zeros.", provider=provider, retryable=True)
    return (vector / norm).astype(np.float32)


def _split_tokens(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`, largest remainders first, summing exactly to `total`."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    exact = [total * weight / weight_sum for weight in weights]
    shares = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for index in by_remainder[: total - sum(shares)]:
        shares[index] += 1
    return shares


# --- errors from the SDKs ----------------------------------------------------------------------
def _provider_error(exc: Exception, *, provider: str, secret: str | None) -> Exception:
    """The ProviderError for an SDK (or HTTP, or JSON) error; anything else is returned unchanged (a bug of ours).

    Messages never contain the API key: some servers echo it back in their error text. When they did,
    the SDK's exception is not chained either, so a logged traceback cannot show it.
    """
    import anthropic  # loaded already: only an SDK call raises what is mapped here
    import openai

    if isinstance(exc, ProviderError):
        return exc
    raw = _server_message(exc)
    detail = _scrub(raw, secret)
    error: ProviderError
    if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
        error = ProviderTimeout(f"{provider}: no answer within the timeout.", provider=provider)
    elif isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)):
        error = ProviderUnavailable(f"{provider}: the connection failed or dropped: {detail}", provider=provider)
    elif isinstance(exc, (openai.APIResponseValidationError, anthropic.APIResponseValidationError)):
        error = ProviderBadOutput(f"{provider}: the response is not what the API defines: {detail}", provider=provider, retryable=True)
    elif isinstance(exc, (openai.APIStatusError, anthropic.APIStatusError)):
        error = _status_error(exc, detail, provider=provider)
    elif isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        error = ProviderBadOutput(f"{provider}: the response is not valid JSON ({exc}).", provider=provider, retryable=True)
    elif isinstance(exc, (openai.APIError, anthropic.APIError)):
        error = ProviderUnavailable(f"{provider}: the provider reported an error: {detail}", provider=provider)
    elif isinstance(exc, (openai.OpenAIError, anthropic.AnthropicError)):
        error = ProviderRejected(f"{provider}: {detail}", provider=provider)
    else:
        return exc
    error.__cause__ = exc if detail == raw else None
    error.__suppress_context__ = True
    return error


def _status_error(exc: Any, detail: str, *, provider: str) -> ProviderError:
    """`exc`: an openai or anthropic APIStatusError."""
    status = exc.status_code
    if status == 429 or (status < 400 and _error_type(exc) == "rate_limit_error"):
        return ProviderRateLimited(
            f"{provider}: rate limited (HTTP 429): {detail}", provider=provider, status=429, retry_after=_retry_after(exc)
        )
    if status == 408:
        return ProviderTimeout(f"{provider}: the provider timed out (HTTP 408): {detail}", provider=provider, status=status)
    if status >= 500 or status == 409:
        return ProviderUnavailable(f"{provider}: the provider failed (HTTP {status}): {detail}", provider=provider, status=status)
    if status < 400:
        # An error event in the middle of a stream that had started with 200 (e.g. overloaded).
        return ProviderUnavailable(f"{provider}: the stream broke off with an error: {detail}", provider=provider)
    hint = " Check the provider's API key." if status in (401, 403) else ""
    return ProviderRejected(f"{provider}: the request was refused (HTTP {status}): {detail}{hint}", provider=provider, status=status)


def _server_message(exc: Exception) -> str:
    """The provider's own error message when it sent one, else the exception's text; at most 300 characters."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
    text = message or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _error_type(exc: Exception) -> str | None:
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    return inner.get("type") if isinstance(inner, dict) else None


def _retry_after(exc: Any) -> float | None:
    """`exc`: an openai or anthropic APIStatusError."""
    headers = exc.response.headers
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers[header]) / scale
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return _BEARER.sub("Bearer [redacted]", text)


def _check_generation_input(request: GenerationInput) -> None:
    if not isinstance(request, GenerationInput):
        raise InvalidInput(f"Expected a GenerationInput, got {type(request).__name__}.")
    if not request.messages:
        raise InvalidInput("messages must not be empty.")
    for index, message in enumerate(request.messages):
        if not isinstance(message, ChatMessage) or message.role not in ROLES:
            raise InvalidInput(f"messages[{index}] must be a chat message with a role among {', '.join(ROLES)}.")
        if not isinstance(message.content, str) or not message.content.strip():
            raise InvalidInput(f"messages[{index}].content must not be empty.")
    if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) or request.max_tokens < 1:
        raise InvalidInput(f"max_tokens must be a positive integer, not {request.max_tokens!r}.")
    temperature = request.temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise InvalidInput(f"temperature must be a non-negative number, not {temperature!r}.")
    if not all(isinstance(stop, str) and stop for stop in request.stop):
        raise InvalidInput("stop must be a list of non-empty strings.")
