"""Routing fixtures: the starter models registered, and helpers to call the API and read records."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from inference.convert import transformers_to_ctranslate2
from registry import services
from registry.models import ModelSpec
from routing.models import InferenceRecord
from tests.inference.tiny_generation import build_tiny_chat_model
from tests.inference.tiny_translation import build_tiny_nllb
from tests.routing.fake_providers import fake_providers  # noqa: F401  (a fixture for every routing test)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "audio"


def post(api, path: str, body: dict, caller=None, **extra):
    headers = caller.auth if caller else {}
    return api.post(path, json.dumps(body), content_type="application/json", **headers, **extra)


def records(request_id: str | None = None):
    queryset = InferenceRecord.objects.order_by("created_at")
    return list(queryset.filter(request_id=request_id) if request_id else queryset)


def audio_file(name: str) -> io.BytesIO:
    upload = io.BytesIO((FIXTURES / name).read_bytes())
    upload.name = name
    return upload


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return transformers_to_ctranslate2(build_tiny_chat_model(root / "hf"), root / "ct2")


@pytest.fixture
def chat_model(starter, chat_dir, settings) -> ModelSpec:
    settings.MODELGATE_MODEL_ROOTS = [str(chat_dir.parent)]
    ModelSpec.objects.filter(slug="smollm2-135m-instruct").update(enabled=False)
    return ModelSpec.objects.create(
        slug="tiny-chat", display_name="tiny chat", task="generation", backend="ctranslate2-generator",
        source_kind="path", source=str(chat_dir), options={"max_tokens_limit": 40, "max_input_tokens": 64},
        price_per_compute_second="0.001",
    )


@pytest.fixture
def hesitant(starter) -> ModelSpec:
    """A zero-shot model so hot-tempered that every answer is nearly uniform: never confident."""
    base = starter["zero-shot-minilm"]
    return ModelSpec.objects.create(
        slug="zero-shot-hesitant", display_name="hesitant", task="classification", backend="zero-shot-embeddings",
        source_kind="package", source=base.source, dependencies={"embeddings": "minilm-l6"},
        options={"temperature": 50.0}, price_per_compute_second=base.price_per_compute_second,
    )


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory):
    """A tiny NLLB-style translator, converted to CTranslate2 once per module."""
    return build_tiny_nllb(tmp_path_factory.mktemp("nllb"))


@pytest.fixture
def translator(starter, nllb_dir, settings) -> ModelSpec:
    settings.MODELGATE_MODEL_ROOTS = [str(nllb_dir.parent)]
    return ModelSpec.objects.create(slug="tiny-nllb", display_name="tiny", task="translation",
                                    backend="ctranslate2-translator", source_kind="path", source=str(nllb_dir))
