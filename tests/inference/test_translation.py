"""The CTranslate2 translator on tiny NLLB- and Marian-style models built here, and the language codes it accepts."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ctranslate2
import pytest
import sentencepiece

from inference.base import ModelConfig
from inference.errors import InferenceError, InvalidInput, ModelLoadError
from inference.languages import NLLB_CODES, language_name, to_iso, to_nllb
from inference.payloads import Translation, TranslationInput
from inference.pool import ModelPool
from inference.translation import CTranslate2Translator, _split_sentences
from tests.inference.tiny_translation import M2M100_LANGUAGES, build_tiny_marian, build_tiny_nllb

SENTENCES = [
    "Hello world.",
    "The cat sat on a mat.",
    "This is one good sentence.",
    "Two three four five.",
    "Good morning world.",
]


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("translation")


@pytest.fixture(scope="module")
def nllb_path(models_dir: Path) -> Path:
    return build_tiny_nllb(models_dir / "nllb")


@pytest.fixture(scope="module")
def marian_path(models_dir: Path) -> Path:
    return build_tiny_marian(models_dir / "marian")


def model_config(path: Path, slug: str = "tiny-translator", **options: Any) -> ModelConfig:
    return ModelConfig(slug=slug, task="translation", backend="ctranslate2-translator", path=path, options=options)


def loaded(path: Path, **options: Any) -> CTranslate2Translator:
    backend = CTranslate2Translator(model_config(path, **options))
    backend.load()
    backend.loaded = True  # what the pool does after load()
    return backend


@pytest.fixture(scope="module")
def nllb(nllb_path: Path) -> CTranslate2Translator:
    return loaded(nllb_path)


@pytest.fixture(scope="module")
def marian(marian_path: Path) -> CTranslate2Translator:
    return loaded(marian_path, source_language="en", target_language="fr")


@pytest.fixture(scope="module")
def raw_nllb(nllb_path: Path) -> tuple[ctranslate2.Translator, sentencepiece.SentencePieceProcessor]:
    """The same model driven by hand, as the CTranslate2 documentation does it."""
    translator = ctranslate2.Translator(str(nllb_path), device="cpu", compute_type="int8")
    return translator, sentencepiece.SentencePieceProcessor(model_file=str(nllb_path / "sentencepiece.bpe.model"))


def translate(backend: CTranslate2Translator, *items: TranslationInput) -> list[Any]:
    return backend.infer([backend.validate(item) for item in items])


# --- language codes --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("en", "eng_Latn"), ("fr", "fra_Latn"), ("sw", "swh_Latn"), ("de", "deu_Latn"), ("es", "spa_Latn"),
        ("zh", "zho_Hans"), ("eng", "eng_Latn"), ("fra", "fra_Latn"), ("swa", "swh_Latn"), ("ara", "arb_Arab"),
        ("fra_Latn", "fra_Latn"), ("ENG_LATN", "eng_Latn"), (" fr ", "fra_Latn"), ("pt-BR", "por_Latn"),
        ("zh-TW", "zho_Hant"), ("zh-Hant", "zho_Hant"), ("zh_CN", "zho_Hans"), ("no", "nob_Latn"), ("iw", "heb_Hebr"),
    ],
)
def test_language_codes_resolve_to_flores_200(code: str, expected: str):
    assert to_nllb(code) == expected


def test_the_table_holds_the_202_flores_codes_nllb_uses():
    assert len(NLLB_CODES) == len(set(NLLB_CODES)) == 202
    assert {"eng_Latn", "fra_Latn", "swh_Latn", "zho_Hans", "zho_Hant", "yue_Hant", "ace_Arab"} <= set(NLLB_CODES)
    assert language_name("sw") == "Swahili"


def test_every_flores_code_round_trips_through_its_iso_code():
    assert [code for code in NLLB_CODES if to_nllb(to_iso(code)) != code] == []
    assert (to_iso("eng_Latn"), to_iso("zho_Hant"), to_iso("ast_Latn"), to_iso("fra")) == ("en", "zh-Hant", "ast", "fr")


@pytest.mark.parametrize("code", ["xx_Fake", "xx", "klingon", "", "   ", "en-US-nonsense", "sr-Latn"])
def test_an_unknown_language_code_is_refused_with_a_clear_message(code: str):
    with pytest.raises(InvalidInput) as caught:
        to_nllb(code)
    if code.strip():
        assert repr(code) in str(caught.value)


# --- NLLB ------------------------------------------------------------------------------------
def test_it_detects_an_nllb_model_and_its_languages_from_the_files(nllb: CTranslate2Translator):
    assert nllb.family == "nllb"
    assert nllb.target_languages == nllb.source_languages == {
        "eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "swh_Latn", "zho_Hans",
    }


def test_it_translates_and_reports_iso_codes_and_a_log_probability(nllb: CTranslate2Translator):
    [result] = translate(nllb, TranslationInput("Hello world.", target="fra_Latn", source="eng"))
    assert isinstance(result, Translation)
    assert result.text and isinstance(result.text, str)
    assert (result.source, result.target) == ("en", "fr")
    assert math.isfinite(result.score) and result.score <= 0


def test_the_target_language_token_is_forced_then_stripped(nllb: CTranslate2Translator, raw_nllb):
    translator, sp = raw_nllb
    source = ["eng_Latn", *sp.encode("The cat sat on a mat.", out_type=str), "</s>"]
    [raw] = translator.translate_batch([source], target_prefix=[["deu_Latn"]], beam_size=2, max_decoding_length=257)
    assert raw.hypotheses[0][0] == "deu_Latn"

    [result] = translate(nllb, TranslationInput("The cat sat on a mat.", target="de", source="en"))
    # Random weights also emit language and special tokens mid-sentence: none of them is text.
    special = {*NLLB_CODES, "<s>", "<pad>", "</s>", "<mask>"}
    assert result.text == sp.decode([t for t in raw.hypotheses[0][1:] if t not in special]).strip()
    assert not any(code in result.text for code in NLLB_CODES)


def test_the_score_is_the_mean_log_probability_per_generated_token(raw_nllb, nllb: CTranslate2Translator, nllb_path: Path):
    # The default limit lets these outputs end with </s>; a short one stops them first. Both count.
    short = loaded(nllb_path, max_decoding_length=12)
    translator, sp = raw_nllb
    seen_endings = set()
    for backend, limit in [(nllb, 256), (short, 12)]:
        for text, target in [("Hello world.", "fra_Latn"), ("Good morning.", "swh_Latn")]:
            [result] = translate(backend, TranslationInput(text, target=target, source="eng_Latn"))
            source = ["eng_Latn", *sp.encode(text, out_type=str), "</s>"]
            [hypothesis] = translator.translate_batch(
                [source], target_prefix=[[target]], beam_size=2, max_decoding_length=limit + 1, return_end_token=True
            )
            tokens = hypothesis.hypotheses[0]
            ended = tokens[-1] == "</s>"
            seen_endings.add(ended)
            # score_batch gives the log-probability of every target token (and of a final </s>):
            # keep the generated ones, the forced language token excluded.
            scored = translator.score_batch([source], [tokens[:-1] if ended else tokens])[0].log_probs
            generated = scored[1 : len(tokens)]
            assert result.truncated is not ended
            assert result.score == pytest.approx(sum(generated) / len(generated), abs=1e-3)
    assert seen_endings == {True, False}


def test_a_batch_with_mixed_targets_runs_as_one_translate_call(nllb_path: Path):
    backend = loaded(nllb_path)
    calls: list[list[list[str]]] = []
    translator = backend._translator

    class Recording:
        def translate_batch(self, source: list[list[str]], **kwargs: Any) -> Any:
            calls.append(kwargs["target_prefix"])
            return translator.translate_batch(source, **kwargs)

    backend._translator = Recording()
    targets = ["fr", "de", "es", "sw", "zh"]
    results = translate(backend, *(TranslationInput("Hello world.", target=t, source="en") for t in targets))
    assert [r.target for r in results] == targets
    assert calls == [[["fra_Latn"], ["deu_Latn"], ["spa_Latn"], ["swh_Latn"], ["zho_Hans"]]]
    alone = [translate(backend, TranslationInput("Hello world.", target=t, source="en"))[0].text for t in targets]
    assert [r.text for r in results] == alone


def test_a_long_input_is_split_into_sentences_and_rejoined_in_order(nllb_path: Path):
    backend = loaded(nllb_path, max_input_tokens=24)
    pieces = [len(backend._encode(sentence)) for sentence in SENTENCES]
    assert max(pieces) <= 24 < sum(pieces)  # each sentence fits, the whole text does not

    [whole] = translate(backend, TranslationInput("\n".join(SENTENCES), target="fr", source="en"))
    alone = translate(backend, *(TranslationInput(s, target="fr", source="en") for s in SENTENCES))
    assert whole.text.split("\n") == [result.text for result in alone]
    scores = [result.score for result in alone]
    assert min(scores) - 1e-6 <= whole.score <= max(scores) + 1e-6  # a token-weighted mean of the parts


def test_sentences_separated_by_spaces_are_rejoined_with_spaces(nllb_path: Path):
    backend = loaded(nllb_path, max_input_tokens=24, max_decoding_length=12)
    [whole] = translate(backend, TranslationInput(" ".join(SENTENCES), target="fr", source="en"))
    alone = translate(backend, *(TranslationInput(s, target="fr", source="en") for s in SENTENCES))
    assert whole.text == " ".join(result.text for result in alone if result.text)


def test_a_sentence_longer_than_the_limit_is_cut_at_word_boundaries(nllb_path: Path):
    backend = loaded(nllb_path, max_input_tokens=8, max_decoding_length=12)
    words = "hello world the cat sat on a mat " * 6
    segments = backend._segments(0, backend.validate(TranslationInput(words, target="fr", source="en")))
    assert len(segments) > 1
    assert all(len(segment.tokens) <= 8 and segment.tokens[0].startswith("▁") for segment in segments)
    assert sum((segment.tokens for segment in segments), []) == backend._encode(words)
    [result] = translate(backend, TranslationInput(words, target="fr", source="en"))
    assert isinstance(result, Translation) and result.text


def test_sentences_split_after_cjk_full_stops_and_line_breaks():
    assert _split_sentences("你好。世界！ Yes.  No?\n\nMaybe") == [
        ("你好。", ""), ("世界！", " "), ("Yes.", "  "), ("No?", "\n\n"), ("Maybe", ""),
    ]


def test_hitting_max_decoding_length_is_reported_as_truncated(nllb_path: Path):
    [result] = translate(loaded(nllb_path, max_decoding_length=3), TranslationInput("Hello world.", "fr", "en"))
    assert result.truncated
    assert len(result.text) > 0


def test_a_text_already_in_the_target_language_comes_back_unchanged(nllb: CTranslate2Translator):
    [result] = translate(nllb, TranslationInput("Hello world.", target="eng_Latn", source="en"))
    assert result == Translation("Hello world.", "en", "en", 0.0)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (TranslationInput("", target="fr", source="en"), "empty"),
        (TranslationInput(" \n\t", target="fr", source="en"), "empty"),
        (TranslationInput("a" * 1_000_000, target="fr", source="en"), "1000000 characters"),
        (TranslationInput("Hello", target="xx_Fake", source="en"), "xx_Fake"),
        (TranslationInput("Hello", target="fr", source="xx_Fake"), "xx_Fake"),
        (TranslationInput("Hello", target="ja", source="en"), "Japanese"),
        (TranslationInput("Hello", target="fr"), "source language"),
        ("Hello", "TranslationInput"),
    ],
)
def test_bad_input_is_refused_before_batching(nllb: CTranslate2Translator, item: Any, message: str):
    with pytest.raises(InvalidInput, match=message):
        nllb.validate(item)


def test_a_bad_item_fails_alone_in_a_batch(nllb: CTranslate2Translator):
    results = nllb.infer([
        TranslationInput("Hello world.", target="fr", source="en"),
        TranslationInput("Hello", target="xx_Fake", source="en"),
        TranslationInput("", target="fr", source="en"),
        TranslationInput("Good morning.", target="de", source="en"),
    ])
    assert [type(r) for r in results] == [Translation, InvalidInput, InvalidInput, Translation]
    assert isinstance(results[1], InferenceError) and "xx_Fake" in str(results[1])


def test_a_default_source_language_can_be_configured(nllb_path: Path):
    backend = loaded(nllb_path, source_language="en", max_decoding_length=4)
    [result] = translate(backend, TranslationInput("Hello world.", target="fr"))
    assert result.source == "en"


def test_m2m100_language_tokens_are_recognised(models_dir: Path):
    backend = loaded(build_tiny_nllb(models_dir / "m2m100", language_tokens=M2M100_LANGUAGES), max_decoding_length=8)
    assert backend.target_languages == {"eng_Latn", "fra_Latn", "deu_Latn"}
    [result] = translate(backend, TranslationInput("Hello world.", target="fr", source="en"))
    assert result.target == "fr" and "__fr__" not in result.text
    with pytest.raises(InvalidInput, match="Spanish"):
        backend.validate(TranslationInput("Hello", target="es", source="en"))


def test_warmup_translates_hello_into_a_supported_language(nllb: CTranslate2Translator, marian: CTranslate2Translator):
    assert nllb.warmup_input() == TranslationInput("Hello", target="fra_Latn", source="eng_Latn")
    assert marian.warmup_input() == TranslationInput("Hello", target="fra_Latn", source="eng_Latn")
    nllb.warmup()
    marian.warmup()


def test_the_memory_estimate_follows_the_compute_type(nllb_path: Path):
    int8 = CTranslate2Translator(model_config(nllb_path)).memory_estimate_mb()
    float32 = CTranslate2Translator(model_config(nllb_path, compute_type="float32")).memory_estimate_mb()
    stored_mb = (nllb_path / "model.bin").stat().st_size / 2**20  # converted without quantization
    assert (float32 - 32) / 1.1 == pytest.approx(stored_mb, rel=0.02)
    assert 0 < int8 < float32


# --- Marian ----------------------------------------------------------------------------------
def test_a_marian_model_translates_its_pair(marian: CTranslate2Translator):
    assert marian.family == "marian"
    assert (marian.source_languages, marian.target_languages) == ({"eng_Latn"}, {"fra_Latn"})
    results = translate(
        marian,
        TranslationInput("Hello world.", target="fr"),
        TranslationInput("The cat sat on a mat.", target="fra_Latn", source="eng"),
    )
    assert [(r.source, r.target) for r in results] == [("en", "fr"), ("en", "fr")]
    assert all(r.text and r.score <= 0 for r in results)


@pytest.mark.parametrize(
    "item",
    [TranslationInput("Hello", target="de", source="en"), TranslationInput("Hallo", target="fr", source="de")],
)
def test_a_marian_model_refuses_languages_outside_its_pair(marian: CTranslate2Translator, item: TranslationInput):
    with pytest.raises(InvalidInput, match="only en → fr"):
        marian.validate(item)


# --- loading ---------------------------------------------------------------------------------
def test_missing_weights_fail_loudly(tmp_path: Path, nllb_path: Path):
    with pytest.raises(ModelLoadError, match="no CTranslate2 model directory"):
        loaded(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="model.bin"):
        loaded(nllb_path.parent / "hf")  # the transformers checkpoint, never converted


def test_an_unreadable_model_bin_fails_loudly(tmp_path: Path, nllb_path: Path):
    for name in ("config.json", "shared_vocabulary.json", "sentencepiece.bpe.model"):
        (tmp_path / name).write_bytes((nllb_path / name).read_bytes())
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="CTranslate2 cannot load"):
        loaded(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "set the option source_language"),
        ({"source_language": "en"}, "set the option target_language"),
        ({"source_language": "en", "target_language": "xx_Fake"}, "xx_Fake"),
        ({"family": "nllb"}, "sentencepiece.bpe.model"),
        ({"family": "t5"}, "family must be one of"),
        ({"source_language": "en", "target_language": "fr", "beam_size": 0}, "beam_size"),
    ],
)
def test_a_marian_model_needs_its_pair_and_valid_options(marian_path: Path, options: dict, message: str):
    with pytest.raises(ModelLoadError, match=message):
        loaded(marian_path, **options)


def test_a_directory_with_no_sentencepiece_model_has_no_family(tmp_path: Path, nllb_path: Path):
    (tmp_path / "model.bin").write_bytes((nllb_path / "model.bin").read_bytes())
    with pytest.raises(ModelLoadError, match="cannot tell the model family"):
        loaded(tmp_path)


# --- through the pool ------------------------------------------------------------------------
def test_concurrent_callers_through_the_pool_each_get_their_own_translation(nllb_path: Path):
    config = ModelConfig(
        slug="tiny-nllb", task="translation", backend="ctranslate2-translator", path=nllb_path,
        options={"max_decoding_length": 16}, max_batch_size=8, max_wait_ms=20,
    )
    requests = [TranslationInput(SENTENCES[i % len(SENTENCES)], target=t, source="en")
                for i, t in enumerate(["fr", "de", "es", "sw", "zh", "fr", "de", "es", "sw", "zh"])]
    pool = ModelPool(memory_budget_mb=1024)
    try:
        with ThreadPoolExecutor(max_workers=len(requests)) as executor:
            results = list(executor.map(lambda item: pool.infer(config, item), requests))
        expected = translate(loaded(nllb_path, max_decoding_length=16), *requests)
        assert [(r.text, r.target) for r in results] == [(e.text, e.target) for e in expected]
        assert pool.stats("tiny-nllb")["items"] == len(requests)
        with pytest.raises(InvalidInput, match="xx_Fake"):
            pool.infer(config, TranslationInput("Hello", target="xx_Fake", source="en"))
    finally:
        pool.shutdown()
