"""Spoken intent: a Whisper transcript, then an intent from a trained text classifier or, without one,
zero-shot from label descriptions embedded by the embeddings model."""
from __future__ import annotations

import json
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inference.audio import SAMPLE_RATE
from inference.backends import backend_class
from inference.base import Backend, ModelConfig, require_safetensors, weights_size_mb
from inference.errors import InferenceError, InferenceTimeout, ModelLoadError
from inference.payloads import AudioInput, Intent, LabelScore, Task, Transcription
from inference.runtime import configure_torch
from inference.speech import FasterWhisperSpeech, TransformersWhisperSpeech, check_audio

# What a voice-commerce assistant is asked most. Each intent is described by a few phrasings of
# the request, and a transcript takes the score of the phrasing it is closest to.
DEFAULT_INTENTS: dict[str, tuple[str, ...]] = {
    "add_to_cart": ("add this to my shopping cart", "I'll take two of these, I'd like to buy them", "put it in my basket"),
    "remove_from_cart": (
        "remove this item from my cart", "take that out of my basket", "I don't want this item in my cart anymore"
    ),
    "search": ("search for a product or find me one", "show me products like these", "do you have any of these in stock"),
    "checkout": ("check out and pay now", "buy everything in my cart now", "proceed to checkout"),
    "track_order": ("where is my order", "track my package delivery", "when will my parcel arrive"),
    "cancel_order": ("cancel my order", "I no longer want the order I placed", "call off my purchase"),
    "talk_to_human": ("talk to a human agent", "connect me to customer service", "let me speak to a real person"),
    "other": ("something unrelated to shopping", "what time is it", "tell me a joke"),
}



