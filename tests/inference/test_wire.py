"""The model server's wire format: every payload, config and error crosses a real socket intact, and a
frame that is unknown, oversized, truncated or unpicklable-by-design is refused."""
from __future__ import annotations

import dataclasses
import pickle
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference import errors, payloads, wire
from inference.base import ModelConfig
from inference.client import ModelServerUnavailable
from inference.payloads import (
    AudioInput,
    ChatMessage,
    Classification,
    ClassificationInput,
    Embedding,
    Generation,
    GenerationInput,
    Intent,
    LabelScore,
    LanguageGuess,
    LanguageIdInput,
    RerankInput,
    RerankResult,
    Segment,
    Transcription,
    Translation,
    TranslationInput,
)

RNG = np.random.default_rng(7)
VECTOR = (lambda v: (v / np.linalg.norm(v)).astype(np.float32))(RNG.standard_normal(384))
SAMPLES = (RNG.standard_normal(16_000 * 3) * 0.1).astype(np.float32)  # three seconds of 16 kHz audio
SEGMENTS = [Segment(0.0, 1.4, "Book a table", -0.21), Segment(1.4, 3.0, " for two tonight.", -0.35)]
TRANSCRIPTION = Transcription(
    text="Book a table for two tonight.", language="en", language_probability=0.98, duration=3.0,
    avg_logprob=-0.28, segments=SEGMENTS,
)

# One realistic instance of every payload dataclass; the coverage test below keeps this list complete.
PAYLOADS: list[Any] = [
    TranslationInput(text="Where is the station?", target="fra_Latn", source="en"),
    TranslationInput(text="Où est la gare ?", target="en"),
    Translation(text="Où est la gare ?", source="en", target="fr", score=-0.173, truncated=False),
    Translation(text="Où est", source=None, target="fr", score=None, truncated=True),
    LanguageIdInput(text="Guten Morgen zusammen", top_k=3),
    LanguageGuess(language="de", probability=0.9731),
    LanguageGuess(language="fr", probability=None),
    ClassificationInput(text="The invoice is overdue", labels=("billing", "support", "sales")),
    ClassificationInput(text="I love it"),
    LabelScore(label="billing", score=0.82),
    Classification(scores=[LabelScore("billing", 0.82), LabelScore("support", 0.11)], predicted=["billing"]),
    Classification(scores=[LabelScore("urgent", 0.7), LabelScore("angry", 0.6)], predicted=["urgent", "angry"], multi_label=True),
    Embedding(vector=VECTOR, tokens=7),
    RerankInput(query="capital of France", documents=("Paris is the capital.", "Berlin is in Germany.")),
    RerankResult(scores=[4.25, -3.5]),
    AudioInput(samples=SAMPLES, language="en"),
    AudioInput(samples=SAMPLES[:0]),
    SEGMENTS[0],
    TRANSCRIPTION,
    Intent(transcription=TRANSCRIPTION, intent="book_table", confidence=0.91,
           top_k=[LabelScore("book_table", 0.91), LabelScore("cancel_booking", 0.05)]),
    ChatMessage(role="system", content="Be brief."),
    GenerationInput(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello.")),
                    max_tokens=64, temperature=0.7, stop=("\n\n", "User:")),
    GenerationInput(messages=(ChatMessage("user", "Count to five."),)),
    Generation(text="one two three four five", tokens_in=18, tokens_out=6, finish_reason="stop", mean_logprob=-0.04),
    Generation(text="one two", tokens_in=18, tokens_out=2, finish_reason="length"),
]


