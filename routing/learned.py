"""A learned routing score: the probability that a local answer agrees with the premium teacher,
predicted from features the router already has (confidence alone is a weak signal, per RouteLLM)."""
from __future__ import annotations

import hashlib
import math
import numbers
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MIN_TRAINING_ROWS = 50
# Soft agreement (chrF and the like, 0..1) counts as agreement from here up: the floor is then read as
# "the probability the answer would have been accepted", a yes/no question like every other verdict.
AGREEMENT_CUT = 0.5
MAX_LABELS = 50
# A label seen fewer times than this gets no calibration of its own: a slope from a handful of rows is noise.
MIN_LABEL_ROWS = 10

SCRIPTS = (
    "Latin", "Cyrillic", "Han", "Arabic", "Devanagari", "Greek", "Hangul", "Hiragana", "Katakana", "Hebrew", "Thai", "other",
)
# (feature key, whether it is a count that needs log1p): counts span orders of magnitude, so the log keeps one
# very long prompt from dominating the fit.
NUMERIC = (("top1", False), ("margin", False), ("length", True), ("words", True), ("complexity", False))
OTHER_LABEL = "other"

# First word of a character's Unicode name → script. CJK is handled apart ("CJK UNIFIED IDEOGRAPH-4E2D").
_SCRIPT_BY_NAME = {
    "LATIN": "Latin", "CYRILLIC": "Cyrillic", "ARABIC": "Arabic", "DEVANAGARI": "Devanagari", "GREEK": "Greek",
    "HANGUL": "Hangul", "HIRAGANA": "Hiragana", "KATAKANA": "Katakana", "HEBREW": "Hebrew", "THAI": "Thai",
}
_WIDTH_PREFIXES = ("FULLWIDTH ", "HALFWIDTH ")
# Enough characters to tell a prompt's script, few enough that a 100 kB prompt costs no more than a short one.
_SCRIPT_SAMPLE = 4096


@lru_cache(maxsize=8192)
def _script_of(char: str) -> str | None:
    if not char.isalpha():
        return None  # digits, punctuation and spaces are shared by every script
    name = unicodedata.name(char, "")
    for prefix in _WIDTH_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
        return "Han"
    if name.startswith("KATAKANA-HIRAGANA"):
        return None  # the prolonged-sound mark belongs to both kana scripts
    return _SCRIPT_BY_NAME.get(name.split(" ", 1)[0].split("-", 1)[0], "other")


