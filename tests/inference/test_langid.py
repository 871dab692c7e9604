"""Language identification with the packaged fastText lid.176 model."""
from __future__ import annotations

import pytest

from inference.base import ModelConfig
from inference.errors import InvalidInput, ModelLoadError
from inference.langid import FastTextLanguageId, find_fasttext_file
from inference.payloads import LanguageIdInput
from inference.pool import ModelPool


@pytest.fixture(scope="module")
def lid(lid_config):
    backend = FastTextLanguageId(lid_config)
    backend.load()
    backend.loaded = True
    return backend


def run(backend, *items):
    return backend.infer([backend.validate(item) for item in items])


def test_it_identifies_real_languages(lid):
    results = run(
        lid,
        "The weather is lovely today and we are going to the park.",
        "Le temps est magnifique aujourd'hui et nous allons au parc.",
        "Das Wetter ist heute herrlich und wir gehen in den Park.",
        "Hali ya hewa ni nzuri leo na tunaenda kwenye bustani.",
    )
    assert [guesses[0].language for guesses in results] == ["en", "fr", "de", "sw"]
    assert all(0.5 < guesses[0].probability <= 1.0 for guesses in results)


def test_top_k_is_honoured_per_item_in_one_batch(lid):
    results = run(lid, LanguageIdInput("Bonjour tout le monde", top_k=3), LanguageIdInput("Hello everyone", top_k=1))
    assert len(results[0]) == 3 and len(results[1]) == 1
    probabilities = [guess.probability for guess in results[0]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_newlines_do_not_cut_the_text(lid):
    [guesses] = run(lid, "Ceci est une phrase.\nEt voici une autre phrase en français.\n")
    assert guesses[0].language == "fr"


@pytest.mark.parametrize(
    "item, message",
    [("", "empty"), ("   \n", "empty"), ("x" * 100_001, "limit is 100000"), (LanguageIdInput("hi", top_k=0), "top_k"), (42, "takes text")],
)
def test_bad_input_is_refused(lid, item, message):
    with pytest.raises(InvalidInput, match=message):
        lid.validate(item)


def test_a_model_directory_is_searched_for_its_one_fasttext_file(tmp_path, lid_config):
    import shutil

    shutil.copy(lid_config.path, tmp_path / "lid.ftz")
    (tmp_path / "README.txt").write_text("not a model")
    assert find_fasttext_file(tmp_path) == tmp_path / "lid.ftz"
    pool = ModelPool(memory_budget_mb=100)
    try:
        config = ModelConfig(slug="copied-lid", task="language_id", backend="fasttext", path=tmp_path)
        assert pool.infer(config, "Buenos días a todos, ¿cómo estáis?")[0].language == "es"
    finally:
        pool.shutdown()


def test_a_file_that_is_not_fasttext_is_refused_loudly(tmp_path):
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"\x80\x04pickle-ish bytes")
    backend = FastTextLanguageId(ModelConfig(slug="bogus", task="language_id", backend="fasttext", path=bogus))
    with pytest.raises(ModelLoadError, match="not a fastText model"):
        backend.load()
    with pytest.raises(ModelLoadError, match="not found"):
        FastTextLanguageId(ModelConfig(slug="gone", task="language_id", backend="fasttext", path=tmp_path / "nope.ftz")).load()
