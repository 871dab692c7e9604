"""Model conversions: the packaged SmolLM2 GGUF to transformers and CTranslate2, once and atomically."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from inference import convert
from inference.base import ModelConfig
from inference.convert import (
    gguf_to_transformers,
    packaged_smollm2_gguf,
    prepare_smollm2,
    transformers_to_ctranslate2,
)
from inference.errors import ModelLoadError
from inference.payloads import ChatMessage, GenerationInput
from tests.inference.tiny_generation import build_tiny_chat_model

FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> dict[str, object]:
    """The real conversion, once for the module (about 40 s here: most of it parsing the GGUF metadata)."""
    cache = tmp_path_factory.mktemp("smollm2")
    started = time.perf_counter()
    ct2_dir = prepare_smollm2(packaged_smollm2_gguf(), cache)
    return {"cache": cache, "ct2": ct2_dir, "transformers": cache / "transformers", "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "transformers")


def test_smollm2_becomes_a_transformers_and_a_ctranslate2_model(smollm2):
    ct2_dir, transformers_dir, cache = smollm2["ct2"], smollm2["transformers"], smollm2["cache"]

    assert ct2_dir == cache / "ctranslate2-int8"
    assert {"model.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in ct2_dir.iterdir()}
    assert (transformers_dir / "model.safetensors").is_file()
    assert not list(transformers_dir.glob("*.bin")) and not list(transformers_dir.glob("*.gguf"))
    config = json.loads((transformers_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert sorted(p.name for p in cache.iterdir()) == ["ctranslate2-int8", "transformers"]  # no leftovers


def test_a_second_preparation_does_no_work(smollm2, monkeypatch):
    model_bin = smollm2["ct2"] / "model.bin"
    written = model_bin.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(convert, "_build_atomically", no_conversion)

    assert prepare_smollm2(packaged_smollm2_gguf(), smollm2["cache"]) == smollm2["ct2"]
    assert model_bin.stat().st_mtime_ns == written


def test_the_ctranslate2_smollm2_knows_the_capital_of_france(smollm2, shared_pool):
    config = ModelConfig(slug="smollm2-ct2-test", task="generation", backend="ctranslate2-generator", path=smollm2["ct2"])
    # With int8 and no system message the first token is a coin toss between "The" and "L'…" (0.08 nats
    # apart even in float32); a system message settles it, as it does in real chats.
    messages = (ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", FRANCE))

    answer = shared_pool.infer(config, GenerationInput(messages=messages, max_tokens=24))

    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"
    assert answer.tokens_in > 10 and 1 < answer.tokens_out <= 24
    shared_pool.unload(config.slug)


def test_the_transformers_smollm2_knows_the_capital_of_france(smollm2, shared_pool):
    config = ModelConfig(slug="smollm2-hf-test", task="generation", backend="transformers-generator", path=smollm2["transformers"])

    answer = shared_pool.infer(config, GenerationInput(messages=(ChatMessage("user", FRANCE),), max_tokens=24))

    assert "Paris" in answer.text
    shared_pool.unload(config.slug)


def test_it_copies_the_tokenizer_beside_the_ctranslate2_weights(tiny_model, tmp_path):
    out = transformers_to_ctranslate2(tiny_model, tmp_path / "ct2", quantization="float32")

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_model / name).read_bytes()
    assert json.loads((out / "config.json").read_text())["eos_token"] == "<|im_end|>"  # CTranslate2's own config


def test_a_failed_conversion_leaves_nothing_behind(tiny_model, tmp_path, monkeypatch):
    from ctranslate2.converters import TransformersConverter

    def crash(self, output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "model.bin").write_bytes(b"half a model")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(TransformersConverter, "convert", crash)

    with pytest.raises(RuntimeError, match="killed mid-way"):
        transformers_to_ctranslate2(tiny_model, tmp_path / "ct2")
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_output_directory_is_replaced(tiny_model, tmp_path):
    leftover = tmp_path / "ct2"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")  # no model.bin: not a model

    out = transformers_to_ctranslate2(tiny_model, leftover)

    assert (out / "model.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]


def test_it_refuses_pickled_weights_and_missing_sources(tiny_model, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not to be unpickled")

    with pytest.raises(ModelLoadError, match="pickled"):
        transformers_to_ctranslate2(pickled, tmp_path / "out")
    with pytest.raises(ModelLoadError, match="not found"):
        gguf_to_transformers(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