def dominant_script(text: str) -> str:
    """The script most of the text's letters are written in (one of SCRIPTS); "other" when it has no letters."""
    # An even sample across the whole text rather than its opening, so a long English preamble does not hide
    # the question asked in another script at the end.
    step = max(1, -(-len(text) // _SCRIPT_SAMPLE))
    counts: dict[str, int] = {}
    for char in text[::step]:
        script = _script_of(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return "other"
    return max(counts, key=counts.__getitem__)


def request_features(
    *,
    top1: float | None,
    margin: float | None,
    text: str,
    label: str | None,
    complexity: float | None = None,
    embedding: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The features stored with a locally answered record and scored by RouterWeights.predict_one."""
    # Plain floats and strings: model outputs arrive as numpy scalars, which json (and so the record) refuses.
    features: dict[str, Any] = {
        "top1": None if top1 is None else float(top1),
        "margin": None if margin is None else float(margin),
        "length": len(text),
        "words": len(text.split()),
        "script": dominant_script(text),
        "label": None if label is None else str(label),
        "complexity": None if complexity is None else float(complexity),
    }
    if embedding is not None:
        features["embedding"] = [float(value) for value in embedding]
    return features


def _number(value: Any) -> float | None:
    """A usable numeric feature, or None: stored features are written by several code paths over time."""
    if type(value) is float:  # the common case, checked first because it runs per request
        return value if math.isfinite(value) else None
    # numbers.Real admits numpy scalars (float32 is no float subclass); a bool is no measurement.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class FeatureEncoder:
    """Turns a features dict into a fixed-width vector; every part of its state is plain JSON."""

    means: dict[str, float]  # imputation values, on the transformed (log1p) scale
    labels: list[str]  # the labels calibrated on their own; everything else is OTHER_LABEL
    scripts: list[str] = field(default_factory=lambda: list(SCRIPTS))
    embedding_dim: int = 0  # 0: no training row had an embedding, so none is used
    center: list[float] = field(default_factory=list)  # standardisation, per column
    scale: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = 2 * len(NUMERIC)
        self._script_index = {script: base + i for i, script in enumerate(self.scripts)}
        base += len(self.scripts)
        self._label_index = {label: base + i for i, label in enumerate([*self.labels, OTHER_LABEL])}
        base += len(self.labels) + 1
        self._interaction_index = {label: base + i for i, label in enumerate(self.labels)}
        base += len(self.labels)
        self._embedding_missing_index = base
        self.sparse_width = base  # columns before the embedding block
        self.width = base + (1 + self.embedding_dim if self.embedding_dim else 0)

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for key, logged in NUMERIC:
            names += [f"log1p_{key}" if logged else key, f"{key}_missing"]
        names += [f"script={script}" for script in self.scripts]
        names += [f"label={label}" for label in [*self.labels, OTHER_LABEL]]
        names += [f"top1*label={label}" for label in self.labels]
        if self.embedding_dim:
            names += ["embedding_missing", *(f"embedding_{i}" for i in range(self.embedding_dim))]
        return names

    @classmethod
    def fit(cls, rows: Sequence[dict[str, Any]]) -> FeatureEncoder:
        means: dict[str, float] = {}
        for key, logged in NUMERIC:
            values = [_number(row.get(key)) for row in rows]
            present = [math.log1p(max(0.0, v)) if logged else v for v in values if v is not None]
            means[key] = math.fsum(present) / len(present) if present else 0.0
        counts = Counter(str(row["label"]) for row in rows if row.get("label") is not None)
        # Ties broken by name so that the same rows always give the same columns.
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        labels = [label for label, count in ranked if count >= MIN_LABEL_ROWS and label != OTHER_LABEL][:MAX_LABELS]
        dims = {len(row["embedding"]) for row in rows if row.get("embedding") is not None}
        if len(dims) > 1:
            raise ValueError(f"training rows carry embeddings of different sizes {sorted(dims)}: one embedding model per router")
        encoder = cls(means=means, labels=labels, embedding_dim=dims.pop() if dims else 0)
        raw = encoder.raw(rows)
        scale = raw.std(axis=0)
        # A constant column (a label absent from every row, a feature never missing) keeps scale 1 rather than
        # dividing by zero; centred, it is all zeros and takes no weight.
        scale[scale < 1e-12] = 1.0
        encoder.center = raw.mean(axis=0).tolist()
        encoder.scale = scale.tolist()
        return encoder

    def sparse(self, features: dict[str, Any]) -> list[tuple[int, float]]:
        """The non-zero (column, value) pairs before the embedding block, unstandardised."""
        pairs: list[tuple[int, float]] = []
        top1 = self.means["top1"]
        for i, (key, logged) in enumerate(NUMERIC):
            value = _number(features.get(key))
            if value is None:
                value = self.means[key]
                pairs.append((2 * i + 1, 1.0))
            elif logged:
                value = math.log1p(max(0.0, value))
            if key == "top1":
                top1 = value
            pairs.append((2 * i, value))
        script = features.get("script")
        if script is not None:
            pairs.append((self._script_index.get(script, self._script_index["other"]), 1.0))
        label = features.get("label")
        label = OTHER_LABEL if label is None else str(label)
        if label in self._interaction_index:
            pairs.append((self._label_index[label], 1.0))
            # Per-label slope on confidence: a model over-confident on one label gets its own calibration.
            pairs.append((self._interaction_index[label], top1))
        else:
            pairs.append((self._label_index[OTHER_LABEL], 1.0))
        return pairs

    def embedding(self, features: dict[str, Any]) -> np.ndarray | None:
        """The row's embedding if the encoder uses one and the row's fits; None scores as "no embedding"."""
        value = features.get("embedding")
        if not self.embedding_dim or value is None or len(value) != self.embedding_dim:
            # A wrong size means another embedding model wrote it: that is a matter for retraining, and the
            # request is still scored from its other features rather than failed.
            return None
        vector = np.asarray(value, dtype=np.float64)
        return vector if np.isfinite(vector).all() else None

    def raw(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Unstandardised feature matrix, one row per features dict."""
        matrix = np.zeros((len(rows), self.width))
        for r, features in enumerate(rows):
            for column, value in self.sparse(features):
                matrix[r, column] = value
            if self.embedding_dim:
                vector = self.embedding(features)
                if vector is None:
                    matrix[r, self._embedding_missing_index] = 1.0
                else:
                    matrix[r, self.sparse_width + 1:] = vector
        return matrix

    def transform(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Standardised feature matrix: what the coefficients were fitted on."""
        return (self.raw(rows) - np.asarray(self.center)) / np.asarray(self.scale)

    def to_json(self) -> dict[str, Any]:
        return {
            "means": dict(self.means),
            "labels": list(self.labels),
            "scripts": list(self.scripts),
            "embedding_dim": self.embedding_dim,
            "center": list(self.center),
            "scale": list(self.scale),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureEncoder:
        encoder = cls(
            means={key: float(data["means"][key]) for key, _ in NUMERIC},
            labels=[str(label) for label in data["labels"]],
            scripts=[str(script) for script in data["scripts"]],
            embedding_dim=int(data["embedding_dim"]),
            center=[float(v) for v in data["center"]],
            scale=[float(v) for v in data["scale"]],
        )
        if len(encoder.center) != encoder.width or len(encoder.scale) != encoder.width:
            raise ValueError(f"encoder state has {len(encoder.center)} columns, its labels and scripts make {encoder.width}")
        return encoder


@dataclass
class RouterWeights:
    """A fitted router: stored as plain JSON, scored with numpy alone (no sklearn on the request path)."""

    encoder: FeatureEncoder
    coefficients: list[float]  # on standardised features, in feature_names order
    intercept: float
    feature_names: list[str]
    trained_on: int
    agreement_rate: float  # share of training rows that agreed: the base rate a floor is read against
    trained_at: str  # ISO 8601, UTC
    params: dict[str, Any] = field(default_factory=dict)  # c, seed, cut, class_weight, sklearn version
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.feature_names != self.encoder.feature_names or len(self.coefficients) != self.encoder.width:
            raise ValueError("router weights do not match their encoder's columns")
        # Standardisation folded into the weights once: a standardised row is dense (centring fills every
        # column), a raw one is a handful of non-zeros, so per request only those few are multiplied.
        scale = np.asarray(self.encoder.scale)
        folded = np.asarray(self.coefficients) / scale
        self._weights = folded
        self._bias = float(self.intercept - folded @ np.asarray(self.encoder.center))
        self._sparse_weights = folded[: self.encoder.sparse_width].tolist()
        self._embedding_missing_weight = float(folded[self.encoder.sparse_width]) if self.encoder.embedding_dim else 0.0
        self._embedding_weights = folded[self.encoder.sparse_width + 1:]

    def predict(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Probability of agreement with the teacher, one per features dict."""
        logits = self.encoder.raw(rows) @ self._weights + self._bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -500.0, 500.0)))

    def predict_one(self, features: dict[str, Any]) -> float:
        """predict() for a single request, without building a matrix."""
        weights = self._sparse_weights
        logit = self._bias
        for column, value in self.encoder.sparse(features):
            logit += weights[column] * value
        if self.encoder.embedding_dim:
            vector = self.encoder.embedding(features)
            if vector is None:
                logit += self._embedding_missing_weight
            else:
                logit += float(self._embedding_weights @ vector)
        return 1.0 / (1.0 + math.exp(-min(500.0, max(-500.0, logit))))

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "encoder": self.encoder.to_json(),
            "coefficients": list(self.coefficients),
            "intercept": self.intercept,
            "feature_names": list(self.feature_names),
            "trained_on": self.trained_on,
            "agreement_rate": self.agreement_rate,
            "trained_at": self.trained_at,
            "params": dict(self.params),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouterWeights:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"router weights of format {data.get('format_version')!r}; this code reads format {FORMAT_VERSION}")
        try:
            return cls(
                encoder=FeatureEncoder.from_json(data["encoder"]),
                coefficients=[float(v) for v in data["coefficients"]],
                intercept=float(data["intercept"]),
                feature_names=[str(name) for name in data["feature_names"]],
                trained_on=int(data["trained_on"]),
                agreement_rate=float(data["agreement_rate"]),
                trained_at=str(data["trained_at"]),
                params=dict(data.get("params", {})),
            )
        except KeyError as missing:
            raise ValueError(f"router weights lack {missing}") from None


def _agreement(agreed: Sequence[bool | float], cut: float) -> np.ndarray:
    values = np.asarray([float(value) for value in agreed])
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError("agreement must be a bool or a score between 0 and 1 for every row")
    return (values >= cut).astype(int)


def fit(
    rows: Sequence[dict[str, Any]],
    agreed: Sequence[bool | float],
    *,
    seed: int = 0,
    c: float = 1.0,
    sample_weight: Sequence[float] | None = None,
    cut: float = AGREEMENT_CUT,
) -> RouterWeights:
    """Fit the router on locally answered rows and whether each agreed with the teacher.

    Soft agreement (0..1, e.g. chrF) counts as agreed at `cut` and above. Classes are not re-weighted, so
    the score stays a calibrated probability that a policy's floor can be read against.
    """
    if len(rows) != len(agreed):
        raise ValueError(f"{len(rows)} feature rows but {len(agreed)} agreement values")
    if len(rows) < MIN_TRAINING_ROWS:
        raise ValueError(f"a learned router needs at least {MIN_TRAINING_ROWS} rows with a teacher verdict, got {len(rows)}")
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    target = _agreement(agreed, cut)
    positives = int(target.sum())
    if positives in (0, len(target)):
        side = "agreed with" if positives else "disagreed with"
        raise ValueError(f"all {len(target)} rows {side} the teacher: one class, nothing to learn from")
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, dtype=np.float64)
        if weights.shape != (len(rows),) or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("sample_weight must hold one finite, non-negative weight per row")

    # Imported here: fitting runs in a scheduled task, and the request path only ever loads RouterWeights.
    import sklearn
    from sklearn.linear_model import LogisticRegression

    encoder = FeatureEncoder.fit(rows)
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=2000, class_weight=None, random_state=seed)
    model.fit(encoder.transform(rows), target, sample_weight=weights)
    return RouterWeights(
        encoder=encoder,
        coefficients=model.coef_[0].tolist(),
        intercept=float(model.intercept_[0]),
        feature_names=encoder.feature_names,
        trained_on=len(rows),
        agreement_rate=positives / len(target),
        trained_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        params={"c": c, "seed": seed, "cut": cut, "class_weight": None, "sklearn": sklearn.__version__},
    )


def split_holdout(n: int, *, fraction: float = 0.3, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of n rows, the held-out share `fraction`, each list in ascending order."""
    if n < 0 or not 0 < fraction < 1:
        raise ValueError("split_holdout needs n >= 0 and 0 < fraction < 1")
    # Ranked by a hash rather than a numpy permutation: the same seed splits the same way on every numpy
    # version, and a row mostly stays on its side as the data set grows.
    rank = sorted(range(n), key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())
    held = round(n * fraction)
    if n >= 2:
        held = min(max(held, 1), n - 1)
    return sorted(rank[held:]), sorted(rank[:held])
