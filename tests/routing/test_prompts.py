"""The prompted tasks of routing.prompts through the official SDKs against the fake provider: translation,
classification, language identification and the chat judge; strict parsing, billed tokens on bad output."""
from __future__ import annotations

import json

import pytest

from inference.errors import InvalidInput
from inference.payloads import ChatMessage, LanguageGuess
from routing import prompts
from routing.providers import ProviderBadOutput
from tests.routing.fake_providers import words
from tests.routing.test_providers import KINDS, PATHS, provider


# --- translation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reply", ['{"translation": "Bonjour le monde"}', '```json\n{"translation": "Bonjour le monde"}\n```'])
def test_translate_parses_the_json_answer(fake_providers, kind, reply):
    fake_providers.reply(reply)

    result = prompts.translate(
        provider=provider(fake_providers, kind), model="m", text="Hello world", source="eng_Latn", target="fr"
    )

    assert result.value.text == "Bonjour le monde"
    assert (result.value.source, result.value.target, result.value.truncated) == ("en", "fr", False)
    assert result.value.score is None  # no token probabilities: no confidence claimed
    assert result.tokens_out == len(reply.split())
    assert result.tokens_in > 2
    prompt = str(fake_providers.requests[0].body)
    assert "from English into French" in prompt and '{"translation":' in prompt


@pytest.mark.parametrize(
    "reply",
    [
        "Bonjour le monde",
        'Sure! Here it is: {"translation": "Bonjour"}',
        '{"translation": "Bonjour", "note": "informal"}',
        '{"translation": ""}',
        '{"translation": 42}',
        '["Bonjour"]',
        '{"translation": NaN}',
    ],
)
def test_translate_refuses_anything_but_the_exact_json(fake_providers, reply):
    fake_providers.reply(reply)
    chosen = provider(fake_providers)

    with pytest.raises(ProviderBadOutput, match="unusable answer") as caught:
        prompts.translate(provider=chosen, model="m", text="Hello world", source=None, target="fr")

    assert not caught.value.retryable
    assert caught.value.tokens_out == len(reply.split())  # still billed
    assert chosen.breaker.failures == 0  # the provider answered: not its failure


def test_a_translation_cut_at_max_tokens_is_bad_output(fake_providers):
    fake_providers.reply('{"translation": "Bonjour tout le monde et bienvenue"}')
    with pytest.raises(ProviderBadOutput, match="cut at max_tokens"):
        prompts.translate(provider=provider(fake_providers), model="m", text="Hello", source="en", target="fr", max_tokens=3)


# --- classification ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_classify_parses_a_single_label_and_rescales_its_scores(fake_providers, kind):
    fake_providers.reply('{"label": "billing", "scores": {"billing": 0.6, "shipping": 0.3, "other": 0.1}}')

    result = prompts.classify(
        provider=provider(fake_providers, kind), model="m", text="I was charged twice", labels=["shipping", "billing", "other"]
    )

    assert result.value.predicted == ["billing"] and not result.value.multi_label
    assert [score.label for score in result.value.scores] == ["billing", "shipping", "other"]
    assert [score.score for score in result.value.scores] == pytest.approx([0.6, 0.3, 0.1])
    assert result.tokens_out == 9  # the fake counts the words of its reply


