"""The router's judgement in isolation: complexity scores and quality verdicts."""
from __future__ import annotations

import numpy as np
import pytest

from inference.payloads import (
    AudioInput, ChatMessage, Classification, Generation, GenerationInput, LabelScore, LanguageGuess, Transcription, Translation,
    TranslationInput,
)
from routing.quality import Verdict, complexity, judge_each


def judge(task, inputs, outputs):
    [verdict] = judge_each(task, inputs, outputs)
    return verdict


def ask(*contents: str, max_tokens: int = 64) -> GenerationInput:
    return GenerationInput(messages=tuple(ChatMessage("user", c) for c in contents), max_tokens=max_tokens)


@pytest.mark.parametrize(
    "request_, low, reason",
    [
        (ask("What is the capital of France?"), True, None),
        (ask("Explain step by step why this fails:\n```python\nx = [1,2]\nx[5]\n```"), False, "contains code"),
        (ask("Prove that the integral of x^2 from 0 to 1 is 1/3 and derive the general equation"), False, "mathematics"),
        (ask("hi", max_tokens=3000), True, "asks for up to 3000 tokens"),
        (ask("a", "b", "c", "d", "e", "f"), True, "conversation depth 6"),
    ],
)
def test_complexity_scores_and_explains(request_, low, reason):
    result = complexity(request_)
    assert 0 <= result.score <= 1
    assert (result.score < 0.3) is low
    if reason:
        assert reason in result.reasons


def test_each_item_gets_its_own_verdict():
    guesses = [[LanguageGuess("fr", 0.95)], [LanguageGuess("en", 0.2)]]
    assert [v.confidence for v in judge_each("language_id", ["a", "b"], guesses)] == [0.95, 0.2]


def test_multi_label_confidence_is_the_distance_from_the_boundary():
    result = Classification(scores=[LabelScore("a", 0.95), LabelScore("b", 0.55)], predicted=["a", "b"], multi_label=True)
    assert judge("classification", ["x"], [result]).confidence == pytest.approx(0.1)


@pytest.mark.parametrize(
    "source, output, problem",
    [
        ("Hello there, how are you doing today?", "", "empty translation"),
        ("Hello there, how are you doing today?", "Oui", "length ratio"),
        ("Hello there, how are you doing today?", "Bonjour, comment allez-vous aujourd'hui ?", None),
    ],
)
def test_translation_checks_emptiness_and_length_ratio(source, output, problem):
    verdict = judge("translation", [TranslationInput(source, "fr")], [Translation(output, "en", "fr", -0.1)])
    assert (verdict.problem is None) if problem is None else (problem in verdict.problem)


def test_a_truncated_translation_does_not_stand():
    verdict = judge("translation", [TranslationInput("Hello world, this is long enough", "fr")],
                    [Translation("Bonjour le monde, c'est assez long", "en", "fr", -0.1, truncated=True)])
    assert "length limit" in verdict.problem


def test_speech_confidence_is_the_per_token_probability_and_silence_stands():
    spoken = Transcription("add apples", "en", None, 2.0, avg_logprob=-0.5)
    nothing = Transcription("", "en", None, 2.0, avg_logprob=-3.0)
    assert judge("speech", [None], [spoken]).confidence == pytest.approx(0.6065, abs=1e-3)
    # Silence has nothing to transcribe: the empty transcript stands, with no confidence to route by.
    silence = AudioInput(samples=np.zeros(32_000, np.float32))
    assert judge("speech", [silence], [nothing]) == Verdict(confidence=None)


def test_an_empty_transcript_of_audio_that_is_not_silence_does_not_stand():
    tone = AudioInput(samples=(0.2 * np.sin(np.arange(32_000) * 2 * np.pi * 440 / 16_000)).astype(np.float32))
    verdict = judge("speech", [tone], [Transcription("", "en", None, 2.0, avg_logprob=-0.1)])
    assert verdict.problem == "empty transcript of audio that is not silence" and verdict.confidence == 0.0


def test_a_premium_answer_without_a_score_has_no_confidence():
    assert judge("translation", [TranslationInput("Hello world", "fr")], [Translation("Bonjour le monde", "en", "fr", None)]).confidence is None
    assert judge("speech", [None], [Transcription("add apples", "en", None, 2.0, avg_logprob=None)]).confidence is None


def test_a_local_chat_answer_carries_its_mean_token_probability():
    answer = Generation("Paris.", 12, 3, "stop", mean_logprob=-0.2)
    assert judge("generation", [None], [answer]).confidence == pytest.approx(0.8187, abs=1e-3)
    assert judge("generation", [None], [Generation("Paris.", 12, 3, "stop")]).confidence is None


def test_an_empty_chat_answer_does_not_stand():
    assert judge("generation", [None], [Generation("  ", 3, 1, "stop")]).problem == "empty answer"