def assert_same(received: Any, sent: Any, where: str = "value") -> None:
    """Equal and of the same types all the way down: a tuple that came back a list is a failure."""
    assert type(received) is type(sent), f"{where}: {type(received).__name__} is not {type(sent).__name__}"
    if isinstance(sent, np.ndarray):
        assert (received.dtype, received.shape) == (sent.dtype, sent.shape), where
        assert received.tobytes() == sent.tobytes(), where
    elif dataclasses.is_dataclass(sent):
        for field in dataclasses.fields(sent):
            assert_same(getattr(received, field.name), getattr(sent, field.name), f"{where}.{field.name}")
    elif isinstance(sent, (list, tuple)):
        assert len(received) == len(sent), where
        for index, (a, b) in enumerate(zip(received, sent)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(sent, dict):
        assert list(received) == list(sent), where
        for key in sent:
            assert_same(received[key], sent[key], f"{where}[{key!r}]")
    else:
        assert received == sent, where


def over_a_socket(value: Any) -> Any:
    """Send from one thread, receive in this one: large frames do not fit a socket buffer."""
    left, right = socket.socketpair()
    failures: list[BaseException] = []

    def send() -> None:
        try:
            wire.send(left, value)
        except BaseException as exc:  # noqa: BLE001 - reported by the receiving side
            failures.append(exc)

    sender = threading.Thread(target=send)
    try:
        right.settimeout(10)
        sender.start()
        received = wire.receive(right)
    finally:
        sender.join(timeout=10)
        left.close()
        right.close()
    assert not failures
    return received


def payload_id(value: Any) -> str:
    return type(value).__name__


def test_the_examples_cover_every_payload_dataclass():
    defined = {
        name for name, value in vars(payloads).items()
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == payloads.__name__
    }
    assert {type(value).__name__ for value in PAYLOADS} == defined


@pytest.mark.parametrize("value", PAYLOADS, ids=payload_id)
def test_every_payload_round_trips_through_packb_and_unpackb(value):
    assert_same(wire.unpackb(wire.packb(value)), value)


@pytest.mark.parametrize("value", PAYLOADS, ids=payload_id)
def test_every_payload_round_trips_over_a_socket(value):
    assert_same(over_a_socket(value), value)


def test_vectors_and_audio_keep_dtype_shape_and_bytes_and_travel_as_raw_bytes():
    received = over_a_socket({"embedding": Embedding(vector=VECTOR, tokens=7), "audio": AudioInput(samples=SAMPLES)})

    vector, samples = received["embedding"].vector, received["audio"].samples
    assert vector.dtype == np.float32 and vector.shape == (384,) and vector.tobytes() == VECTOR.tobytes()
    assert samples.dtype == np.float32 and samples.shape == SAMPLES.shape and samples.tobytes() == SAMPLES.tobytes()
    # Raw float32 bytes and a small header, not a list of floats: 384 floats are 1,536 bytes.
    assert len(wire.packb(VECTOR)) < 1_536 + 64
    assert len(wire.packb(SAMPLES)) < SAMPLES.nbytes + 64
    # The caller's own copy, writable (a view of the frame's buffer would be read-only).
    assert wire.unpackb(wire.packb(SAMPLES)).flags.writeable


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],  # not contiguous
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        np.arange(6, dtype=">i2"),  # big-endian
        np.array([True, False]),
        np.array(["fr", "de"]),
        np.zeros((0, 384), dtype=np.float32),
        np.array(2.5, dtype=np.float32),  # zero-dimensional
    ],
    ids=["float64-2d", "strided", "fortran-order", "big-endian", "bool", "unicode", "empty-2d", "zero-dim"],
)
def test_arrays_keep_dtype_shape_and_values(array):
    received = over_a_socket(array)

    assert type(received) is np.ndarray
    assert (received.dtype, received.shape) == (array.dtype, array.shape)
    assert np.array_equal(received, array)
    assert received.flags.writeable


def test_tuples_stay_tuples_and_lists_stay_lists_at_any_depth():
    value = {"pairs": [("en", 0.9), ("fr", 0.1)], "nested": ((1, [2, (3,)]), ()), "labels": ("a",)}

    assert_same(over_a_socket(value), value)


def test_a_generation_input_keeps_its_chat_message_tuple():
    item = GenerationInput(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello.")), stop=("\n",))

    received = over_a_socket(item)

    assert received == item
    assert type(received.messages) is tuple and all(type(m) is ChatMessage for m in received.messages)
    assert type(received.stop) is tuple


def test_an_intent_keeps_its_nested_transcription_and_segments():
    intent = PAYLOADS[[type(p) for p in PAYLOADS].index(Intent)]

    received = over_a_socket(intent)

    assert received == intent
    assert type(received.transcription) is Transcription
    assert [type(s) for s in received.transcription.segments] == [Segment, Segment]
    assert [type(s) for s in received.top_k] == [LabelScore, LabelScore]


def test_a_model_config_keeps_its_path_options_and_nested_dependencies():
    minilm = ModelConfig(slug="minilm-l6", task="embeddings", backend="sentence-transformers",
                         path=Path("/srv/models/minilm"), max_batch_size=32, options={"normalize": True})
    whisper = ModelConfig(slug="whisper-tiny", task="speech", backend="faster-whisper", path=Path("/srv/models/whisper tiny"),
                          options={"beam_size": 1, "languages": ("en", "fr")}, max_wait_ms=2.5, device="cpu")
    intent = ModelConfig(
        slug="voice-intent", task="intent", backend="speech-intent", path=Path("/srv/models/intent"),
        options={"labels": ("book_table", "cancel_booking"), "threshold": 0.4, "extra": None},
        dependencies={"speech": whisper, "classifier": ModelConfig(
            slug="zero-shot", task="classification", backend="zero-shot", path=Path("relative/zs"),
            dependencies={"embeddings": minilm})},
    )

    received = over_a_socket({"op": "load", "config": intent})["config"]

    assert received == intent
    assert_same(received, intent)
    assert isinstance(received.path, Path) and received.dependencies["speech"].path == Path("/srv/models/whisper tiny")
    assert type(received.dependencies["classifier"].dependencies["embeddings"]) is ModelConfig
    assert hash(received.path) == hash(intent.path)


ERROR_CLASSES = sorted(
    (value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, errors.InferenceError)),
    key=lambda kind: kind.__name__,
)


@pytest.mark.parametrize("kind", ERROR_CLASSES, ids=lambda kind: kind.__name__)
def test_every_inference_error_keeps_its_class_code_and_message(kind):
    received = over_a_socket({"ok": False, "error": kind("The text is empty.")})["error"]

    assert type(received) is kind
    assert received.code == kind.code
    assert str(received) == "The text is empty."


