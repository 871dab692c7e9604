"""Registry fixtures: specs for the packaged models, and a fresh model pool per test module."""
from __future__ import annotations

import pytest

from registry import services
from registry.models import ModelSpec


@pytest.fixture(autouse=True)
def isolated_pool(monkeypatch):
    """Each test sees a pool of its own (the process-wide one would leak loaded models between tests)."""
    from inference.pool import ModelPool

    pool = ModelPool(memory_budget_mb=8192)
    monkeypatch.setattr(services, "_pool", pool)
    yield pool
    pool.shutdown()