def test_classify_parses_several_labels(fake_providers):
    fake_providers.reply('{"labels": ["urgent", "billing"], "scores": {"billing": 0.7, "urgent": 0.9, "shipping": 0.2}}')

    result = prompts.classify(
        provider=provider(fake_providers), model="m", text="Charged twice, fix it now!", labels=["billing", "urgent", "shipping"],
        multi_label=True,
    )

    assert result.value.predicted == ["urgent", "billing"] and result.value.multi_label
    assert [(score.label, score.score) for score in result.value.scores] == [("urgent", 0.9), ("billing", 0.7), ("shipping", 0.2)]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("It is about billing.", "not JSON"),
        ('{"label": "refund", "scores": {"billing": 0.9, "shipping": 0.1}}', "not one of"),
        ('{"label": "billing", "scores": {"billing": 1.5, "shipping": 0.1}}', "between 0 and 1"),
        ('{"label": "billing", "scores": {"billing": 0.9}}', "exactly the labels"),
        ('{"label": "shipping", "scores": {"billing": 0.9, "shipping": 0.1}}', "top score"),
        ('{"label": "billing"}', "exactly the keys"),
    ],
)
def test_classify_refuses_output_that_does_not_validate(fake_providers, reply, reason):
    fake_providers.reply(reply)
    with pytest.raises(ProviderBadOutput, match=reason):
        prompts.classify(provider=provider(fake_providers), model="m", text="Charged twice", labels=["billing", "shipping"])


def test_multi_label_choices_must_agree_with_the_scores(fake_providers):
    fake_providers.reply('{"labels": ["shipping"], "scores": {"billing": 0.9, "shipping": 0.2}}')
    with pytest.raises(ProviderBadOutput, match="scores lower than a label left out"):
        prompts.classify(
            provider=provider(fake_providers), model="m", text="Charged twice", labels=["billing", "shipping"], multi_label=True
        )


# --- language identification ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_identify_language_gives_one_guess_in_the_codes_local_language_id_uses(fake_providers, kind):
    fake_providers.reply('{"language": "fr"}')

    result = prompts.identify_language(provider=provider(fake_providers, kind), model="m", text="Bonjour tout le monde")

    assert result.value == [LanguageGuess(language="fr", probability=prompts.NO_PROBABILITY)]
    assert result.tokens_out == 2
    [request] = fake_providers.requests_to(PATHS[kind])
    assert result.tokens_in == words(str(request.body.get("system", ""))) + sum(
        words(message["content"]) for message in request.body["messages"]
    )
    assert '{"language": "<code>"}' in str(request.body) and "Bonjour tout le monde" in str(request.body)


def test_a_premium_language_guess_carries_no_invented_confidence(fake_providers):
    fake_providers.reply('{"language": "de"}')

    [guess] = prompts.identify_language(provider=provider(fake_providers), model="m", text="Guten Morgen").value

    assert guess.language == "de"
    assert guess.probability != 1.0
    assert guess.probability is prompts.NO_PROBABILITY is None  # none claimed: the model states no probability


@pytest.mark.parametrize(
    ("code", "normalised"),
    [("fr", "fr"), ("FR", "fr"), ("fra", "fr"), ("pt-BR", "pt"), ("zh-TW", "zh-Hant"), ("ast", "ast"), ("fas", "fa")],
)
def test_identified_codes_are_normalised_with_inference_languages(fake_providers, code, normalised):
    fake_providers.reply(json.dumps({"language": code}))

    [guess] = prompts.identify_language(provider=provider(fake_providers), model="m", text="some text").value

    assert guess.language == normalised


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("French", "not JSON"),
        ('The language is {"language": "fr"}', "not JSON"),
        ('{"language": "fr"} (French)', "not JSON"),
        ('{"language": "xx"}', "not a known ISO 639 code"),
        ('{"language": "French"}', "not a known ISO 639 code"),
        ('{"language": ""}', "not a language code"),
        ('{"language": 33}', "not a language code"),
        ('{"language": "fr", "confidence": 0.99}', "exactly the keys"),
        ('["fr"]', "not an object"),
    ],
)
def test_identify_language_refuses_anything_but_a_known_code_in_the_exact_json(fake_providers, reply, reason):
    fake_providers.reply(reply)
    chosen = provider(fake_providers)

    with pytest.raises(ProviderBadOutput, match=reason) as caught:
        prompts.identify_language(provider=chosen, model="m", text="Bonjour")

    assert not caught.value.retryable
    assert caught.value.tokens_out == words(reply) and caught.value.tokens_in > 0  # still billed
    assert chosen.breaker.failures == 0