@pytest.mark.parametrize("kind", [wire.WireError, wire.ConnectionClosed, ModelServerUnavailable],
                         ids=lambda kind: kind.__name__)
def test_inference_errors_defined_outside_the_errors_module_keep_their_code(kind):
    received = over_a_socket({"error": kind("gone")})["error"]

    assert isinstance(received, errors.InferenceError)
    assert (received.code, str(received)) == (kind.code, "gone")


def test_per_item_errors_travel_in_place_among_results():
    results = [[LanguageGuess("fr", 0.99)], errors.InvalidInput("The text is empty."), [LanguageGuess("de", 0.97)]]

    received = over_a_socket({"ok": True, "results": results})["results"]

    assert received[0] == results[0] and received[2] == results[2]
    assert type(received[1]) is errors.InvalidInput and received[1].code == "invalid_input"


def test_an_unknown_type_name_in_a_frame_is_a_wire_error():
    import msgpack

    frame = msgpack.packb({"op": "infer", "items": [{"__t": "Exploit", "command": "rm -rf /"}]})
    with pytest.raises(wire.WireError, match="does not know"):
        wire.unpackb(frame)

    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        left.sendall(struct.pack("!I", len(frame)) + frame)
        with pytest.raises(wire.WireError):
            wire.receive(right)


def test_a_known_type_with_unknown_fields_is_a_wire_error():
    import msgpack

    with pytest.raises(wire.WireError):
        wire.unpackb(msgpack.packb({"__t": "Segment", "start": 0.0, "end": 1.0, "text": "x", "avg_logprob": 0.0, "shell": "id"}))


def test_a_frame_that_is_not_msgpack_is_a_wire_error():
    with pytest.raises(wire.WireError):
        wire.unpackb(b"\xc1\xc1\xc1")


def test_a_frame_over_the_limit_is_refused_on_send_before_anything_is_written(monkeypatch):
    monkeypatch.setattr(wire, "MAX_FRAME", 4096)
    left, right = socket.socketpair()
    with left, right:
        with pytest.raises(wire.WireError, match="over the 4096-byte limit"):
            wire.send(left, {"audio": AudioInput(samples=np.zeros(2048, dtype=np.float32))})
        right.setblocking(False)
        with pytest.raises(BlockingIOError):
            right.recv(1)  # nothing was sent: the connection is still clean
        wire.send(left, {"op": "ping"})
        right.settimeout(5)
        assert wire.receive(right) == {"op": "ping"}


def test_a_frame_announcing_more_than_the_limit_is_refused_without_reading_it():
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        left.sendall(struct.pack("!I", wire.MAX_FRAME + 1))  # and no body: refused before waiting for one
        with pytest.raises(wire.WireError, match="over the"):
            wire.receive(right)
        left.sendall(struct.pack("!I", 2**32 - 1))
        with pytest.raises(wire.WireError, match="over the"):
            wire.receive(right)


@pytest.mark.parametrize(
    "sent", [b"", b"\x00\x00", struct.pack("!I", 100) + b"\x85" + b"x" * 20],
    ids=["nothing", "half-a-length", "half-a-body"],
)
def test_a_truncated_frame_is_a_closed_connection(sent):
    left, right = socket.socketpair()
    with right:
        right.settimeout(5)
        left.sendall(sent)
        left.close()
        with pytest.raises(wire.ConnectionClosed):
            wire.receive(right)


class Opaque:
    def __init__(self) -> None:
        self.secret = "would need pickle"


@dataclasses.dataclass
class NotAPayload:
    text: str


@pytest.mark.parametrize(
    "value",
    [Opaque(), NotAPayload("hi"), {1, 2}, object(), Opaque, len],
    ids=["object", "foreign-dataclass", "set", "plain-object", "class", "function"],
)
def test_anything_outside_the_format_raises_type_error_on_send_and_nothing_is_written(value):
    left, right = socket.socketpair()
    with left, right:
        with pytest.raises(TypeError, match="Cannot send"):
            wire.send(left, {"op": "infer", "items": [value]})
        right.setblocking(False)
        with pytest.raises(BlockingIOError):
            right.recv(1)


def test_pickled_bytes_in_a_frame_stay_bytes(tmp_path):
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Touch(str(marker)))

    received = over_a_socket({"blob": evil})

    assert received == {"blob": evil} and type(received["blob"]) is bytes
    assert not marker.exists()


class _Touch:
    """Unpickling this would create a file: the wire must never do it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_numpy_scalars_cross_as_plain_numbers():
    received = over_a_socket({"probability": np.float32(0.5), "tokens": np.int64(7)})

    assert received == {"probability": 0.5, "tokens": 7}
    assert (type(received["probability"]), type(received["tokens"])) == (float, int)


def test_several_frames_on_one_connection_arrive_in_order():
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        for n in range(3):
            wire.send(left, {"piece": f"part {n}"})
        wire.send(left, {"ok": True, "done": PAYLOADS[-1]})
        assert [wire.receive(right) for _ in range(3)] == [{"piece": f"part {n}"} for n in range(3)]
        assert wire.receive(right)["done"] == PAYLOADS[-1]
