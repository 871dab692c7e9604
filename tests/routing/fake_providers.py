"""A real HTTP server on 127.0.0.1 speaking the OpenAI and Anthropic endpoints the official SDKs call.

One server answers both APIs, so a test points the SDKs at it with
    OpenAI:    base_url = server.openai_base_url     (…/v1; the SDK appends /chat/completions, /embeddings)
    Anthropic: base_url = server.anthropic_base_url  (the SDK appends /v1/messages)
Endpoints: POST /v1/chat/completions (JSON, or SSE `data: {...}` chunks ending with `data: [DONE]`, a
usage chunk when `stream_options.include_usage`), POST /v1/embeddings (float or base64), POST
/v1/audio/transcriptions (a multipart upload of an audio file the server decodes; `json` or `text`
answers), POST /v1/messages (JSON, or SSE with message_start, content_block_start/delta/stop,
message_delta, message_stop). Usage is deterministic: prompt tokens are the whitespace-separated words
of the messages (system included), completion tokens the words of the reply; a reply is cut at
`max_tokens` words ("length" / "max_tokens") or before the first stop string.

What the model "writes" is set per test, as a real model's answer to a prompt would be: `reply(text)`
for every chat answer from then on, `replies(*texts)` for the next few in order (one per item of a
batch), and `transcript(text)` for what the transcriber hears in audio that is not silent (silence is
transcribed as nothing, as Whisper does). Behaviour is switched per test: `normal()`,
`slow(seconds)`, `status(code, times=N)`, `malformed()`, `cut()`, `stall()`, `stream_error()` and
`hang()`. Every request is recorded in `requests`, without its credentials (only a digest of the key,
to tell which key came).
"""
from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import soundfile

DEFAULT_REPLY = "Hello from the fake provider."
DEFAULT_TRANSCRIPT = "Hello from the fake transcriber."
SILENCE_PEAK = 1e-3  # audio whose samples all stay below this is silence: an empty transcript
EMBEDDING_DIM = 8
HANG_LIMIT = 30.0  # seconds a hanging handler waits at most, should nothing release it
JOIN_LIMIT = 5.0  # seconds close() waits, in all, for handler threads to end
IDLE_LIMIT = 10.0  # seconds an idle keep-alive connection is kept open by the server

