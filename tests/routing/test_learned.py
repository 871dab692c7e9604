"""The learned router in isolation: features, fitting, scoring, storage as JSON, and the held-out split."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from routing.learned import (
    MIN_TRAINING_ROWS, RouterWeights, dominant_script, fit, request_features, split_holdout,
)

CALIBRATED = ("en", "fr", "de", "es")


def synthetic(n: int, *, seed: int = 0, embedding_every: int = 0) -> tuple[list[dict], list[bool]]:
    """Calibrated labels agree as often as top1 says; "xx" always claims 0.99 but agrees 30% of the time."""
    rng = np.random.default_rng(seed)
    rows, agreed = [], []
    for i in range(n):
        if rng.random() < 0.25:
            label, top1, chance = "xx", float(rng.uniform(0.98, 1.0)), 0.3
        else:
            label = CALIBRATED[int(rng.integers(len(CALIBRATED)))]
            top1 = float(rng.uniform(0.3, 1.0))
            chance = top1
        text = "word " * int(rng.integers(1, 40))
        row = request_features(top1=top1, margin=top1 * 0.5, text=text, label=label, complexity=float(rng.random()))
        if embedding_every and i % embedding_every == 0:
            row["embedding"] = rng.normal(size=8).tolist()
        rows.append(row)
        agreed.append(bool(rng.random() < chance))
    return rows, agreed


@pytest.fixture(scope="module")
def data() -> tuple[list[dict], list[bool]]:
    return synthetic(3000)


@pytest.fixture(scope="module")
def weights(data) -> RouterWeights:
    rows, agreed = data
    return fit(rows, agreed)


def test_it_separates_agreement_far_better_than_confidence_alone(data):
    rows, agreed = data
    train, held = split_holdout(len(rows))
    router = fit([rows[i] for i in train], [agreed[i] for i in train])
    truth = [agreed[i] for i in held]
    learned = roc_auc_score(truth, router.predict([rows[i] for i in held]))
    confidence = roc_auc_score(truth, [rows[i]["top1"] for i in held])
    # The best any router can do here is to know the true chance of agreement.
    oracle = roc_auc_score(truth, [0.3 if rows[i]["label"] == "xx" else rows[i]["top1"] for i in held])
    assert learned > confidence + 0.2, (learned, confidence)
    assert learned > oracle - 0.02, (learned, oracle)


def test_it_keeps_the_score_a_calibrated_probability(weights, data):
    # No class re-weighting: the mean score matches the agreement rate, so a floor of 0.7 means 70%.
    rows, agreed = data
    assert weights.predict(rows).mean() == pytest.approx(np.mean(agreed), abs=0.01)
    xx = [row for row in rows if row["label"] == "xx"]
    assert weights.predict(xx).mean() == pytest.approx(0.3, abs=0.05)


def test_weights_survive_a_json_round_trip_with_identical_predictions(weights, data):
    rows, _ = data
    stored = json.loads(json.dumps(weights.to_json()))
    loaded = RouterWeights.from_json(stored)
    assert np.abs(loaded.predict(rows) - weights.predict(rows)).max() < 1e-9
    assert loaded.feature_names == weights.feature_names
    assert stored["trained_on"] == 3000 and stored["params"]["class_weight"] is None


def test_predict_one_matches_predict(weights, data):
    rows, _ = data
    batch = weights.predict(rows[:200])
    assert [weights.predict_one(row) for row in rows[:200]] == pytest.approx(batch.tolist(), abs=1e-12)


@pytest.mark.parametrize(
    "rows, agreed, message",
    [
        ([{}] * (MIN_TRAINING_ROWS - 1), [True, False] * 24 + [True], "at least"),
        ([{"top1": 0.9}] * 100, [True] * 100, "one class"),
        ([{"top1": 0.9}] * 100, [0.2] * 100, "one class"),
        ([{"top1": 0.9}] * 100, [True] * 99, "agreement values"),
        ([{"top1": 0.9}] * 100, [1.5, 0.0] * 50, "between 0 and 1"),
    ],
)
def test_it_refuses_what_it_cannot_learn_from(rows, agreed, message):
    with pytest.raises(ValueError, match=message):
        fit(rows, agreed)


def test_it_cuts_soft_agreement_at_one_half(data):
    rows, agreed = data
    rng = np.random.default_rng(1)
    chrf = [float(rng.uniform(0.5, 1.0)) if ok else float(rng.uniform(0.0, 0.499)) for ok in agreed]
    assert fit(rows, chrf).coefficients == fit(rows, agreed).coefficients


def test_an_unknown_label_scores_as_other_without_error(weights):
    row = request_features(top1=0.8, margin=0.3, text="bonjour", label="never-seen")
    assert weights.predict_one(row) == weights.predict_one({**row, "label": "also-unseen"})
    assert weights.predict_one(row) == weights.predict_one({**row, "label": None})
    assert weights.predict([row])[0] == pytest.approx(weights.predict_one(row), abs=1e-12)


@pytest.mark.parametrize("row", [{}, {"top1": None, "margin": None}, {"top1": float("nan"), "label": "xx"}, {"script": "Klingon"}])
def test_missing_or_unusable_features_are_imputed(weights, row):
    score = weights.predict_one(row)
    assert 0 < score < 1
    assert weights.predict([row])[0] == pytest.approx(score, abs=1e-12)


def test_embeddings_are_used_when_training_rows_have_them():
    rows, agreed = synthetic(600, embedding_every=2)
    router = fit(rows, agreed)
    assert router.encoder.embedding_dim == 8 and "embedding_missing" in router.feature_names
    with_embedding, without = rows[0], rows[1]
    assert "embedding" in with_embedding and "embedding" not in without
    loaded = RouterWeights.from_json(json.loads(json.dumps(router.to_json())))
    for row in (with_embedding, without, {**with_embedding, "embedding": [0.0] * 3}):
        assert loaded.predict_one(row) == pytest.approx(router.predict([row])[0], abs=1e-12)


def test_embeddings_are_ignored_by_a_router_trained_without_them(weights, data):
    row = data[0][0]
    assert weights.predict_one({**row, "embedding": [0.5] * 384}) == weights.predict_one(row)


def test_it_refuses_embeddings_of_different_sizes():
    rows, agreed = synthetic(100)
    rows[0] = {**rows[0], "embedding": [0.0] * 4}
    rows[1] = {**rows[1], "embedding": [0.0] * 8}
    with pytest.raises(ValueError, match="different sizes"):
        fit(rows, agreed)


def test_it_rejects_weights_of_another_format(weights):
    with pytest.raises(ValueError, match="format"):
        RouterWeights.from_json({**weights.to_json(), "format_version": 99})


def test_split_holdout_is_deterministic_disjoint_and_complete():
    train, held = split_holdout(1000, fraction=0.3, seed=7)
    assert (train, held) == split_holdout(1000, fraction=0.3, seed=7)
    assert len(held) == 300 and sorted(train + held) == list(range(1000))
    assert held != split_holdout(1000, fraction=0.3, seed=8)[1]


@pytest.mark.parametrize(
    "text, script",
    [
        ("The quick brown fox jumps over the lazy dog.", "Latin"),
        ("Съешь же ещё этих мягких французских булок.", "Cyrillic"),
        ("我们今天去公园散步吧。", "Han"),
        ("مرحبا بكم في المدينة", "Arabic"),
        ("मुझे हिंदी पढ़ना पसंद है", "Devanagari"),
        ("Καλημέρα κόσμε", "Greek"),
        ("안녕하세요 여러분", "Hangul"),
        ("ＡＢＣ　ｆｕｌｌｗｉｄｔｈ", "Latin"),
        ("Hello, мир!", "Latin"),
        ("Привет, world", "Cyrillic"),
        ("", "other"),
        ("12345 !?", "other"),
        ("ሰላም", "other"),
    ],
)
def test_dominant_script_names_the_script_most_letters_use(text, script):
    assert dominant_script(text) == script


def test_request_features_stores_plain_json():
    features = request_features(
        top1=np.float32(0.75), margin=None, text="Bonjour tout le monde", label="fr", embedding=np.ones(3, dtype=np.float32),
    )
    assert json.loads(json.dumps(features)) == {
        "top1": 0.75, "margin": None, "length": 21, "words": 4, "script": "Latin", "label": "fr", "complexity": None,
        "embedding": [1.0, 1.0, 1.0],
    }
