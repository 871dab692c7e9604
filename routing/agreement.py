"""How far one local answer agrees with the premium teacher's answer to the same item (0..1), per task:
the local quality a routing curve is drawn from. Chat has no formula here; the judge prompt scores it."""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from inference.errors import InvalidInput
from inference.languages import to_nllb
from inference.payloads import Classification, Embedding, Intent, LanguageGuess, Task, Transcription, Translation

T = TypeVar("T")

# Everything but letters, digits and spaces; "_" counts as a word character to \w, not to a transcript.
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_APOSTROPHES = re.compile(r"['’ʼ]")


class JudgeRequired(ValueError):
    """Chat answers have no reference-based agreement: two good answers can share no words."""


def agreement(task: str, local: Any, teacher: Any) -> float:
    """Agreement of `local`'s answer with `teacher`'s, both the task's payload for one item
    (for language ID, the item's list of guesses)."""
    if task == Task.GENERATION:
        raise JudgeRequired(
            "Chat agreement needs the judge prompt: a premium model grades the local answer against its own, "
            "which is computed elsewhere, not by a formula here."
        )
    measure = _MEASURES.get(task)
    if measure is None:
        known = ", ".join(sorted(_MEASURES))
        raise ValueError(f"No agreement measure for task {task!r}; there is one for {known} (and the judge for generation).")
    return measure(local, teacher)


def _expect(value: Any, kind: type[T], task: str) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"A {task} answer is a {kind.__name__}, not a {type(value).__name__}.")
    return value


# --- language identification ---------------------------------------------------------------
def _language_id(local: Any, teacher: Any) -> float:
    mine, theirs = _top_language(local), _top_language(teacher)
    if mine is None or theirs is None:
        return 1.0 if mine is theirs else 0.0
    return 1.0 if _language(mine) == _language(theirs) else 0.0


def _top_language(guesses: Any) -> str | None:
    if not isinstance(guesses, (list, tuple)) or not all(isinstance(guess, LanguageGuess) for guess in guesses):
        raise TypeError(f"A language_id answer is a list of LanguageGuess, not {type(guesses).__name__}.")
    if not guesses:
        return None
    # The most probable guess decides; a premium guess states no probability, and then the first one does.
    return max(guesses, key=lambda guess: -math.inf if guess.probability is None else guess.probability).language


def _language(code: str) -> str:
    """The language a code names, whatever its spelling: 'en', 'eng' and 'eng_Latn' are one language.

    The script is dropped: language ID answers which language a text is in, and the script is in the
    text for anyone to see, so 'zh' against 'zh-TW' is not a disagreement.
    """
    try:
        return to_nllb(code).split("_")[0]
    except InvalidInput:
        # A code outside NLLB's 200 languages (a detector may know more) still compares by its spelling.
        return code.strip().lower()


# --- classification and intent -------------------------------------------------------------
def _label(label: str) -> str:
    # A teacher may echo a candidate label in another case ("Sports" for "sports").
    return label.strip().casefold()


def _classification(local: Any, teacher: Any) -> float:
    mine, theirs = _expect(local, Classification, "classification"), _expect(teacher, Classification, "classification")
    if mine.multi_label or theirs.multi_label:
        # Multi-label answers are sets of labels over their thresholds: partial overlap is partial agreement.
        left, right = {_label(label) for label in mine.predicted}, {_label(label) for label in theirs.predicted}
        if not left and not right:
            return 1.0  # both say that no label applies
        return len(left & right) / len(left | right)
    return 1.0 if _top_label(mine) == _top_label(theirs) else 0.0


def _top_label(answer: Classification) -> str | None:
    if answer.predicted:
        return _label(answer.predicted[0])
    return _label(answer.scores[0].label) if answer.scores else None


def _intent(local: Any, teacher: Any) -> float:
    mine, theirs = _expect(local, Intent, "intent"), _expect(teacher, Intent, "intent")
    return 1.0 if _label(mine.intent) == _label(theirs.intent) else 0.0


# --- speech --------------------------------------------------------------------------------
def _words(text: str) -> str:
    """Case and punctuation are how a model writes, not what it heard: WER should not count them."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PUNCTUATION.sub(" ", _APOSTROPHES.sub("", text))  # "don't" and "dont" are the same word
    return " ".join(text.split())


def _speech(local: Any, teacher: Any) -> float:
    mine = _words(_expect(local, Transcription, "speech").text)
    theirs = _words(_expect(teacher, Transcription, "speech").text)
    # WER is undefined against an empty reference: silence heard as silence agrees, anything else does not.
    if not mine or not theirs:
        return 1.0 if mine == theirs else 0.0
    import jiwer  # here, not at import: only shadow evaluation and escalation pairs of speech need it

    return max(0.0, 1.0 - jiwer.wer(reference=theirs, hypothesis=mine))


# --- translation ---------------------------------------------------------------------------
def _translation(local: Any, teacher: Any) -> float:
    mine = _expect(local, Translation, "translation").text.strip()
    theirs = _expect(teacher, Translation, "translation").text.strip()
    if not mine or not theirs:
        return 1.0 if mine == theirs else 0.0
    # chrF rather than BLEU: sentence BLEU is mostly zero for short sentences that differ in one
    # word, and chrF's character n-grams credit inflections and compounds the teacher spelled alike.
    import sacrebleu  # here, not at import: every web process would carry it (~13 MB) otherwise

    return min(1.0, max(0.0, sacrebleu.sentence_chrf(mine, [theirs]).score / 100.0))


# --- embeddings ----------------------------------------------------------------------------
def _embeddings(local: Any, teacher: Any) -> float:
    """Cosine of the two vectors, clipped to [0, 1]. It means something only when both live in one
    space: the teacher's model, served locally (quantised or distilled into the same space)."""
    mine = np.asarray(_expect(local, Embedding, "embeddings").vector, dtype=np.float64).ravel()
    theirs = np.asarray(_expect(teacher, Embedding, "embeddings").vector, dtype=np.float64).ravel()
    if mine.shape != theirs.shape:
        raise ValueError(
            f"Embeddings of {mine.size} and {theirs.size} dimensions come from different spaces and cannot be compared."
        )
    norms = float(np.linalg.norm(mine) * np.linalg.norm(theirs))
    if norms == 0.0:
        return 0.0  # a zero vector points nowhere, so it agrees with nothing
    return min(1.0, max(0.0, float(np.dot(mine, theirs)) / norms))


_MEASURES: dict[str, Callable[[Any, Any], float]] = {
    Task.LANGUAGE_ID: _language_id,
    Task.CLASSIFICATION: _classification,
    Task.INTENT: _intent,
    Task.SPEECH: _speech,
    Task.TRANSLATION: _translation,
    Task.EMBEDDINGS: _embeddings,
}
