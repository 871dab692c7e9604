"""Backend names → classes, imported lazily so that a process loads only the libraries it uses."""
from __future__ import annotations

import importlib

from inference.base import Backend, ModelConfig
from inference.errors import UnknownBackend

# name: (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "ctranslate2-translator": ("inference.translation", "CTranslate2Translator"),
    "fasttext": ("inference.langid", "FastTextLanguageId"),
    "transformers-classifier": ("inference.classification", "TransformersClassifier"),
    "zero-shot-embeddings": ("inference.classification", "ZeroShotClassifier"),
    "sentence-transformers": ("inference.embeddings", "SentenceTransformerEmbeddings"),
    "cross-encoder": ("inference.embeddings", "CrossEncoderReranker"),
    "faster-whisper": ("inference.speech", "FasterWhisperSpeech"),
    "transformers-whisper": ("inference.speech", "TransformersWhisperSpeech"),
    "whisper-intent": ("inference.intent", "SpeechIntent"),
    "ctranslate2-generator": ("inference.generation", "CTranslate2Generator"),
    "transformers-generator": ("inference.generation", "TransformersGenerator"),
}


def backend_class(name: str) -> type[Backend]:
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise UnknownBackend(f"Unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}.") from None
    return getattr(importlib.import_module(module_name), class_name)


def create_backend(config: ModelConfig) -> Backend:
    cls = backend_class(config.backend)
    if cls.task != config.task:
        raise UnknownBackend(f"Backend {config.backend!r} serves {cls.task}, not {config.task}.")
    return cls(config)
