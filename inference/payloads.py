"""The inputs and outputs of each task: plain dataclasses, one item per caller in a batch, and the stream
of text pieces a generation produces when streamed (by a local model or a provider)."""
from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import numpy as np


class Task:
    TRANSLATION = "translation"
    LANGUAGE_ID = "language_id"
    CLASSIFICATION = "classification"
    EMBEDDINGS = "embeddings"
    RERANK = "rerank"
    SPEECH = "speech"
    INTENT = "intent"
    GENERATION = "generation"

    ALL = (TRANSLATION, LANGUAGE_ID, CLASSIFICATION, EMBEDDINGS, RERANK, SPEECH, INTENT, GENERATION)


# --- translation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TranslationInput:
    text: str
    target: str  # any accepted code: "fr", "fra_Latn"
    source: str | None = None  # detected by the caller when absent; some models need it


@dataclass(frozen=True)
class Translation:
    text: str
    source: str | None
    target: str
    score: float | None  # mean log-probability per generated token (<= 0); exp(score) is a confidence; None: none given (premium)
    truncated: bool = False  # decoding stopped at the length limit before the sentence ended


# --- language identification ---------------------------------------------------------------
# Language ID runs tens of thousands of texts a second: slots keep the per-item objects cheap.
@dataclass(frozen=True, slots=True)
class LanguageIdInput:
    text: str
    top_k: int = 1


@dataclass(slots=True)
class LanguageGuess:
    language: str  # ISO 639-1 where one exists ("en"), else the model's code
    probability: float | None  # None: the model states none (a premium answer)


# --- classification ------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassificationInput:
    text: str
    labels: tuple[str, ...] | None = None  # zero-shot: candidate labels (or label descriptions)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    scores: list[LabelScore]  # sorted, best first
    predicted: list[str]  # single-label: [top]; multi-label: every label over its threshold
    multi_label: bool = False

    @property
    def confidence(self) -> float:
        return self.scores[0].score if self.scores else 0.0

    @property
    def margin(self) -> float:
        """Top score minus the runner-up: small margins mean the model hesitated."""
        if len(self.scores) < 2:
            return self.confidence
        return self.scores[0].score - self.scores[1].score


# --- embeddings and rerank -----------------------------------------------------------------
@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # float32, L2-normalised
    tokens: int


@dataclass(frozen=True)
class RerankInput:
    query: str
    documents: tuple[str, ...]


@dataclass(frozen=True)
class RerankResult:
    scores: list[float]  # one per document, in input order


# --- speech --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioInput:
    samples: np.ndarray  # mono float32 at 16 kHz (see inference.audio.decode_audio)
    language: str | None = None


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str | None
    language_probability: float | None
    duration: float
    avg_logprob: float | None  # duration-weighted over segments; Whisper's own confidence signal; None: none given (premium)
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class Intent:
    transcription: Transcription
    intent: str
    confidence: float
    top_k: list[LabelScore]


# --- generation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationInput:
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        """Every message's content, one after another: what complexity, token estimates and the learned router read."""
        return "\n".join(message.content for message in self.messages)


@dataclass(frozen=True)
class Generation:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str  # "stop" or "length"
    mean_logprob: float | None = None  # per generated token, where the backend reports it (CTranslate2)


class GenerationStream(Iterator[str]):
    """Text pieces in the order the model writes them; their concatenation is the answer's text.

    Once iteration ends, `result` holds the full `Generation` (text, token counts, finish reason),
    exactly as `infer` would have returned it. `close()` stops the model early (the client left);
    `result` then stays None.
    """

    def __init__(self, pieces: Generator[str, None, Generation]):
        self._pieces = pieces
        self.result: Generation | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as end:
            if self.result is None:
                self.result = end.value
            raise StopIteration from None

    def close(self) -> None:
        self._pieces.close()