# --- the chat judge -------------------------------------------------------------------------------
CONVERSATION = (ChatMessage("system", "You are terse."), ChatMessage("user", "What is the capital of France?"))


@pytest.mark.parametrize("kind", KINDS)
def test_the_judge_rates_a_candidate_against_the_reference(fake_providers, kind):
    fake_providers.reply('{"agreement": 0.75}')

    result = prompts.judge_chat_answer(
        provider=provider(fake_providers, kind), model="m", messages=CONVERSATION, candidate="Lyon.", reference="Paris."
    )

    assert result.value == 0.75
    assert result.tokens_out == 2 and result.tokens_in > 0
    [request] = fake_providers.requests_to(PATHS[kind])
    user = request.body["messages"][-1]
    assert user["role"] == "user"
    # The material travels as one JSON document: nothing in an answer can pass for the prompt's own text.
    assert json.loads(user["content"]) == {
        "conversation": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "reference_answer": "Paris.",
        "candidate_answer": "Lyon.",
    }
    assert '{"agreement": <a number from 0 to 1>}' in str(request.body)


@pytest.mark.parametrize(("reply", "agreement"), [('{"agreement": 1}', 1.0), ('{"agreement": 0}', 0.0),
                                                    ('```json\n{"agreement": 0.4}\n```', 0.4)])
def test_the_judge_takes_any_number_from_0_to_1(fake_providers, reply, agreement):
    fake_providers.reply(reply)
    result = prompts.judge_chat_answer(provider=provider(fake_providers), model="m", messages=CONVERSATION,
                                       candidate="", reference="Paris.")
    assert result.value == agreement and isinstance(result.value, float)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('{"agreement": 1.5}', "between 0 and 1"),
        ('{"agreement": -0.1}', "between 0 and 1"),
        ('{"agreement": true}', "between 0 and 1"),
        ('{"agreement": "0.8"}', "between 0 and 1"),
        ('{"agreement": NaN}', "not JSON"),
        ('{"agreement": Infinity}', "not JSON"),
        ('Both say Paris, so {"agreement": 0.9}', "not JSON"),
        ('{"agreement": 0.9, "reason": "same city"}', "exactly the keys"),
        ("0.9", "not an object"),
    ],
)
def test_the_judge_refuses_anything_but_the_exact_json(fake_providers, reply, reason):
    fake_providers.reply(reply)
    chosen = provider(fake_providers)

    with pytest.raises(ProviderBadOutput, match=reason) as caught:
        prompts.judge_chat_answer(provider=chosen, model="m", messages=CONVERSATION, candidate="Paris", reference="Paris.")

    assert not caught.value.retryable
    assert caught.value.tokens_out == words(reply) and caught.value.tokens_in > 0  # still billed
    assert chosen.breaker.failures == 0


def test_a_judgement_cut_at_max_tokens_is_bad_output(fake_providers):
    fake_providers.reply('{"agreement": 0.5, "and": "a long explanation nobody asked for"}')
    with pytest.raises(ProviderBadOutput, match="cut at max_tokens"):
        prompts.judge_chat_answer(provider=provider(fake_providers), model="m", messages=CONVERSATION, candidate="Paris",
                                  reference="Paris.", max_tokens=4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"messages": (), "candidate": "a", "reference": "b"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "candidate": "a", "reference": "b"}, "messages\\[0\\]"),
        ({"messages": CONVERSATION, "candidate": None, "reference": "b"}, "candidate"),
        ({"messages": CONVERSATION, "candidate": "a", "reference": "  "}, "reference"),
    ],
)
def test_the_judge_refuses_unusable_material_before_any_call(fake_providers, arguments, message):
    with pytest.raises(InvalidInput, match=message):
        prompts.judge_chat_answer(provider=provider(fake_providers), model="m", **arguments)
    assert fake_providers.requests == []
