"""Classification: MiniLM-backed sequence classifiers trained here (single- and multi-label) and zero-shot."""
from __future__ import annotations

import json

import pytest

from inference.base import ModelConfig
from inference.errors import InvalidInput, ModelLoadError
from inference.payloads import ClassificationInput

POSITIVE = ["I love this", "great product", "wonderful service", "really happy with it", "excellent quality", "fantastic, thank you"]
NEGATIVE = ["I hate this", "terrible product", "awful service", "really angry about it", "poor quality", "horrible, never again"]


def train_classifier(backbone, out, *, labels, examples, multi_label, steps=60):
    """Fine-tune only the head on a frozen MiniLM: seconds on a CPU, and the labels are learned for real."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(backbone),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("classifier")
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    texts = [text for text, _ in examples]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    if multi_label:
        targets = torch.tensor([[1.0 if label in wanted else 0.0 for label in labels] for _, wanted in examples])
    else:
        targets = torch.tensor([labels.index(wanted) for _, wanted in examples])
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        model(**encoded, labels=targets).loss.backward()
        optimiser.step()
    model.save_pretrained(str(out))  # safetensors
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def sentiment_config(tmp_path_factory, minilm_config):
    out = tmp_path_factory.mktemp("sentiment")
    examples = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    train_classifier(minilm_config.path, out, labels=["negative", "positive"], examples=examples, multi_label=False)
    return ModelConfig(slug="tiny-sentiment", task="classification", backend="transformers-classifier", path=out)


@pytest.fixture(scope="module")
def toxicity_config(tmp_path_factory, minilm_config):
    out = tmp_path_factory.mktemp("toxicity")
    labels = ["insult", "threat", "obscene"]
    examples = [
        ("you are an idiot", {"insult"}), ("what a stupid fool", {"insult"}), ("you moron", {"insult"}),
        ("I will hurt you", {"threat"}), ("watch your back, I'll find you", {"threat"}), ("you will regret this, I'll get you", {"threat"}),
        ("you stupid idiot, I will hurt you", {"insult", "threat"}),
        ("have a nice day", set()), ("the meeting is at noon", set()), ("thanks for the help", set()),
    ]
    train_classifier(minilm_config.path, out, labels=labels, examples=examples, multi_label=True, steps=120)
    # Labels may also come from labels.json, which then wins over the config.
    (out / "labels.json").write_text(json.dumps(labels))
    return ModelConfig(
        slug="tiny-toxicity", task="classification", backend="transformers-classifier", path=out,
        options={"thresholds": {"insult": 0.5, "threat": 0.5, "obscene": 0.9}},
    )


def test_single_label_uses_softmax_and_picks_the_learned_label(shared_pool, sentiment_config):
    happy, angry = shared_pool.infer_many(sentiment_config, ["I love it, great quality", "terrible, I hate it"])
    assert happy.predicted == ["positive"] and angry.predicted == ["negative"]
    for result in (happy, angry):
        assert not result.multi_label
        assert sum(s.score for s in result.scores) == pytest.approx(1.0)
        assert result.scores[0].score >= result.scores[1].score
        assert result.margin == pytest.approx(result.scores[0].score - result.scores[1].score)


def test_multi_label_uses_sigmoid_and_per_label_thresholds(shared_pool, toxicity_config):
    both, calm = shared_pool.infer_many(toxicity_config, ["you idiot, I will hurt you", "see you at the meeting"])
    assert both.multi_label
    assert {"insult", "threat"} <= set(both.predicted)
    assert calm.predicted == []
    assert {s.label for s in both.scores} == {"insult", "threat", "obscene"}
    assert all(0.0 <= s.score <= 1.0 for s in both.scores)


def test_a_fixed_label_model_refuses_candidate_labels(shared_pool, sentiment_config):
    with pytest.raises(InvalidInput, match="zero-shot"):
        shared_pool.infer(sentiment_config, ClassificationInput("hi", labels=("a", "b")))


def test_thresholds_for_unknown_labels_fail_the_load(shared_pool, sentiment_config):
    bad = ModelConfig(slug="bad-thresholds", task="classification", backend="transformers-classifier",
                      path=sentiment_config.path, options={"thresholds": {"spam": 0.3}})
    with pytest.raises(ModelLoadError, match="unknown labels spam"):
        shared_pool.infer(bad, "hello")


@pytest.fixture(scope="module")
def zero_shot_config(minilm_config):
    return ModelConfig(
        slug="zero-shot", task="classification", backend="zero-shot-embeddings", path=minilm_config.path,
        options={"template": "This text is about {}."}, dependencies={"embeddings": minilm_config},
    )


def test_zero_shot_ranks_request_labels_by_meaning(shared_pool, zero_shot_config):
    results = shared_pool.infer_many(zero_shot_config, [
        ClassificationInput("The striker scored twice in the final minutes of the match", labels=("sports", "finance", "cooking")),
        ClassificationInput("Shares fell sharply after the quarterly earnings report", labels=("sports", "finance", "cooking")),
        ClassificationInput("Whisk the eggs, then fold in the flour and bake", labels=("sports", "finance", "cooking")),
    ])
    assert [r.predicted[0] for r in results] == ["sports", "finance", "cooking"]
    assert all(sum(s.score for s in r.scores) == pytest.approx(1.0) for r in results)


def test_zero_shot_labels_may_carry_descriptions(shared_pool, minilm_config):
    config = ModelConfig(
        slug="zero-shot-described", task="classification", backend="zero-shot-embeddings", path=minilm_config.path,
        options={"labels": {"refund": ["I want my money back", "refund my order"], "shipping": ["where is my parcel", "delivery is late"]}},
        dependencies={"embeddings": minilm_config},
    )
    money, parcel = shared_pool.infer_many(config, ["please give me my money back", "my package has not arrived yet"])
    assert money.predicted == ["refund"] and parcel.predicted == ["shipping"]


@pytest.mark.parametrize(
    "item, message",
    [
        (ClassificationInput("text", labels=("only-one",)), "at least two"),
        (ClassificationInput("text", labels=("a", "")), "non-empty"),
        (ClassificationInput("text", labels=tuple(f"l{i}" for i in range(101))), "limit is 100"),
        (ClassificationInput("", labels=("a", "b")), "empty"),
        (ClassificationInput("text"), "needs candidate labels"),
    ],
)
def test_zero_shot_bad_input_is_refused(shared_pool, zero_shot_config, item, message):
    with pytest.raises(InvalidInput, match=message):
        shared_pool.infer(zero_shot_config, item)


def test_zero_shot_without_an_embeddings_dependency_fails_to_load(shared_pool, minilm_config):
    config = ModelConfig(slug="zero-shot-alone", task="classification", backend="zero-shot-embeddings", path=minilm_config.path)
    with pytest.raises(ModelLoadError, match="needs a 'embeddings' model"):
        shared_pool.infer(config, ClassificationInput("x", labels=("a", "b")))
