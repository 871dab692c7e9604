"""The router's judgement: how hard a chat request looks, whether each local answer may stand, and what
the learned router reads of it."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.payloads import Classification, Generation, GenerationInput, Intent, LanguageGuess, Transcription, Translation

_CODE = re.compile(r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction\s*\(|#include|\bSELECT\b.+\bFROM\b|=>|\{\s*\n|;\s*$", re.M | re.I)
_MATH = re.compile(r"\\frac|\\int|\\sum|\b(integral|derivative|theorem|prove|equation|matrix|probability)\b|\d+\s*[\^*/]\s*\d+", re.I)
_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|explain why|reason(ing)?|analy[sz]e|compare|trade-?offs?|justify|evaluate|design an?|"
    r"plan|strategy|pros and cons|derive|critique)\b",
    re.I,
)


@dataclass
class Complexity:
    score: float  # 0 (trivial) … 1 (hard)
    reasons: list[str] = field(default_factory=list)


def complexity(request: GenerationInput) -> Complexity:
    """A cheap, explainable estimate from the request alone; the policy's threshold decides."""
    text = request.prompt
    last = request.messages[-1].content if request.messages else ""
    words = len(text.split())
    parts: list[tuple[float, str]] = []
    if words > 150:
        parts.append((min(0.3, (words - 150) / 1500), f"long input ({words} words)"))
    if _CODE.search(text):
        parts.append((0.35, "contains code"))
    if _MATH.search(last):
        parts.append((0.3, "mathematics"))
    if _REASONING.search(last):
        parts.append((0.25, "asks for multi-step reasoning"))
    non_ascii = sum(1 for ch in last if ord(ch) > 127) / max(1, len(last))
    if non_ascii > 0.3:
        parts.append((0.15, "mostly non-Latin script"))
    turns = sum(1 for message in request.messages if message.role == "user")
    if turns > 3:
        parts.append((min(0.2, 0.05 * (turns - 3)), f"conversation depth {turns}"))
    if request.max_tokens > 512:
        parts.append((min(0.2, (request.max_tokens - 512) / 2560), f"asks for up to {request.max_tokens} tokens"))
    score = min(1.0, sum(weight for weight, _ in parts))
    return Complexity(score=round(score, 3), reasons=[reason for _, reason in parts])


@dataclass
class Verdict:
    confidence: float | None  # None where the task has no confidence signal
    problem: str | None = None  # why the answer must not stand, in words


def judge_each(task: str, inputs: list[Any], outputs: list[Any]) -> list[Verdict]:
    """One verdict per item: the router escalates the items that fail, not the whole request."""
    check = _CHECKS.get(task)
    if check is None:
        return [Verdict(confidence=None) for _ in outputs]
    return [check(given, produced) for given, produced in zip(inputs, outputs)]


def features(task: str, given: Any, produced: Any, *, scored: Complexity | None = None) -> dict[str, Any] | None:
    """What the learned router reads of one locally answered item (routing.learned); None for tasks
    whose local answer has no confidence to route by (embeddings, rerank)."""
    from routing.learned import request_features

    if task == "language_id":
        top = produced[0].probability if produced else 0.0
        second = produced[1].probability if len(produced) > 1 else None
        return request_features(top1=top, margin=None if second is None else top - second, text=given.text,
                                label=produced[0].language if produced else None)
    if task == "classification":
        return request_features(top1=produced.confidence, margin=produced.margin if len(produced.scores) > 1 else None,
                                text=given.text, label=produced.predicted[0] if produced.predicted else None)
    if task == "translation":
        return request_features(top1=None if produced.score is None else math.exp(produced.score), margin=None,
                                text=given.text, label=f"{produced.source or '?'}>{produced.target}")
    if task == "speech":
        return request_features(top1=_speech(given, produced).confidence, margin=None, text=produced.text,
                                label=produced.language)
    if task == "intent":
        scores = [label.score for label in produced.top_k]
        return request_features(top1=produced.confidence, margin=scores[0] - scores[1] if len(scores) > 1 else None,
                                text=produced.transcription.text, label=produced.intent)
    if task == "generation":
        # The plan scored the request's complexity already: pass it rather than score it again.
        return request_features(top1=_generation(given, produced).confidence, margin=None, text=given.prompt, label=None,
                                complexity=(scored or complexity(given)).score)
    return None


def _language_id(given: Any, produced: list[LanguageGuess]) -> Verdict:
    return Verdict(confidence=produced[0].probability if produced else 0.0)  # None for a premium guess


def _classification(given: Any, produced: Classification) -> Verdict:
    if produced.multi_label:
        # Distance from the decision boundary of the least certain label, scaled to [0, 1].
        return Verdict(confidence=min(abs(s.score - 0.5) * 2 for s in produced.scores) if produced.scores else 0.0)
    return Verdict(confidence=produced.confidence)


def _translation(given: Any, produced: Translation) -> Verdict:
    source = getattr(given, "text", "")
    if not produced.text.strip():
        return Verdict(confidence=0.0, problem="empty translation")
    ratio = len(produced.text) / max(1, len(source))
    if len(source) >= 20 and not 0.3 <= ratio <= 3.5:
        return Verdict(confidence=0.0, problem=f"output/input length ratio {ratio:.2f} is implausible")
    if produced.truncated:
        return Verdict(confidence=0.0, problem="the translation was cut at the length limit")
    return Verdict(confidence=None if produced.score is None else math.exp(produced.score))


SILENCE_RMS = 0.005  # about -46 dBFS: below this, 16 kHz float audio holds nothing to transcribe


def _speech(given: Any, produced: Transcription) -> Verdict:
    if not produced.text.strip():
        samples = getattr(given, "samples", None)
        if samples is not None and samples.size and float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) >= SILENCE_RMS:
            return Verdict(confidence=0.0, problem="empty transcript of audio that is not silence")
        return Verdict(confidence=None)  # silence: nothing to say, and nothing to be unsure of
    # exp(mean log-probability per token): Whisper's own confidence.
    return Verdict(confidence=None if produced.avg_logprob is None else math.exp(produced.avg_logprob))


def _intent(given: Any, produced: Intent) -> Verdict:
    return Verdict(confidence=produced.confidence)


def _generation(given: Any, produced: Generation) -> Verdict:
    if not produced.text.strip():
        return Verdict(confidence=None, problem="empty answer")
    # exp(mean log-probability per generated token), where the backend reports it (CTranslate2).
    return Verdict(confidence=None if produced.mean_logprob is None else math.exp(produced.mean_logprob))


_CHECKS = {
    "language_id": _language_id,
    "classification": _classification,
    "translation": _translation,
    "speech": _speech,
    "intent": _intent,
    "generation": _generation,
}