_WORD = re.compile(r"\s*\S+")
_CHAT_PATHS = {"/v1/chat/completions", "/v1/messages"}
_CREDENTIAL_HEADERS = {"authorization", "x-api-key", "api-key"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class UploadedFile:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; credentials removed
    body: Any  # the parsed JSON body, or a multipart form's fields (files as UploadedFile); None when neither
    connection: int  # which TCP connection carried it: equal numbers mean a reused pooled connection
    credential: str | None  # SHA-256 (hex) of the key presented, if any: which key came, never the key


@dataclass(frozen=True)
class _Behaviour:
    mode: str  # normal | slow | status | malformed | hang | cut | stall | stream_error
    seconds: float = 0.0
    status: int = 0
    retry_after_ms: int | None = None


_NORMAL = _Behaviour("normal")


def words(text: str) -> int:
    """The fake's token count: whitespace-separated words."""
    return len(text.split())


class FakeProviderServer:
    """The server, its behaviour switches and the requests it received. Use it as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._behaviour = _NORMAL
        self._remaining: int | None = None  # requests left before the behaviour reverts to normal
        self._reply = DEFAULT_REPLY
        self._replies: deque[str] = deque()  # answers of the next chat requests, before `_reply` again
        self._transcript = DEFAULT_TRANSCRIPT
        self._connections = 0
        self._open: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self.released = threading.Event()  # set on close: sleeping and hanging handlers return at once
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeProviderServer:
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and end every handler thread (idle, sleeping or hanging) within JOIN_LIMIT seconds."""
        self.released.set()
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_connections = list(self._open.values())
        for sock, _thread in open_connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked reading the next keep-alive request
            except OSError:
                pass
        deadline = time.monotonic() + JOIN_LIMIT
        for _sock, thread in open_connections:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._server = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "the server is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def live_handlers(self) -> int:
        with self._lock:
            return sum(1 for _sock, thread in self._open.values() if thread.is_alive())

    # --- what it received --------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    # --- behaviour switches ------------------------------------------------------------------
    def normal(self) -> None:
        self._set(_NORMAL, None)

    def slow(self, seconds: float, *, times: int | None = None) -> None:
        """Wait `seconds` before each answer (the next `times` requests, or until switched)."""
        self._set(_Behaviour("slow", seconds=seconds), times)

    def status(self, code: int, *, times: int = 1, retry_after_ms: int | None = None) -> None:
        """Fail the next `times` requests with HTTP `code`, then answer normally. A 429 sends
        `retry-after-ms: 5` unless told otherwise, so the SDK's retries stay fast."""
        if retry_after_ms is None and code == 429:
            retry_after_ms = 5
        self._set(_Behaviour("status", status=code, retry_after_ms=retry_after_ms), times)

    def malformed(self, *, times: int | None = None) -> None:
        """Answer 200 with a body that is not valid JSON (or an SSE event whose data is not)."""
        self._set(_Behaviour("malformed"), times)

    def cut(self, *, times: int | None = None) -> None:
        """Send half the answer, then close the connection: half the body, or half the stream's events."""
        self._set(_Behaviour("cut"), times)

    def stall(self, *, times: int | None = None) -> None:
        """Send half the answer, then go silent (until the server closes, or HANG_LIMIT seconds)."""
        self._set(_Behaviour("stall"), times)

    def stream_error(self, *, times: int | None = None) -> None:
        """Streams send half their events, then an error event (overloaded) instead of the rest."""
        self._set(_Behaviour("stream_error"), times)

    def hang(self, *, times: int | None = None) -> None:
        """Accept the request and never answer (until the server closes, or HANG_LIMIT seconds)."""
        self._set(_Behaviour("hang"), times)

    def reply(self, text: str) -> None:
        """What the model "writes" from now on, on both APIs."""
        with self._lock:
            self._reply = text
            self._replies.clear()

    def replies(self, *texts: str) -> None:
        """What the model writes to the next len(texts) chat requests, in order; then `reply` again."""
        with self._lock:
            self._replies = deque(texts)

    def transcript(self, text: str) -> None:
        """What the transcriber hears from now on in audio that is not silent ("" for nothing)."""
        with self._lock:
            self._transcript = text

    def _heard(self) -> str:
        with self._lock:
            return self._transcript

    def _set(self, behaviour: _Behaviour, times: int | None) -> None:
        with self._lock:
            self._behaviour = behaviour
            self._remaining = times

    # --- used by the handler -----------------------------------------------------------------
    def _take(self, request: RecordedRequest) -> tuple[_Behaviour, str]:
        with self._lock:
            self._requests.append(request)
            behaviour, reply = self._behaviour, self._reply
            if self._replies and request.path in _CHAT_PATHS:
                reply = self._replies.popleft()
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._behaviour, self._remaining = _NORMAL, None
            return behaviour, reply

    def _connected(self, sock: socket.socket) -> int:
        with self._lock:
            self._connections += 1
            self._open[self._connections] = (sock, threading.current_thread())
            return self._connections

    def _disconnected(self, connection: int) -> None:
        with self._lock:
            self._open.pop(connection, None)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and leave are part of the tests, not failures of the server


class _Handler(BaseHTTPRequestHandler):
    # Small writes must leave at once: Nagle's algorithm would hold each answer ~40 ms for an ACK.
    disable_nagle_algorithm = True
    # HTTP/1.1 keep-alive, like the real APIs, so the SDKs' connection pools are exercised.
    protocol_version = "HTTP/1.1"
    timeout = IDLE_LIMIT
    server_state: FakeProviderServer
    cut = False  # this answer breaks off half-way
    stall = False  # … and then the server goes silent instead of closing
    error_event: bytes | None = None  # sent half-way through a stream instead of the rest

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server_state._connected(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server_state._disconnected(self.connection_id)

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._json(404, {"error": {"message": f"No route for GET {self.path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        try:
            self._answer()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True  # the client gave up (timeout) or the server is closing

    def _answer(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        content_type = self.headers.get("Content-Type") or ""
        if content_type.lower().startswith("multipart/form-data"):
            body = _form(raw, content_type)
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
        headers = {name.lower(): value for name, value in self.headers.items() if name.lower() not in _CREDENTIAL_HEADERS}
        path = self.path.split("?", 1)[0]
        key = self._presented_key()
        behaviour, reply = self.server_state._take(
            RecordedRequest(
                method="POST",
                path=path,
                headers=headers,
                body=body,
                connection=self.connection_id,
                credential=hashlib.sha256(key.encode()).hexdigest() if key else None,
            )
        )
        anthropic = path == "/v1/messages"
        stream = isinstance(body, dict) and body.get("stream") is True
        released = self.server_state.released
        self.cut = behaviour.mode in ("cut", "stall")
        self.stall = behaviour.mode == "stall"
        self.error_event = None
        if behaviour.mode == "stream_error":
            error = {"type": "overloaded_error", "message": "Overloaded"}
            self.error_event = (
                f"event: error\ndata: {json.dumps({'type': 'error', 'error': error})}\n\n"
                if anthropic
                else f"data: {json.dumps({'error': error})}\n\n"
            ).encode()

        if behaviour.mode == "hang":
            released.wait(HANG_LIMIT)
            self.close_connection = True
            return
        if behaviour.mode == "slow" and released.wait(behaviour.seconds):
            self.close_connection = True
            return
        if behaviour.mode == "status":
            self._error(behaviour.status, anthropic=anthropic, retry_after_ms=behaviour.retry_after_ms)
            return
        if behaviour.mode == "malformed":
            if stream and anthropic:
                self._sse([b'event: message_start\ndata: {"type": "message_start", "message": {\n\n'])
            elif stream:
                self._sse([b'data: {"id": "chatcmpl-broken", "choices": [\n\n'])
            else:
                self._raw(200, b'{"id": "broken", "choices": [{"message": ', "application/json")
            return
        if not isinstance(body, dict):
            self._error(400, anthropic=anthropic, message="The request body is not a JSON object.")
            return
        if path == "/v1/chat/completions":
            self._chat_completions(body, reply, stream=stream)
        elif path == "/v1/embeddings":
            self._embeddings(body)
        elif path == "/v1/audio/transcriptions":
            self._transcriptions(body)
        elif anthropic:
            self._messages(body, reply, stream=stream)
        else:
            self._error(404, anthropic=False, message=f"No route for POST {path}")

    # --- OpenAI ------------------------------------------------------------------------------
    def _chat_completions(self, body: dict[str, Any], reply: str, *, stream: bool) -> None:
        prompt = sum(words(_content_text(message.get("content"))) for message in body.get("messages", []))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        stop = body.get("stop") or []
        text, finish, _stop_sequence = _complete(reply, max_tokens=max_tokens, stop=[stop] if isinstance(stop, str) else stop)
        finish_reason = "length" if finish == "length" else "stop"
        usage = {"prompt_tokens": prompt, "completion_tokens": words(text), "total_tokens": prompt + words(text)}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model", "")}
        if not stream:
            self._json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "finish_reason": finish_reason,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            data: dict[str, Any] = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            if include_usage:
                data["usage"] = None  # as the real API does: usage only in the last chunk
            return data

        chunks = [chunk({"role": "assistant", "content": ""}, None)]
        chunks += [chunk({"content": piece}, None) for piece in _WORD.findall(text)]
        chunks.append(chunk({}, finish_reason))
        if include_usage:
            chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        self._sse([b"data: " + json.dumps(data).encode() + b"\n\n" for data in chunks] + [b"data: [DONE]\n\n"])

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dim = int(body.get("dimensions") or EMBEDDING_DIM)
        data = []
        for index, text in enumerate(texts):
            vector = fake_vector(str(text), dim)
            if body.get("encoding_format") == "base64":
                embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            else:
                embedding = [float(value) for value in vector]
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt = sum(words(str(text)) for text in texts)
        self._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            },
        )

    def _transcriptions(self, form: dict[str, Any]) -> None:
        upload = form.get("file")
        if not isinstance(upload, UploadedFile) or not form.get("model"):
            self._error(400, anthropic=False, message="A transcription needs a file and a model.")
            return
        try:
            samples, rate = soundfile.read(io.BytesIO(upload.data), dtype="float32", always_2d=True)
        except (RuntimeError, TypeError, ValueError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            self._error(400, anthropic=False, message=f"Audio file might be corrupted or unsupported: {exc}")
            return
        duration = samples.shape[0] / rate
        silent = samples.size == 0 or float(np.abs(samples).max()) < SILENCE_PEAK
        text = "" if silent else self.server_state._heard()
        response_format = form.get("response_format", "json")
        if response_format == "text":
            self._raw(200, f"{text}\n".encode(), "text/plain; charset=utf-8")
        elif response_format == "json":
            self._json(200, {"text": text, "usage": {"type": "duration", "seconds": math.ceil(duration)}})
        else:
            self._error(400, anthropic=False, message=f"response_format {response_format!r} is not supported by this model.")

    # --- Anthropic ---------------------------------------------------------------------------
    def _messages(self, body: dict[str, Any], reply: str, *, stream: bool) -> None:
        prompt = words(_content_text(body.get("system"))) + sum(
            words(_content_text(message.get("content"))) for message in body.get("messages", [])
        )
        text, finish, stop_sequence = _complete(reply, max_tokens=body.get("max_tokens"), stop=body.get("stop_sequences") or [])
        stop_reason = {"length": "max_tokens", "stop_sequence": "stop_sequence"}.get(finish, "end_turn")
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": prompt, "output_tokens": words(text)},
        }
        if not stream:
            self._json(200, message)
            return
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        **message,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": prompt, "output_tokens": 1},
                    },
                },
            ),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        events += [
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            for piece in _WORD.findall(text)
        ]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": words(text)},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        self._sse([f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events])

    # --- writing -----------------------------------------------------------------------------
    def _error(self, status: int, *, anthropic: bool, retry_after_ms: int | None = None, message: str | None = None) -> None:
        kind = _ERROR_TYPES.get(status, "api_error")
        if message is None:
            if status == 401:
                # Some OpenAI-compatible servers echo the key they were given: the client must never repeat it.
                message = f"Incorrect API key provided: {self._presented_key()}."
            else:
                message = f"Fake provider error {status}."
        if anthropic:
            body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}
        else:
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        extra = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else {}
        self._json(status, body, extra=extra)

    def _presented_key(self) -> str:
        authorization = self.headers.get("Authorization") or ""
        return authorization.removeprefix("Bearer ").strip() or (self.headers.get("x-api-key") or "")

    def _json(self, status: int, body: object, *, extra: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(body).encode(), "application/json", extra=extra)

    def _raw(self, status: int, payload: bytes, content_type: str, *, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.cut:
            # Content-Length promised the whole body; the connection closes after half of it.
            payload, self.close_connection = payload[: len(payload) // 2], True
        self.wfile.write(payload)
        self.wfile.flush()
        if self.stall:
            self.server_state.released.wait(HANG_LIMIT)

    def _sse(self, events: list[bytes]) -> None:
        # No Content-Length: the body ends when the connection closes, as an event stream may.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.cut:
            events = events[: len(events) // 2]
        if self.error_event is not None:
            events = events[: len(events) // 2] + [self.error_event]
        for event in events:
            self.wfile.write(event)
            self.wfile.flush()
        if self.stall:
            self.server_state.released.wait(HANG_LIMIT)


def _form(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """The fields of a multipart/form-data body: text fields as str, files as UploadedFile."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return None
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            fields[name] = UploadedFile(filename=filename, content_type=part.get_content_type(), data=data)
        else:
            fields[name] = data.decode()
    return fields


def _content_text(content: Any) -> str:
    """Message content as plain text: a string, or the text of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return ""


def _complete(reply: str, *, max_tokens: Any, stop: list[str]) -> tuple[str, str, str | None]:
    """The reply as the fake model writes it: (text, "stop" | "length" | "stop_sequence", stop string hit)."""
    text, finish, hit = reply, "stop", None
    found = [(text.find(s), s) for s in stop if isinstance(s, str) and s and s in text]
    if found:
        index, hit = min(found)
        text, finish = text[:index], "stop_sequence"
    pieces = _WORD.findall(text)
    if isinstance(max_tokens, int) and len(pieces) > max_tokens:
        text, finish, hit = "".join(pieces[:max_tokens]), "length", None
    return text, finish, hit


def fake_vector(text: str, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """The fake's embedding of `text`: deterministic, not normalised (so the client's normalisation shows)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return (np.random.default_rng(seed).standard_normal(dim) * 3.0).astype(np.float32)


@pytest.fixture
def fake_providers() -> Iterator[FakeProviderServer]:
    """A fresh fake OpenAI + Anthropic server for one test."""
    with FakeProviderServer() as server:
        yield server
