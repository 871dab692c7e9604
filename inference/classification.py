"""Text classification: transformers sequence classifiers (single- or multi-label) and zero-shot over embeddings."""
from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import numpy as np

from inference.base import Backend, require_safetensors
from inference.errors import InvalidInput, ModelLoadError
from inference.payloads import Classification, ClassificationInput, LabelScore, Task
from inference.runtime import configure_torch

DEFAULT_MAX_CHARACTERS = 32_768
MAX_ZERO_SHOT_LABELS = 100


def _validate_text(item: Any, limit: int) -> ClassificationInput:
    if isinstance(item, str):
        item = ClassificationInput(text=item)
    if not isinstance(item, ClassificationInput) or not isinstance(item.text, str):
        raise InvalidInput("Classification takes text.")
    if not item.text.strip():
        raise InvalidInput("The text is empty.")
    if len(item.text) > limit:
        raise InvalidInput(f"The text has {len(item.text)} characters; the limit is {limit}.")
    return item


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TransformersClassifier(Backend):
    """A fine-tuned `*ForSequenceClassification` model: softmax for one label, sigmoid + thresholds for several."""

    name = "transformers-classifier"
    task = Task.CLASSIFICATION
    option_types: ClassVar[dict[str, Any]] = {
        "multi_label": bool,
        "thresholds": (dict, float, int),
        "max_length": int,
        "max_characters": int,
    }

    def load(self) -> None:
        configure_torch()
        path = self.require_path("config.json")
        require_safetensors(path, self.config.slug)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=True
        ).eval()
        self.labels = self._labels(path)
        if len(self.labels) != self.model.config.num_labels:
            raise ModelLoadError(
                f"{self.config.slug}: {len(self.labels)} labels for a model with {self.model.config.num_labels} outputs."
            )
        problem_type = getattr(self.model.config, "problem_type", None)
        self.multi_label = bool(self.option("multi_label", problem_type == "multi_label_classification"))
        thresholds = self.option("thresholds", 0.5)
        if isinstance(thresholds, dict):
            unknown = set(thresholds) - set(self.labels)
            if unknown:
                raise ModelLoadError(f"{self.config.slug}: thresholds for unknown labels {', '.join(sorted(unknown))}.")
            self.thresholds = np.array([float(thresholds.get(label, 0.5)) for label in self.labels])
        else:
            self.thresholds = np.full(len(self.labels), float(thresholds))

    def _labels(self, path: Any) -> list[str]:
        labels_file = path / "labels.json"
        if labels_file.exists():
            data = json.loads(labels_file.read_text())
            if isinstance(data, dict):
                data = data.get("id2label", data)
                return [str(data[key]) for key in sorted(data, key=lambda k: int(k))]
            return [str(label) for label in data]
        id2label = self.model.config.id2label
        return [str(id2label[index]) for index in range(len(id2label))]

    def validate(self, item: Any) -> ClassificationInput:
        item = _validate_text(item, self.option("max_characters", DEFAULT_MAX_CHARACTERS))
        if item.labels:
            raise InvalidInput(f"{self.config.slug} has fixed labels; candidate labels need a zero-shot model.")
        return item

    def infer(self, batch: list[ClassificationInput]) -> list[Classification]:
        self.require_loaded()
        import torch

        encoded = self.tokenizer(
            [item.text for item in batch],
            padding=True,
            truncation=True,
            max_length=self.option("max_length", 512),
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = self.model(**encoded).logits.float().numpy()
        if self.multi_label:
            probabilities = 1 / (1 + np.exp(-logits))
        else:
            probabilities = _softmax(logits)
        results = []
        for row in probabilities:
            order = np.argsort(-row)
            scores = [LabelScore(label=self.labels[i], score=float(row[i])) for i in order]
            if self.multi_label:
                predicted = [self.labels[i] for i in order if row[i] >= self.thresholds[i]]
            else:
                predicted = [self.labels[int(order[0])]]
            results.append(Classification(scores=scores, predicted=predicted, multi_label=self.multi_label))
        return results

    def warmup_input(self) -> ClassificationInput:
        return ClassificationInput(text="Hello world")


class ZeroShotClassifier(Backend):
    """Similarity between the text and each label's description, both embedded by an embeddings model.

    Works offline with any sentence-embeddings model. Labels come with the request (`labels`) or from
    the spec (`options.labels`: a list, or a mapping label → description or list of descriptions).
    """

    name = "zero-shot-embeddings"
    task = Task.CLASSIFICATION
    option_types: ClassVar[dict[str, Any]] = {
        "labels": (list, dict),
        "template": str,
        "temperature": (float, int),
        "multi_label": bool,
        "threshold": (float, int),
        "max_characters": int,
    }

    def load(self) -> None:
        self.embeddings = self.dependency("embeddings")
        if self.pool is None:
            raise ModelLoadError(f"{self.config.slug}: zero-shot classification runs inside a model pool.")
        self.template = self.option("template", "{}")
        if "{}" not in self.template:
            raise ModelLoadError(f"{self.config.slug}: the template must contain {{}} where the label goes.")
        self.temperature = float(self.option("temperature", 0.05))
        if self.temperature <= 0:
            raise ModelLoadError(f"{self.config.slug}: temperature must be positive.")
        self.default_labels = self._normalise_labels(self.option("labels", None)) if self.option("labels", None) else None
        self._label_vectors: dict[str, np.ndarray] = {}

    @staticmethod
    def _normalise_labels(labels: Any) -> dict[str, list[str]]:
        """label → its descriptions; a bare label describes itself."""
        if isinstance(labels, dict):
            out = {}
            for label, described in labels.items():
                descriptions = [described] if isinstance(described, str) else list(described or [label])
                out[str(label)] = [str(d) for d in descriptions]
            return out
        return {str(label): [str(label)] for label in labels}

    def validate(self, item: Any) -> ClassificationInput:
        item = _validate_text(item, self.option("max_characters", DEFAULT_MAX_CHARACTERS))
        labels = item.labels if item.labels is not None else None
        if labels is None and self.default_labels is None:
            raise InvalidInput(f"{self.config.slug} needs candidate labels.")
        if labels is not None:
            cleaned = tuple(dict.fromkeys(str(label).strip() for label in labels))
            if len(cleaned) < 2 or any(not label for label in cleaned):
                raise InvalidInput("Give at least two distinct, non-empty labels.")
            if len(cleaned) > MAX_ZERO_SHOT_LABELS:
                raise InvalidInput(f"{len(cleaned)} labels; the limit is {MAX_ZERO_SHOT_LABELS}.")
            if any(len(label) > 500 for label in cleaned):
                raise InvalidInput("A label is longer than 500 characters.")
            item = ClassificationInput(text=item.text, labels=cleaned)
        return item

    def _vectors_for(self, descriptions: list[str]) -> np.ndarray:
        """Embeddings of label descriptions, cached: the same labels come back request after request."""
        missing = [d for d in dict.fromkeys(descriptions) if d not in self._label_vectors]
        if missing:
            phrases = [self.template.format(d) for d in missing]
            for description, embedding in zip(missing, self.pool.infer_many(self.embeddings, phrases)):
                self._label_vectors[description] = embedding.vector
            if len(self._label_vectors) > 10_000:  # request-supplied labels must not grow without bound
                self._label_vectors = {d: self._label_vectors[d] for d in descriptions}
        return np.stack([self._label_vectors[d] for d in descriptions])

    def infer(self, batch: list[ClassificationInput]) -> list[Classification]:
        self.require_loaded()
        texts = self.pool.infer_many(self.embeddings, [item.text for item in batch])
        results = []
        for item, text in zip(batch, texts):
            labels = self._normalise_labels(item.labels) if item.labels else self.default_labels
            names = list(labels)
            # A label scores as its best-matching description.
            similarity = np.array(
                [float(np.max(self._vectors_for(labels[name]) @ text.vector)) for name in names]
            )
            multi_label = bool(self.option("multi_label", False))
            if multi_label:
                # Independent scores: cosine similarity mapped from [-1, 1] to [0, 1].
                probabilities = (similarity + 1) / 2
                threshold = float(self.option("threshold", 0.6))
            else:
                probabilities = _softmax(similarity / self.temperature)
                threshold = math.inf
            order = np.argsort(-probabilities)
            scores = [LabelScore(label=names[i], score=float(probabilities[i])) for i in order]
            predicted = [names[i] for i in order if probabilities[i] >= threshold] if multi_label else [names[int(order[0])]]
            results.append(Classification(scores=scores, predicted=predicted, multi_label=multi_label))
        return results

    def warmup_input(self) -> ClassificationInput | None:
        return ClassificationInput(text="Hello world") if self.default_labels else None

    def memory_estimate_mb(self) -> float:
        return 1.0  # the weights belong to the embeddings model
