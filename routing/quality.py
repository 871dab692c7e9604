"""The router's judgement: how hard a chat request looks, and whether a local answer may stand."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

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
    text = "\n".join(message.content for message in request.messages)
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


def judge(task: str, inputs: list[Any], outputs: list[Any]) -> Verdict:
    """The weakest item decides: one unreliable answer in a batch escalates the request."""
    check = _CHECKS.get(task)
    if check is None:
        return Verdict(confidence=None)
    verdicts = [check(given, produced) for given, produced in zip(inputs, outputs)]
    problems = [v.problem for v in verdicts if v.problem]
    confidences = [v.confidence for v in verdicts if v.confidence is not None]
    return Verdict(confidence=min(confidences) if confidences else None, problem=problems[0] if problems else None)


def _language_id(given: Any, produced: list[LanguageGuess]) -> Verdict:
    return Verdict(confidence=produced[0].probability if produced else 0.0)


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
    return Verdict(confidence=math.exp(produced.score))


def _speech(given: Any, produced: Transcription) -> Verdict:
    # exp(mean log-probability per token): Whisper's own confidence. Silence is not a failure.
    return Verdict(confidence=math.exp(produced.avg_logprob) if produced.text.strip() else 1.0)


def _intent(given: Any, produced: Intent) -> Verdict:
    return Verdict(confidence=produced.confidence)


def _generation(given: Any, produced: Generation) -> Verdict:
    if not produced.text.strip():
        return Verdict(confidence=None, problem="empty answer")
    return Verdict(confidence=None)


_CHECKS = {
    "language_id": _language_id,
    "classification": _classification,
    "translation": _translation,
    "speech": _speech,
    "intent": _intent,
    "generation": _generation,
}
