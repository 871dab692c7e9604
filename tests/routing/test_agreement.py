"""Agreement of a local answer with the premium teacher's, task by task, on real payloads."""
from __future__ import annotations

import numpy as np
import pytest

from inference.payloads import (
    Classification, Embedding, Generation, Intent, LabelScore, LanguageGuess, Transcription, Translation,
)
from routing.agreement import JudgeRequired, agreement


def guesses(*pairs: tuple[str, float]) -> list[LanguageGuess]:
    return [LanguageGuess(code, probability) for code, probability in pairs]


def single(label: str) -> Classification:
    return Classification(scores=[LabelScore(label, 0.9), LabelScore("other", 0.1)], predicted=[label])


def multi(*labels: str) -> Classification:
    return Classification(scores=[LabelScore(label, 0.8) for label in labels], predicted=list(labels), multi_label=True)


def heard(text: str) -> Transcription:
    return Transcription(text=text, language="en", language_probability=0.99, duration=2.0, avg_logprob=-0.2)


def intent(name: str) -> Intent:
    return Intent(transcription=heard("wake me up at seven"), intent=name, confidence=0.8, top_k=[LabelScore(name, 0.8)])


def translated(text: str) -> Translation:
    return Translation(text=text, source="en", target="fr", score=-0.3)


def embedded(*values: float) -> Embedding:
    vector = np.array(values, dtype=np.float32)
    return Embedding(vector=vector / np.linalg.norm(vector), tokens=3)


# --- language identification ---------------------------------------------------------------
@pytest.mark.parametrize(
    "local, teacher",
    [
        ("en", "eng"),
        ("en", "eng_Latn"),
        ("zh", "zh-Hans"),
        ("zh", "cmn"),
        ("zh", "zh-TW"),  # the same language in another script
        ("no", "nb"),
        ("iw", "he"),
        ("FR", "fr"),
        ("xx", "XX"),  # outside NLLB's languages, compared by spelling
    ],
)
def test_two_spellings_of_one_language_agree(local, teacher):
    assert agreement("language_id", guesses((local, 0.9)), guesses((teacher, 0.8))) == 1.0


def test_different_languages_disagree():
    assert agreement("language_id", guesses(("fr", 0.9)), guesses(("en", 0.9))) == 0.0
    assert agreement("language_id", guesses(("yue", 0.9)), guesses(("zh", 0.9))) == 0.0  # Cantonese is not Mandarin


def test_only_the_top_guesses_are_compared():
    local = guesses(("es", 0.3), ("pt", 0.6))  # the most probable guess decides, wherever it is listed
    assert agreement("language_id", local, guesses(("pt", 0.7), ("es", 0.2))) == 1.0
    assert agreement("language_id", local, guesses(("es", 0.7), ("pt", 0.2))) == 0.0


def test_no_guesses_agree_only_with_no_guesses():
    assert agreement("language_id", [], []) == 1.0
    assert agreement("language_id", [], guesses(("en", 0.9))) == 0.0


# --- classification and intent -------------------------------------------------------------
def test_single_label_answers_agree_on_the_top_label():
    assert agreement("classification", single("sports"), single("sports")) == 1.0
    assert agreement("classification", single("sports"), single("Sports")) == 1.0
    assert agreement("classification", single("sports"), single("finance")) == 0.0


def test_multi_label_answers_agree_by_the_overlap_of_their_label_sets():
    assert agreement("classification", multi("a", "b"), multi("b", "a")) == 1.0
    assert agreement("classification", multi("a", "b"), multi("b", "c")) == pytest.approx(1 / 3)
    assert agreement("classification", multi("a"), multi("b")) == 0.0
    assert agreement("classification", multi(), multi()) == 1.0
    assert agreement("classification", multi(), multi("a")) == 0.0


def test_intents_agree_when_they_name_the_same_intent():
    assert agreement("intent", intent("set_alarm"), intent("set_alarm")) == 1.0
    assert agreement("intent", intent("set_alarm"), intent("play_music")) == 0.0


# --- speech --------------------------------------------------------------------------------
def test_case_and_punctuation_are_not_transcription_errors():
    assert agreement("speech", heard("Hello, world! Don't stop."), heard("hello world dont stop")) == 1.0


def test_transcripts_agree_by_one_minus_their_word_error_rate():
    assert agreement("speech", heard("turn off the lights"), heard("turn on the lights")) == pytest.approx(0.75)


def test_a_transcript_far_longer_than_the_teacher_scores_zero_not_below():
    assert agreement("speech", heard("one two three four five"), heard("hello")) == 0.0


@pytest.mark.parametrize(
    "local, teacher, expected",
    [("", "", 1.0), ("", " ... ", 1.0), ("", "hello", 0.0), ("hello", "", 0.0)],
)
def test_empty_transcripts(local, teacher, expected):
    assert agreement("speech", heard(local), heard(teacher)) == expected


# --- translation ---------------------------------------------------------------------------
def test_identical_translations_agree_fully():
    text = "Bonjour, comment allez-vous aujourd'hui ?"
    assert agreement("translation", translated(text), translated(text)) == pytest.approx(1.0)


def test_close_translations_agree_more_than_unrelated_ones():
    teacher = translated("Le chat dort sur le canapé du salon.")
    close = agreement("translation", translated("Le chat dort sur le canapé dans le salon."), teacher)
    unrelated = agreement("translation", translated("Les impôts augmentent chaque année en mars."), teacher)
    assert 0.6 < close < 1.0
    assert unrelated < 0.25


def test_empty_translations_agree_only_with_empty_ones():
    assert agreement("translation", translated(""), translated("")) == 1.0
    assert agreement("translation", translated(""), translated("Bonjour")) == 0.0


# --- embeddings ----------------------------------------------------------------------------
def test_embeddings_agree_by_their_cosine_clipped_to_zero_and_one():
    assert agreement("embeddings", embedded(1, 2, 3), embedded(1, 2, 3)) == pytest.approx(1.0)
    assert agreement("embeddings", embedded(1, 1, 0), embedded(1, 0, 0)) == pytest.approx(np.sqrt(0.5))
    assert agreement("embeddings", embedded(1, 0, 0), embedded(0, 1, 0)) == 0.0
    assert agreement("embeddings", embedded(1, 0, 0), embedded(-1, 0, 0)) == 0.0


def test_embeddings_of_different_dimensions_cannot_be_compared():
    with pytest.raises(ValueError, match="different spaces"):
        agreement("embeddings", embedded(1, 0, 0), embedded(1, 0))


# --- what has no formula -------------------------------------------------------------------
def test_chat_agreement_needs_the_judge():
    answer = Generation(text="Hi!", tokens_in=3, tokens_out=2, finish_reason="stop")
    with pytest.raises(JudgeRequired, match="judge prompt"):
        agreement("generation", answer, answer)


@pytest.mark.parametrize("task", ["rerank", "summarisation", ""])
def test_a_task_without_a_measure_is_an_error(task):
    with pytest.raises(ValueError, match="No agreement measure"):
        agreement(task, None, None)


def test_a_payload_of_another_task_is_refused():
    with pytest.raises(TypeError, match="translation answer is a Translation"):
        agreement("translation", heard("hello"), translated("hello"))
    with pytest.raises(TypeError, match="list of LanguageGuess"):
        agreement("language_id", LanguageGuess("en", 0.9), guesses(("en", 0.9)))