class SpeechIntent(Backend):
    """Speech → transcript → intent. The transcript comes from the "speech" dependency through the
    pool (or, with none configured, from the Whisper model in `path`); the intent from a trained
    text classifier (`intent_classifier_path`, labels in intent_labels.json) or, without one,
    zero-shot from label descriptions embedded by the "embeddings" dependency.

    Options: intents (label → description or list of descriptions; DEFAULT_INTENTS), temperature
    (0.05: cosine similarities are close together, a low temperature spreads them into usable
    probabilities), top_k (3), intent_classifier_path, max_seconds (600), empty_intent ("other",
    the answer for audio with no speech), speech_timeout (300 s).
    """

    name = "whisper-intent"
    task = Task.INTENT
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "intents": dict,
        "temperature": (int, float),
        "top_k": int,
        "intent_classifier_path": str,
        "max_seconds": (int, float),
        "empty_intent": str,
        "speech_timeout": (int, float),
        # passed on to a speech model built from `path`
        **FasterWhisperSpeech.option_types,
        **TransformersWhisperSpeech.option_types,
    }

    def memory_estimate_mb(self) -> float:
        # The speech and embeddings models are pool entries of their own, counted there.
        classifier = self.classifier_path()
        return weights_size_mb(classifier) if classifier is not None and classifier.exists() else 1.0

    def classifier_path(self) -> Path | None:
        value = self.option("intent_classifier_path", None)
        if not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.config.path / path

    def load(self) -> None:
        if self.pool is None:
            raise ModelLoadError(f"{self.config.slug}: runs inside a ModelPool, which serves its speech model.")
        self.speech = self.speech_config()
        self.top_k = int(self.option("top_k", 3))
        if self.top_k < 1:
            raise ModelLoadError(f"{self.config.slug}: top_k must be at least 1.")
        classifier = self.classifier_path()
        if classifier is not None:
            self.load_classifier(classifier)
        else:
            self.load_zero_shot()

    def speech_config(self) -> ModelConfig:
        if "speech" in self.config.dependencies:
            return self.dependency("speech")
        path = self.config.path
        if (path / "model.bin").is_file():
            backend = "faster-whisper"
        elif (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            backend = "transformers-whisper"
        else:
            raise ModelLoadError(
                f"{self.config.slug}: needs a 'speech' model, and {path} holds no Whisper model to use instead."
            )
        known = backend_class(backend).option_types
        return ModelConfig(
            slug=f"{self.config.slug}.speech",
            task=Task.SPEECH,
            backend=backend,
            path=path,
            options={k: v for k, v in self.config.options.items() if k in known},
            max_batch_size=self.config.max_batch_size,
            max_wait_ms=self.config.max_wait_ms,
            device=self.config.device,
        )

    def load_zero_shot(self) -> None:
        intents = self.option("intents", DEFAULT_INTENTS)
        if not isinstance(intents, dict) or not intents:
            raise ModelLoadError(f"{self.config.slug}: option intents must map each label to its descriptions.")
        phrases: list[str] = []
        owners: list[int] = []
        for index, (label, descriptions) in enumerate(intents.items()):
            if isinstance(descriptions, str):
                descriptions = [descriptions]
            if not isinstance(label, str) or not descriptions or not all(
                isinstance(d, str) and d.strip() for d in descriptions
            ):
                raise ModelLoadError(f"{self.config.slug}: intent {label!r} needs one or more non-empty descriptions.")
            phrases.extend(descriptions)
            owners.extend([index] * len(descriptions))
        temperature = float(self.option("temperature", 0.05))
        if temperature <= 0:
            raise ModelLoadError(f"{self.config.slug}: temperature must be positive.")
        # Embedded once here: each request then costs one embedding of its transcript.
        vectors = self.pool.infer_many(self.dependency("embeddings"), phrases)
        self.phrase_vectors = np.stack([v.vector for v in vectors]).astype(np.float32)
        self.phrase_owner = np.asarray(owners)
        self.labels = list(intents)
        self.temperature = temperature
        self.classifier = None

    def load_classifier(self, path: Path) -> None:
        configure_torch()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{self.config.slug}: no text classifier at {path}.")
        require_safetensors(path, self.config.slug)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.classifier = AutoModelForSequenceClassification.from_pretrained(
            str(path), use_safetensors=True, local_files_only=True, trust_remote_code=False
        ).to(self.config.device)
        self.classifier.eval()
        self.labels = self.read_labels(path, self.classifier.config)
        if len(self.labels) != self.classifier.config.num_labels:
            raise ModelLoadError(
                f"{self.config.slug}: {len(self.labels)} intent labels for a classifier with "
                f"{self.classifier.config.num_labels} outputs."
            )
        self.classify(["hello"])  # warm the classifier now; the speech model warms itself

    def read_labels(self, classifier_dir: Path, model_config: Any) -> list[str]:
        """Labels by output index: intent_labels.json (model dir, then classifier dir), else the classifier's config."""
        for candidate in (self.config.path / "intent_labels.json", classifier_dir / "intent_labels.json"):
            if candidate.is_file():
                try:
                    table = json.loads(candidate.read_text())
                    by_id = {int(i): str(label) for i, label in table["id_to_label"].items()}
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ModelLoadError(f"{self.config.slug}: {candidate} is not a label table: {exc}") from None
                if sorted(by_id) != list(range(len(by_id))):
                    raise ModelLoadError(f"{self.config.slug}: {candidate} must number labels 0..n-1.")
                inverse = table.get("label_to_id")
                if inverse and any(by_id.get(int(i)) != label for label, i in inverse.items()):
                    raise ModelLoadError(f"{self.config.slug}: label_to_id and id_to_label disagree in {candidate}.")
                return [by_id[i] for i in range(len(by_id))]
        return [str(model_config.id2label[i]) for i in range(model_config.num_labels)]

    def validate(self, item: Any) -> AudioInput:
        return check_audio(item, max_seconds=float(self.option("max_seconds", 600)))

    def warmup_input(self) -> AudioInput:
        return AudioInput(samples=np.zeros(SAMPLE_RATE, np.float32))

    def infer(self, batch: list[AudioInput]) -> list[Intent | InferenceError]:
        self.require_loaded()
        transcriptions = self.transcribe(batch)
        spoken = [i for i, t in enumerate(transcriptions) if isinstance(t, Transcription) and t.text.strip()]
        distributions = self.classify([transcriptions[i].text for i in spoken]) if spoken else np.zeros((0, 0))
        by_item = dict(zip(spoken, distributions))
        empty = self.option("empty_intent", "other")
        results: list[Intent | InferenceError] = []
        for index, transcription in enumerate(transcriptions):
            if isinstance(transcription, InferenceError):
                results.append(transcription)
            elif index not in by_item:
                # Silence is an answer, not a doubt: a confidence of 1 keeps it from being escalated.
                results.append(Intent(transcription, empty, 1.0, [LabelScore(empty, 1.0)]))
            else:
                probabilities = by_item[index]
                order = np.argsort(-probabilities)[: self.top_k]
                top = [LabelScore(self.labels[j], float(probabilities[j])) for j in order]
                results.append(Intent(transcription, top[0].label, top[0].score, top))
        return results

    def transcribe(self, batch: list[AudioInput]) -> list[Transcription | InferenceError]:
        """Every item queued on the speech model before waiting on any, so that they batch together there."""
        pending: list[Future | InferenceError] = []
        for item in batch:
            try:
                pending.append(self.pool.submit_many(self.speech, [item])[0])
            except InferenceError as exc:
                pending.append(exc)
        timeout = float(self.option("speech_timeout", 300))
        results: list[Transcription | InferenceError] = []
        for entry in pending:
            if isinstance(entry, InferenceError):
                results.append(entry)
                continue
            try:
                results.append(entry.result(timeout=timeout))
            except FutureTimeout:
                entry.cancel()
                results.append(InferenceTimeout(f"{self.speech.slug} did not transcribe within {timeout:.0f} s."))
            except InferenceError as exc:
                results.append(exc)
        return results

    def classify(self, texts: list[str]) -> np.ndarray:
        """One probability row per text, columns in `self.labels` order."""
        if self.classifier is not None:
            torch = self.torch
            encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                logits = self.classifier(**encoded.to(self.classifier.device)).logits
            return logits.float().softmax(dim=-1).cpu().numpy()
        vectors = np.stack([e.vector for e in self.pool.infer_many(self.dependency("embeddings"), texts)])
        similarities = vectors @ self.phrase_vectors.T  # cosine: both sides are L2-normalised
        per_label = np.full((len(texts), len(self.labels)), -np.inf, dtype=np.float32)
        for label in range(len(self.labels)):
            per_label[:, label] = similarities[:, self.phrase_owner == label].max(axis=1)
        logits = per_label / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)
